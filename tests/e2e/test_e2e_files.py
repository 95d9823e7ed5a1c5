"""The end-to-end tests' own files, checked in the default suite (no Docker engine needed):
their scripts lint clean, the stack rewrite changes only what it says (the single-node and
the multi-node test deploy the same one), and every upstream image stack.yml deploys has a
stand-in the multi-node registry can serve. So stack.yml cannot drift away from them unseen."""

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
    E2E / "run_e2e_multinode.sh",
    E2E / "nodes.sh",
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


@pytest.mark.parametrize("script", ["run_e2e.sh", "run_e2e_multinode.sh"])
def test_e2e_script_answers_help_and_rejects_unknown_options(script: str) -> None:
    shown = subprocess.run([E2E / script, "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"Usage: tests/e2e/{script}")
    for option in ("--timeout", "--keep-work", "--purge-cache"):
        assert option in shown.stdout
    wrong = subprocess.run([E2E / script, "--nope"], capture_output=True, text=True, timeout=30, check=False)
    assert wrong.returncode != 0
    assert f"{script}: unknown option: --nope" in wrong.stderr


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["--help"], 0, "Usage: tests/e2e/nodes.sh power-off NODE"),
        ([], 1, "unknown command"),
        (["reboot", "worker1"], 1, "unknown command: reboot"),
        (["power-off"], 1, "power-off needs one of: manager worker1 worker2"),
        (["start", "worker3"], 1, "start needs one of: manager worker1 worker2"),
        (["power-off", "worker1", "worker2"], 1, "power-off needs one of"),
    ],
)
def test_nodes_script_usage(args: list[str], status: int, says: str) -> None:
    result = subprocess.run(
        [E2E / "nodes.sh", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == status
    assert says in result.stdout + result.stderr


def test_multinode_e2e_reuses_the_single_node_pieces() -> None:
    # One place for each piece: the multi-node script sources run_e2e.sh and deploys with its
    # image builds, its rewrite of stack.yml (copy_checkout), run.sh and checks.py.
    script = (E2E / "run_e2e_multinode.sh").read_text(encoding="utf-8")
    assert 'source "$HERE/run_e2e.sh"' in script
    for step in ("build_images", "copy_checkout", "run_sh", "checks deployed-multinode", "e2e_begin"):
        assert re.search(rf"^\s+(\S+=\S+ )*{step}\b", script, re.M), step
    assert "stackfile.py rewrite" not in script
    assert "STAND_INS=" not in script


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


def test_rewrite_keeps_every_placement(original: dict[str, Any], rewritten: dict[str, Any]) -> None:
    # The multi-node test proves the shipped placement (iot.data, the adapter's constraint):
    # the copy it deploys must place every service exactly as stack.yml does.
    for name, service in rewritten["services"].items():
        assert service["deploy"].get("placement") == original["services"][name].get("deploy", {}).get(
            "placement"
        )
        assert service["deploy"].get("replicas") == original["services"][name].get("deploy", {}).get(
            "replicas"
        )


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


@pytest.mark.parametrize("service", sorted(stand_ins()))
def test_stand_in_names_a_docker_hub_image(original: dict[str, Any], service: str) -> None:
    # The multi-node test's registry serves the stand-ins as every node's Docker Hub mirror,
    # which only stands in for Docker Hub: an image of another registry could not be pulled.
    image = stackfile.image_of(original, service)
    first = image.split("/", 1)[0]
    assert "/" not in image or not ("." in first or ":" in first or first == "localhost"), image
