"""docs/stack.md names every service, published port, secret and network of stack.yml and
stack.secure.yml, in both profiles (the ports as `./run.sh` and `./run.sh --secure` set them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.docs.markdown import DOCS, code_spans
from tests.servers import REPO_ROOT
from tests.stack.conftest import SECURE_ENV

STACK_FILES = (REPO_ROOT / "stack.yml", REPO_ROOT / "stack.secure.yml")
_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


def interpolate(value: object, env: dict[str, str]) -> str:
    """`${X:-default}` as Compose resolves it with `env`."""
    return _VARIABLE.sub(lambda m: env.get(m.group(1), m.group(2) or ""), str(value))


def named_in_stack(files: tuple[Path, ...] = STACK_FILES) -> dict[str, set[str]]:
    """Services, networks, secrets and published ports of both profiles."""
    found: dict[str, set[str]] = {"service": set(), "network": set(), "secret": set(), "port": set()}
    for path in files:
        stack: dict[str, Any] = yaml.safe_load(path.read_text())
        found["service"] |= set(stack.get("services", {}))
        found["network"] |= set(stack.get("networks", {}))
        found["secret"] |= set(stack.get("secrets", {}))
        for service in stack.get("services", {}).values():
            for port in service.get("ports", []):
                published = port.get("published") if isinstance(port, dict) else str(port).split(":")[0]
                for env in ({}, SECURE_ENV):
                    found["port"].add(interpolate(published, env))
    return found


def missing_from(page: Path, named: dict[str, set[str]]) -> dict[str, set[str]]:
    text = page.read_text()
    spans = set(code_spans(text))
    # A secret may appear by its key or its Swarm name, iot_<key>, with a -<hash> suffix.
    swarm_names = {re.sub(r"-<hash>$", "", s).removeprefix("iot_") for s in spans}
    numbers = set(re.findall(r"(?<![\w.])\d{2,5}(?![\w.])", text))
    return {
        "service": named["service"] - spans,
        "network": named["network"] - spans,
        "secret": named["secret"] - swarm_names,
        "port": named["port"] - numbers,
    }


def test_the_stack_files_name_enough_to_check() -> None:
    named = named_in_stack()
    assert {"mqtt_broker", "adapter", "kong"} <= named["service"]
    assert {"1883", "8883", "80", "8081", "8080", "8443"} <= named["port"]
    assert {"jwt_secret", "mqtt_tls_cert"} <= named["secret"]


@pytest.mark.parametrize("kind", ["service", "network", "secret", "port"])
def test_stack_page_names_everything_in_the_stack(kind: str) -> None:
    assert missing_from(DOCS / "stack.md", named_in_stack())[kind] == set()


@pytest.mark.parametrize(
    ("kind", "addition"),
    [
        ("service", {"services": {"fake_cache": {"image": "redis:7"}}}),
        ("network", {"networks": {"adapter_cache": {"driver": "overlay"}}}),
        ("secret", {"secrets": {"cache_password": {"external": True}}}),
        (
            "port",
            {"services": {"grafana": {"ports": [{"target": 3000, "published": "${CACHE_PORT:-6380}"}]}}},
        ),
    ],
)
def test_a_new_thing_in_the_stack_is_found(tmp_path: Path, kind: str, addition: dict[str, Any]) -> None:
    # The mutation: a third compose file adds one undocumented thing.
    extra = tmp_path / "stack.extra.yml"
    extra.write_text(yaml.safe_dump({"version": "3.8", **addition}))
    missing = missing_from(DOCS / "stack.md", named_in_stack((*STACK_FILES, extra)))
    assert {k: v for k, v in missing.items() if v} == {kind: missing[kind]} and len(missing[kind]) == 1
