"""run.sh and clean.sh: lint, usage, and the versioned Swarm config names run.sh sets."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.servers import REPO_ROOT, require_binary
from tests.stack.conftest import stack_config

SCRIPTS = ["run.sh", "clean.sh"]
# Every shell script of the project is linted, not only the two entry points.
SHELL_SCRIPTS = sorted(
    {*SCRIPTS, "test.sh", ".ci/run"}
    | {str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.glob("*/**/*.sh") if ".venv" not in p.parts}
)


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_passes_shellcheck(script: str) -> None:
    result = subprocess.run(
        [require_binary("shellcheck"), "--severity=style", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("script", "options"),
    [
        ("run.sh", ["--secure", "--local", "--timeout"]),
        ("clean.sh", ["--yes", "--keep-data"]),
    ],
)
def test_answers_help(script: str, options: list[str]) -> None:
    for flag in ("--help", "-h"):
        result = subprocess.run(
            [REPO_ROOT / script, flag], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Usage: ./{script}")
        for option in options:
            assert option in result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_rejects_unknown_options_with_usage(script: str) -> None:
    result = subprocess.run(
        [REPO_ROOT / script, "--no-such-option"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0
    assert "unknown option: --no-such-option" in result.stderr
    assert f"Usage: ./{script}" in result.stderr


def run_sh_environment(secure: bool) -> dict[str, str]:
    """The variables run.sh exports for `docker stack deploy` (its own functions, sourced)."""
    mode = "true" if secure else "false"
    script = f"source ./run.sh && SECURE={mode} && export_mode && export_config_hashes && env -0"
    result = subprocess.run(
        ["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    env = dict(entry.split("=", 1) for entry in result.stdout.split("\0") if "=" in entry)
    return {
        k: v for k, v in env.items() if k.endswith("_HASH") or k in ("MOSQUITTO_CONF_FILE", "MQTT_SECURE")
    }


@pytest.mark.parametrize(
    ("nodes", "env", "refused"),
    [
        (1, {}, False),
        (3, {}, True),
        (2, {"IOT_REGISTRY": "registry.example.com:5000/iot"}, False),
    ],
)
def test_run_sh_builds_no_image_for_a_swarm_of_several_nodes_without_a_registry(
    nodes: int, env: dict[str, str], refused: bool, tmp_path: Path
) -> None:
    # run.sh's own build_image, with `docker node ls -q` answering as a swarm of `nodes` would
    # and every other docker command recorded (a build must not even start).
    fake = (
        f"docker() {{ if [[ $1 == node ]]; then printf 'node-%s\\n' $(seq {nodes}); "
        'else echo "docker $1" >>"$CALLS"; return 1; fi; }'
    )
    build = "build_image adapter adapter/Dockerfile X adapter"
    script = f"source ./run.sh && {fake} && SWARM_STATE={tmp_path} && {build}"
    clean = {k: v for k, v in os.environ.items() if k not in ("IOT_REGISTRY", "X")}
    calls = tmp_path / "docker-calls"
    result = subprocess.run(
        ["bash", "-c", script], cwd=REPO_ROOT, env={**clean, **env, "CALLS": str(calls)}, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    built = calls.read_text().split("\n") if calls.exists() else []
    if refused:
        assert result.returncode != 0
        assert f"this swarm has {nodes} nodes" in result.stderr
        assert "IOT_REGISTRY=" in result.stderr and "prebuilt image in X" in result.stderr
        assert built == []
    else:
        assert "this swarm has" not in result.stderr
        assert "docker build" in built  # it went on to build


@pytest.mark.parametrize(
    ("running", "wanted", "topic", "says"),
    [
        ("2", "1", "$share/adapters/#", "session of slot 2"),
        ("5", "2", "$share/adapters/#", "session of slots 3-5"),
        ("2", "2", "$share/adapters/#", None),
        ("1", "3", "$share/adapters/#", None),  # scaling up
        ("3", "1", "#", None),  # no shared subscription: nothing is shared out
        ("", "1", "$share/adapters/#", None),  # no adapter service yet
    ],
)
def test_run_sh_says_what_scaling_the_adapter_down_leaves_in_the_broker(
    running: str, wanted: str, topic: str, says: str | None
) -> None:
    fake = f"docker() {{ [[ -n '{running}' ]] && echo '{running}'; }}"
    result = subprocess.run(
        ["bash", "-c", f"source ./run.sh && {fake} && note_adapter_scale_down"],
        cwd=REPO_ROOT, env={**os.environ, "ADAPTER_REPLICAS": wanted, "ADAPTER_MQTT_TOPIC": topic},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    if says is None:
        assert result.stdout == ""
    else:
        assert says in result.stdout
        assert f"ADAPTER_REPLICAS={running} ./run.sh" in result.stdout


def content_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


@pytest.mark.parametrize("secure", [False, True], ids=["open", "secure"])
def test_config_names_follow_the_content_of_their_files(secure: bool, tmp_path: Path) -> None:
    # Swarm configs are immutable: an edited file must get a new name, or the redeploy fails.
    stack: dict[str, Any] = stack_config(run_sh_environment(secure), tmp_path)
    for key, config in stack["configs"].items():
        assert config["name"] == f"iot_{key}-{content_hash(config['file'])}", key
    broker_conf = Path(stack["configs"]["mosquitto_conf"]["file"]).name
    assert broker_conf == ("mosquitto-secure.conf" if secure else "mosquitto.conf")
    assert stack["services"]["auth_server"]["environment"]["MQTT_SECURE"] == str(secure).lower()
