"""The Alertmanager configuration as run.sh renders it for a deployment (its alert settings
in the environment), read back for the tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.servers import REPO_ROOT


class RenderError(RuntimeError):
    """run.sh refused the settings; the message is its own."""


def render(state: Path, **settings: str) -> tuple[Path, str]:
    """Runs run.sh's render_alertmanager_config with IOT_<setting> variables; returns the
    file it wrote and what it printed."""
    env = {"PATH": os.environ["PATH"], "HOME": str(state), **{f"IOT_{k}": v for k, v in settings.items()}}
    script = 'source ./run.sh && SWARM_STATE="$1" && render_alertmanager_config'
    script += ' && echo "$ALERTMANAGER_CONFIG_FILE"'
    proc = subprocess.run(
        ["bash", "-c", script, "render", str(state)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    *printed, path = proc.stdout.strip().splitlines()
    return Path(path), "\n".join(printed)


def operators(config: dict[str, Any]) -> dict[str, Any]:
    (receiver,) = [r for r in config["receivers"] if r["name"] == "operators"]
    return receiver


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())
