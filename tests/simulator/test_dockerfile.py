"""simulator/Dockerfile, checked without a Docker engine: what it copies is enough to run, and
the command line it bakes in is one the simulator accepts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from simulator.config import parse_args
from tests.servers import REPO_ROOT

DOCKERFILE = REPO_ROOT / "simulator" / "Dockerfile"


def instruction(name: str) -> str:
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith(f"{name} ")]
    assert len(lines) == 1, f"expected one {name} instruction"
    return lines[0][len(name) + 1 :]


def test_base_image_and_user() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    assert "FROM ${BASE_IMAGE}" in text
    assert instruction("USER") == "simulator"


def test_baked_in_command_line_is_valid() -> None:
    args = json.loads(instruction("ENTRYPOINT"))[3:] + json.loads(instruction("CMD"))
    config = parse_args(args)
    assert config.host == "mqtt_broker" and config.health_file == Path("/tmp/simulator.health")
    # The HEALTHCHECK instruction with its continuation line.
    healthcheck = re.search(r"^HEALTHCHECK [^\n]*\\\n[^\n]*", DOCKERFILE.read_text(), re.MULTILINE)
    assert healthcheck is not None and "getmtime('/tmp/simulator.health')" in healthcheck.group(0)


def test_copied_files_run_alone(tmp_path: Path) -> None:
    # The image holds simulator/*.py and paho-mqtt, nothing else of the repository: the
    # simulator must not reach for the adapter's (or any other component's) code.
    copies = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("COPY ")]
    assert copies == [
        "COPY adapter/requirements.txt /tmp/adapter-requirements.txt",
        "COPY simulator/*.py simulator/",
    ]
    app = tmp_path / "app"
    (app / "simulator").mkdir(parents=True)
    for source in (REPO_ROOT / "simulator").glob("*.py"):
        shutil.copy(source, app / "simulator")
    result = subprocess.run(
        [sys.executable, "-E", "-s", "-m", "simulator", "--dry-run", "--rate", "0", "--count", "5"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 5
