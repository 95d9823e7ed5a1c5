"""run.sh, clean.sh, backup.sh and restore.sh: lint and usage; the versioned Swarm config names
run.sh sets."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.servers import REPO_ROOT, require_binary
from tests.stack.conftest import SECURE_ENV, stack_config

SCRIPTS = ["run.sh", "clean.sh", "backup.sh", "restore.sh"]
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


# What run.sh exports for `docker stack deploy`, besides the config hashes.
PROFILE_VARIABLES = (
    "MOSQUITTO_CONF_FILE",
    "MQTT_SECURE",
    "MQTT_PUBLISHED_PORT",
    "KONG_PUBLISHED_PORT",
    "KONG_PROXY_PORT",
)


def run_sh_environment(
    secure: bool, outside: dict[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """The variables run.sh exports for `docker stack deploy`, and the compose files it
    deploys (its own functions, sourced), started with `outside` in its environment."""
    mode = "true" if secure else "false"
    script = (
        f"source ./run.sh && SECURE={mode} && export_mode && export_config_hashes && env -0 &&"
        ' printf "STACK_FILES=%s\\0" "${STACK_FILES[*]}"'
    )
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=REPO_ROOT,
        env={**os.environ, **(outside or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    env = dict(entry.split("=", 1) for entry in result.stdout.split("\0") if "=" in entry)
    exported = {k: v for k, v in env.items() if k.endswith("_HASH") or k in PROFILE_VARIABLES}
    return exported, env["STACK_FILES"].split()


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
    env, files = run_sh_environment(secure)
    stack: dict[str, Any] = stack_config(env, tmp_path, tuple(REPO_ROOT / file for file in files))
    for key, config in stack["configs"].items():
        assert config["name"] == f"iot_{key}-{content_hash(config['file'])}", key
    broker_conf = Path(stack["configs"]["mosquitto_conf"]["file"]).name
    assert broker_conf == ("mosquitto-secure.conf" if secure else "mosquitto.conf")
    assert stack["services"]["auth_server"]["environment"]["MQTT_SECURE"] == str(secure).lower()


def grafana_root_url(address: str, override: str) -> subprocess.CompletedProcess[str]:
    """run.sh's grafana_root_url ADDRESS with GRAFANA_ROOT_URL=override (empty: unset)."""
    return subprocess.run(
        ["bash", "-c", 'source ./run.sh && grafana_root_url "$1"', "bash", address],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "GRAFANA_ROOT_URL": override},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("address", "override", "url"),
    [
        ("10.0.0.5", "", "http://10.0.0.5/"),
        ("fd00::5", "", "http://[fd00::5]/"),
        ("", "", "http://localhost/"),
        ("10.0.0.5", "https://grafana.example.com/", "https://grafana.example.com/"),
        ("10.0.0.5", "http://10.0.0.5:8000/grafana/", "http://10.0.0.5:8000/grafana/"),
    ],
)
def test_grafana_root_url(address: str, override: str, url: str) -> None:
    """Where the links Grafana builds point: this node's swarm address, or GRAFANA_ROOT_URL."""
    result = grafana_root_url(address, override)
    assert (result.returncode, result.stdout) == (0, url + "\n"), result.stderr


@pytest.mark.parametrize("override", ["grafana.example.com", "ftp://x/", "http://", "http://a b/"])
def test_grafana_root_url_refuses_what_is_no_address(override: str) -> None:
    result = grafana_root_url("10.0.0.5", override)
    assert result.returncode != 0
    assert "GRAFANA_ROOT_URL" in result.stderr


@pytest.mark.parametrize("secure", [False, True], ids=["open", "secure"])
def test_the_profile_is_exactly_what_the_stack_tests_check(secure: bool) -> None:
    # Variables left in the operator's environment never leak into the other profile.
    stray = {"MQTT_PUBLISHED_PORT": "1883", "KONG_PUBLISHED_PORT": "8080", "KONG_PROXY_PORT": "8000"}
    env, files = run_sh_environment(secure, outside=stray if secure else {k: "9" for k in stray})
    profile = {k: v for k, v in env.items() if k in PROFILE_VARIABLES}
    if secure:
        assert profile == SECURE_ENV
        assert files == ["stack.yml", "stack.secure.yml"]
    else:
        assert profile == {
            "MOSQUITTO_CONF_FILE": "./mosquitto_mqtt_vol/mosquitto.conf",
            "MQTT_SECURE": "false",
            "MQTT_PUBLISHED_PORT": "1883",
            "KONG_PUBLISHED_PORT": "8080",
            "KONG_PROXY_PORT": "8000",
        }
        assert files == ["stack.yml"]
