"""Fixtures for the stack tests: stack.yml as `docker stack config` resolves it."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers import REPO_ROOT, ServerError, require_binary

STACK_FILE = REPO_ROOT / "stack.yml"


def stack_config(env: Mapping[str, str], home: Path) -> dict[str, Any]:
    """`docker stack config -c stack.yml` run with exactly `env`, parsed.

    The docker CLI needs no engine for this: it merges, interpolates and validates the
    file against the Compose schema the way `docker stack deploy` does.
    """
    docker = require_binary("docker")
    run_env = {"PATH": os.environ["PATH"], "HOME": str(home), **env}
    commands = subprocess.run(
        [docker, "stack", "--help"], env=run_env, capture_output=True, text=True, timeout=60, check=False
    ).stdout
    if not re.search(r"^\s+config\s", commands, re.M):
        raise ServerError(f"{docker} has no `docker stack config`: install Docker's CLI 23.0 or newer")
    proc = subprocess.run(
        [docker, "stack", "config", "-c", str(STACK_FILE)],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"docker stack config rejected stack.yml:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The stack with no variable set: what a manual `docker stack deploy` would get."""
    return stack_config({}, tmp_path_factory.mktemp("docker-home"))
