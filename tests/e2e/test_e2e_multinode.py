"""The multi-node end-to-end test (tests/e2e/run_e2e_multinode.sh), run from pytest.

Opt-in like the single-node one (root, three Docker engines, about a quarter of an hour):
run it with `IOT_E2E_MULTINODE=1 ./test.sh tests/e2e` (or `-m e2e_multinode`), one
engine-using run at a time per machine (`flock /tmp/iot-e2e.lock ...`). IOT_E2E_TIMEOUT
sets the script's hard limit in seconds (default 2400); pytest gives up 6 minutes later.
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.script_run import run_e2e_script
from tests.servers import REPO_ROOT

SCRIPT = REPO_ROOT / "tests" / "e2e" / "run_e2e_multinode.sh"

pytestmark = [
    pytest.mark.e2e_multinode,
    pytest.mark.skipif(
        os.environ.get("IOT_E2E_MULTINODE") != "1",
        reason="opt-in: `IOT_E2E_MULTINODE=1 ./test.sh tests/e2e` deploys on a three-node swarm (root)",
    ),
]


def test_stack_on_three_nodes_survives_a_lost_node_and_a_drain() -> None:
    run_e2e_script(
        SCRIPT,
        int(os.environ.get("IOT_E2E_TIMEOUT", "2400")),
        # Every phase ran, and the host was left as found.
        [
            "placement",
            "simulator_to_influxdb",
            "kong_client_addresses",
            "mysql_root_only_inside_its_container",
            "network_isolation",
            "node_loss",
            "node_back",
            "drain",
            "scaled_down",
            "scaled_up",
            "secure_device_publishes",
            "secure_refuses_strangers",
            "nothing_left",
            "host_as_found",
        ],
        "PASSED: the multi-node end-to-end test of the stack",
    )
