"""The end-to-end test's own files, checked in the default suite (no Docker engine needed):
its scripts lint clean, its stack rewrite changes only what it says, and every upstream
image stack.yml deploys has a stand-in. So stack.yml cannot drift away from the e2e unseen."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import stackfile
from tests.servers import REPO_ROOT, ServerError, require_binary

E2E = REPO_ROOT / "tests" / "e2e"
SCRIPTS = [
    E2E / "run_e2e.sh",
    *sorted((E2E / "images").glob("*/*.sh")),
    E2E / "images" / "phpmyadmin" / "apache2-foreground",
]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(E2E)))
def test_script_passes_shellcheck(script: Path) -> None:
    result = subprocess.run(
        [require_binary("shellcheck"), "--severity=style", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_run_e2e_answers_help_and_rejects_unknown_options() -> None:
    shown = subprocess.run(
        [E2E / "run_e2e.sh", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Usage: tests/e2e/run_e2e.sh")
    for option in ("--timeout", "--keep-work", "--purge-cache"):
        assert option in shown.stdout
    wrong = subprocess.run(
        [E2E / "run_e2e.sh", "--nope"], capture_output=True, text=True, timeout=30, check=False
    )
    assert wrong.returncode != 0
    assert "unknown option: --nope" in wrong.stderr


@pytest.fixture(scope="module")
def original() -> dict[str, Any]:
    return stackfile.load(REPO_ROOT / "stack.yml")


@pytest.fixture(scope="module")
def rewritten(original: dict[str, Any]) -> dict[str, Any]:
    return stackfile.rewrite(copy.deepcopy(original))


def test_rewrite_keeps_every_service(original: dict[str, Any], rewritten: dict[str, Any]) -> None:
    assert set(original["services"]) == set(rewritten["services"])
    assert stackfile.LEFT_OUT == ()


def test_rewrite_changes_nothing_but_endpoint_mode_port_mode_and_the_probe_network(
    original: dict[str, Any], rewritten: dict[str, Any]
) -> None:
    undone = copy.deepcopy(rewritten)
    for name, service in undone["services"].items():
        assert service["deploy"].pop("endpoint_mode") == "dnsrr"
        if "deploy" not in original["services"][name]:
            del service["deploy"]
        for port, before in zip(
            service.get("ports", []), original["services"][name].get("ports", []), strict=True
        ):
            assert port["mode"] == "host"
            port["mode"] = before.get("mode", "ingress")
            if "mode" not in before:
                del port["mode"]
    assert undone["networks"][stackfile.PROBE_NETWORK].pop("attachable") is True
    expected = copy.deepcopy(original)
    for name in stackfile.LEFT_OUT:
        del expected["services"][name]
    assert undone == expected


def test_rewritten_file_is_a_valid_stack(rewritten: dict[str, Any], tmp_path: Path) -> None:
    # Next to the files its configs name, as the e2e's copy of the checkout has them.
    for entry in REPO_ROOT.iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            (tmp_path / entry.name).symlink_to(entry)
    text = yaml.dump(rewritten, Dumper=stackfile._NoAliases, sort_keys=False)
    (tmp_path / "stack.yml").write_text(text, encoding="utf-8")
    docker = require_binary("docker")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    commands = subprocess.run(
        [docker, "stack", "--help"], env=env, capture_output=True, text=True, timeout=60, check=False
    ).stdout
    if not re.search(r"^\s+config\s", commands, re.M):
        raise ServerError(f"{docker} has no `docker stack config`: install Docker's CLI 23.0 or newer")
    result = subprocess.run(
        [docker, "stack", "config", "-c", "stack.yml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    for name, service in resolved["services"].items():
        assert service["deploy"]["endpoint_mode"] == "dnsrr", name
        assert all(port["mode"] == "host" for port in service.get("ports", [])), name


def stand_ins() -> dict[str, str]:
    """run_e2e.sh's STAND_INS table: service of stack.yml → folder under tests/e2e/images/."""
    script = (E2E / "run_e2e.sh").read_text(encoding="utf-8")
    table = re.search(r"declare -A STAND_INS=\((.*?)\n\)", script, re.S)
    assert table is not None, "run_e2e.sh has no STAND_INS table"
    return dict(re.findall(r"\[(\w+)\]=([\w-]+)", table.group(1)))


def test_every_upstream_image_of_the_deployed_stack_has_a_stand_in(rewritten: dict[str, Any]) -> None:
    # The project's own images come from variables (run.sh builds them); the rest are upstream.
    upstream = {name for name, service in rewritten["services"].items() if "$" not in service["image"]}
    table = stand_ins()
    assert set(table) == upstream
    for service, folder in table.items():
        dockerfile = E2E / "images" / folder / "Dockerfile"
        assert dockerfile.is_file(), f"{service}: {dockerfile} is missing"
        assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile.read_text(encoding="utf-8"), re.M)
