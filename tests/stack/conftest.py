"""Fixtures for the stack tests: stack.yml as `docker stack config` resolves it, for the
default profile and for the secure one (stack.yml + stack.secure.yml, with the variables
`./run.sh --secure` sets)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers import REPO_ROOT, ServerError, require_binary

STACK_FILE = REPO_ROOT / "stack.yml"
SECURE_FILE = REPO_ROOT / "stack.secure.yml"
PROFILES = ("open", "secure")
# What ./run.sh --secure exports for the deploy (tests/stack/test_scripts.py checks that
# run.sh sets exactly these).
SECURE_ENV = {
    "MQTT_PUBLISHED_PORT": "8883",
    "KONG_PUBLISHED_PORT": "8443",
    "KONG_PROXY_PORT": "8443",
    "MOSQUITTO_CONF_FILE": "./mosquitto_mqtt_vol/mosquitto-secure.conf",
    "MQTT_SECURE": "true",
}


def stack_config(
    env: Mapping[str, str], home: Path, files: tuple[Path, ...] = (STACK_FILE,)
) -> dict[str, Any]:
    """`docker stack config -c FILE...` run with exactly `env`, parsed.

    The docker CLI needs no engine for this: it merges, interpolates and validates the
    files against the Compose schema the way `docker stack deploy` does.
    """
    docker = require_binary("docker")
    run_env = {"PATH": os.environ["PATH"], "HOME": str(home), **env}
    commands = subprocess.run(
        [docker, "stack", "--help"], env=run_env, capture_output=True, text=True, timeout=60, check=False
    ).stdout
    if not re.search(r"^\s+config\s", commands, re.M):
        raise ServerError(f"{docker} has no `docker stack config`: install Docker's CLI 23.0 or newer")
    proc = subprocess.run(
        [docker, "stack", "config", *(arg for file in files for arg in ("-c", str(file)))],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = " + ".join(file.name for file in files)
    assert proc.returncode == 0, f"docker stack config rejected {names}:\n{proc.stderr}"
    return yaml.safe_load(proc.stdout)


@pytest.fixture(scope="session")
def open_stack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The stack with no variable set: what a manual `docker stack deploy` would get."""
    return stack_config({}, tmp_path_factory.mktemp("docker-home"))


@pytest.fixture(scope="session")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The secure profile as `./run.sh --secure` deploys it (hashes left at -manual)."""
    return stack_config(SECURE_ENV, tmp_path_factory.mktemp("docker-home"), (STACK_FILE, SECURE_FILE))


@pytest.fixture(scope="session", params=PROFILES)
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def stack(profile: str, open_stack: dict[str, Any], secure_stack: dict[str, Any]) -> dict[str, Any]:
    """Each profile in turn: every rule of stack.yml holds for both."""
    return secure_stack if profile == "secure" else open_stack


def run_sh_function(command: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`command` run in bash with run.sh sourced (which only defines its functions then)."""
    return subprocess.run(
        ["bash", "-c", f"source ./run.sh && {command}"],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def make_certificate(directory: Path, name: str, *names: str) -> subprocess.CompletedProcess[str]:
    """run.sh's own CA and server certificate making: DIR/ca.{crt,key}, DIR/NAME.{crt,key}."""
    directory.mkdir(parents=True, exist_ok=True)
    quoted = " ".join(shlex.quote(n) for n in names)
    return run_sh_function(f"tls_make_server_cert {shlex.quote(str(directory))} {shlex.quote(name)} {quoted}")


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA and a broker certificate for 127.0.0.1 and localhost, made by run.sh."""
    directory = tmp_path_factory.mktemp("tls")
    result = make_certificate(directory, "mqtt", "localhost", "127.0.0.1", "mqtt_broker")
    assert result.returncode == 0, result.stderr
    return directory
