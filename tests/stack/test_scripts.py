"""run.sh, clean.sh, backup.sh and restore.sh: lint and usage; the versioned Swarm config names
run.sh sets."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.servers import REPO_ROOT, require_binary
from tests.stack.conftest import stack_config

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
