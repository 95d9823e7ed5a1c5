"""The end-to-end test of the deployed stack (tests/e2e/run_e2e.sh), run from pytest.

Opt-in, because it needs root, starts a Docker engine and takes minutes: the default suite
skips it. Run it with `IOT_E2E=1 ./test.sh tests/e2e` (or `-m e2e`). IOT_E2E_TIMEOUT sets
the script's hard limit in seconds (default 2400); pytest gives up 6 minutes after that.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.servers import REPO_ROOT

SCRIPT = REPO_ROOT / "tests" / "e2e" / "run_e2e.sh"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.environ.get("IOT_E2E") != "1",
        reason="opt-in: `IOT_E2E=1 ./test.sh tests/e2e` deploys the stack on a real Docker engine (root)",
    ),
]


def test_stack_deploys_works_survives_a_redeploy_and_cleans_up() -> None:
    if os.geteuid() != 0:
        pytest.fail("the end-to-end test needs root: it starts dockerd and deploys a swarm stack")
    limit = int(os.environ.get("IOT_E2E_TIMEOUT", "2400"))
    # Its own session, so that a pytest-side timeout can stop the whole run.
    proc = subprocess.Popen(
        [str(SCRIPT), "--timeout", str(limit)],
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
        pytest.fail(f"run_e2e.sh did not end within {limit + 360}s:\n{output[-20000:]}")
    print(output)
    failed = [line for line in output.splitlines() if line.startswith("FAIL ")]
    assert proc.returncode == 0 and not failed, "\n".join(failed) + "\n\n" + output[-20000:]
    passed = [line for line in output.splitlines() if line.startswith("PASS ")]
    # Every phase ran: the deployed stack, the removal and redeploy, backup and restore, clean.sh.
    for check in (
        "PASS network_isolation",
        "PASS points_kept",
        "PASS queue_delivered",
        "PASS backup_while_ingesting",
        "PASS restored_points",
        "PASS restored_queue",
        "PASS restored_accounts",
        "PASS restored_grafana",
        "PASS nothing_left",
    ):
        assert any(line.startswith(check) for line in passed), f"{check} missing:\n{output[-20000:]}"
    assert "PASSED: the end-to-end test of the stack" in output
