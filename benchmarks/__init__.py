"""Benchmarks of the platform (they print numbers; tests never assert timings)."""
