"""Runs an end-to-end script from pytest: its own session, its hard limit plus a backstop,
and the verdict from its PASS/FAIL lines (shared by test_e2e.py and test_e2e_multinode.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def run_e2e_script(script: Path, limit: int, required: list[str], passed_line: str) -> str:
    """Runs the script under its --timeout; fails unless it passed with every required check."""
    if os.geteuid() != 0:
        pytest.fail(f"{script.name} needs root: it starts dockerd and deploys a swarm stack")
    # Its own session, so that a pytest-side timeout can stop the whole run.
    proc = subprocess.Popen(
        [str(script), "--timeout", str(limit)],
        env={**os.environ, "IOT_E2E_PYTHON": sys.executable},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        # The script enforces the limit (its clean-up included); this is the backstop.
        output, _ = proc.communicate(timeout=limit + 360)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{script.name} did not end within {limit + 360}s:\n{output[-20000:]}")
    print(output)
    failed = [line for line in output.splitlines() if line.startswith("FAIL ")]
    assert proc.returncode == 0 and not failed, "\n".join(failed) + "\n\n" + output[-20000:]
    passed = [line for line in output.splitlines() if line.startswith("PASS ")]
    for check in required:
        found = any(line.startswith(f"PASS {check} (") for line in passed)
        assert found, f"{check} missing:\n{output[-20000:]}"
    assert passed_line in output
    return output
