"""Mosquitto's `$SYS` topics as Prometheus metrics (the `broker_exporter` service)."""
