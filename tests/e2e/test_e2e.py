"""The end-to-end test of the deployed stack (tests/e2e/run_e2e.sh), run from pytest.

Opt-in, because it needs root, starts a Docker engine and takes minutes: the default suite
skips it. Run it with `IOT_E2E=1 ./test.sh tests/e2e` (or `-m e2e`). IOT_E2E_TIMEOUT sets
the script's hard limit in seconds (default 2400); pytest gives up 6 minutes after that.
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.script_run import run_e2e_script
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
    run_e2e_script(
        SCRIPT,
        int(os.environ.get("IOT_E2E_TIMEOUT", "2400")),
        # Every phase ran: the deployed stack, the removal and redeploy, backup and restore, clean.sh.
        [
            "network_isolation",
            "points_kept",
            "queue_delivered",
            "backup_while_ingesting",
            "restored_points",
            "restored_queue",
            "restored_accounts",
            "restored_grafana",
            "nothing_left",
        ],
        "PASSED: the end-to-end test of the stack",
    )
