"""Every setting a component reads is in its configuration table, and every row of that table
is read by the code: the adapter, the auth server, the broker exporter, the simulator's options
and run.sh's environment. The reads are found by parsing the code (tests/docs/code_reads.py)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docs import code_reads
from tests.docs.markdown import DOCS, code_spans, section, tables
from tests.servers import REPO_ROOT

STACK_FILES = (REPO_ROOT / "stack.yml", REPO_ROOT / "stack.secure.yml")
# run.sh's local mode sources it when it exists (the auth server and MariaDB).
RUN_SH_SOURCED = (REPO_ROOT / "auth_server" / "local.sh",)
SHARED_CONFIG = REPO_ROOT / "adapter" / "config.py"
_SETTING = re.compile(rf"{code_reads.ENV_NAME.pattern}(?:<NAME>)?|[A-Z][A-Z0-9_]*_<NAME>")


def documented_variables(page: str, anchor: str, docs: Path = DOCS) -> set[str]:
    """The variables named in the first column of the tables of one section whose first
    header is *Variable* or *Environment variable*. `X_PASSWORD` / `_FILE` names both."""
    names: set[str] = set()
    for table in tables(section((docs / page).read_text(), anchor)):
        if table[0][0].lower() not in ("variable", "environment variable"):
            continue
        for row in table[1:]:
            previous = ""
            for span in code_spans(row[0]):
                name = previous + span if span.startswith("_") and previous else span
                if _SETTING.fullmatch(name):
                    names.add(name)
                    previous = name
    return names


def documented_options(page: str, anchor: str) -> set[str]:
    """The long options in the first column of the section's *Option* tables."""
    names: set[str] = set()
    for table in tables(section((DOCS / page).read_text(), anchor)):
        if table[0][0].lower() == "option":
            names.update(s.split()[0] for row in table[1:] for s in code_spans(row[0]) if s.startswith("--"))
    return names


@dataclass(frozen=True)
class Component:
    name: str
    reads: Callable[[], set[str]]
    documented: Callable[[], set[str]]
    # Python sources that must read the environment only through the config module.
    sources: tuple[Path, ...] = ()

    def __str__(self) -> str:
        return self.name


def _py(folder: str) -> tuple[Path, ...]:
    return tuple(p for p in sorted((REPO_ROOT / folder).glob("*.py")) if p.name != "config.py")


COMPONENTS = [
    Component(
        "adapter",
        lambda: code_reads.python_env_reads([REPO_ROOT / "adapter" / "config.py"]),
        lambda: documented_variables("adapter.md", "configuration"),
        _py("adapter"),
    ),
    Component(
        "auth_server",
        lambda: code_reads.python_env_reads([REPO_ROOT / "auth_server" / "config.py"], [SHARED_CONFIG]),
        lambda: documented_variables("http-api.md", "configuration"),
        _py("auth_server"),
    ),
    Component(
        "broker_exporter",
        lambda: code_reads.python_env_reads([REPO_ROOT / "broker_exporter" / "config.py"], [SHARED_CONFIG]),
        lambda: documented_variables("monitoring.md", "broker-metrics-broker_exporter"),
        _py("broker_exporter"),
    ),
    Component(
        "simulator",
        lambda: code_reads.argparse_options(REPO_ROOT / "simulator" / "config.py"),
        lambda: documented_options("simulator.md", "options"),
        (*_py("simulator"), REPO_ROOT / "simulator" / "config.py"),
    ),
    Component(
        "run.sh",
        lambda: code_reads.run_sh_settings(REPO_ROOT / "run.sh", STACK_FILES, RUN_SH_SOURCED),
        lambda: (
            documented_variables("stack.md", "runsh") | documented_variables("local-mode.md", "local-mode")
        ),
    ),
]


@pytest.mark.parametrize("component", COMPONENTS, ids=str)
def test_every_setting_read_is_documented(component: Component) -> None:
    reads = component.reads()
    assert len(reads) >= 5, f"the parser found almost nothing in {component}: {reads}"
    assert reads - component.documented() == set(), f"read by {component}, missing from its table"


@pytest.mark.parametrize("component", COMPONENTS, ids=str)
def test_every_documented_setting_is_read(component: Component) -> None:
    documented = component.documented()
    assert len(documented) >= 5, f"no configuration table found for {component}: {documented}"
    assert documented - component.reads() == set(), f"in {component}'s table, read nowhere"


@pytest.mark.parametrize("component", [c for c in COMPONENTS if c.sources], ids=str)
def test_settings_are_read_in_one_place(component: Component) -> None:
    # A read outside config.py would escape the parser above, and the docs with it.
    assert code_reads.os_environ_uses(component.sources) == []


# --- The checks catch what they are for: mutations of copies of the code ----------------


def _mutated(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    copy = tmp_path / source.name
    text = source.read_text()
    assert old in text, f"{source.name} changed: update this mutation"
    copy.write_text(text.replace(old, new, 1))
    return copy


@pytest.mark.parametrize(
    ("source", "old", "new", "found"),
    [
        # a plain read, a helper read, a secret (both names) in the adapter
        ("adapter/config.py", 'env.get("MQTT_TOPIC")', 'env.get("MQTT_TOPIK")', {"MQTT_TOPIK"}),
        ("adapter/config.py", '"BATCH_SIZE"', '"MAX_BATCH_POINTS"', {"MAX_BATCH_POINTS"}),
        (
            "adapter/config.py",
            'read_secret(env, "MQTT_PASSWORD")',
            'read_secret(env, "MQTT_TOKEN")',
            {"MQTT_TOKEN", "MQTT_TOKEN_FILE"},
        ),
        # the auth server, through credentials() of the shared module
        (
            "auth_server/config.py",
            'credentials(env, "ADMIN_USERNAME", "ADMIN_PASSWORD")',
            'credentials(env, "ROOT_USERNAME", "ROOT_PASSWORD")',
            {"ROOT_USERNAME", "ROOT_PASSWORD", "ROOT_PASSWORD_FILE"},
        ),
    ],
)
def test_a_new_python_setting_is_found(
    tmp_path: Path, source: str, old: str, new: str, found: set[str]
) -> None:
    original = REPO_ROOT / source
    before = code_reads.python_env_reads([original], [SHARED_CONFIG])
    after = code_reads.python_env_reads([_mutated(tmp_path, original, old, new)], [SHARED_CONFIG])
    assert after - before == found


@pytest.mark.parametrize(
    ("old", "new", "found"),
    [
        ("STATE_DIR=${IOT_STATE_DIR:-.state}", "STATE_DIR=${IOT_STATE_FOLDER:-.state}", "IOT_STATE_FOLDER"),
        ("local_port_setting IOT_MQTT_PORT 1883", "local_port_setting IOT_MQTTS_PORT 1883", "IOT_MQTTS_PORT"),
        ("alert_setting ALERT_WEBHOOK_URL", "alert_setting ALERT_SLACK_URL", "IOT_ALERT_SLACK_URL"),
    ],
)
def test_a_new_run_sh_setting_is_found(tmp_path: Path, old: str, new: str, found: str) -> None:
    mutated = _mutated(tmp_path, REPO_ROOT / "run.sh", old, new)
    assert found in code_reads.run_sh_settings(mutated, STACK_FILES) - code_reads.run_sh_settings(
        REPO_ROOT / "run.sh", STACK_FILES
    )


def test_a_new_stack_variable_is_a_run_sh_setting(tmp_path: Path) -> None:
    stack = _mutated(
        tmp_path, STACK_FILES[0], "replicas: ${ADAPTER_REPLICAS:-1}", "replicas: ${ADAPTER_COUNT:-1}"
    )
    assert "ADAPTER_COUNT" in code_reads.run_sh_settings(REPO_ROOT / "run.sh", (stack, STACK_FILES[1]))


def test_a_new_indirect_reader_must_be_understood(tmp_path: Path) -> None:
    run_sh = tmp_path / "run.sh"
    run_sh.write_text(
        (REPO_ROOT / "run.sh").read_text() + '\nodd() {\n  local v=$SOMETHING\n  echo "${!v}"\n}\n'
    )
    with pytest.raises(ValueError, match="odd"):
        code_reads.run_sh_settings(run_sh, STACK_FILES)


def test_a_new_simulator_option_is_found(tmp_path: Path) -> None:
    source = REPO_ROOT / "simulator" / "config.py"
    mutated = _mutated(tmp_path, source, '"--quiet"', '"--silent"')
    assert code_reads.argparse_options(mutated) ^ code_reads.argparse_options(source) == {
        "--quiet",
        "--silent",
    }


def test_a_row_without_code_is_found(tmp_path: Path) -> None:
    # The other direction: a documented row the code does not read. A copy of docs/ with a
    # fake variable in the adapter's table.
    page = DOCS / "adapter.md"
    text = page.read_text()
    row = "| `BATCH_SIZE` |"
    assert row in text
    copy = tmp_path / "docs"
    shutil.copytree(DOCS, copy)
    (copy / "adapter.md").write_text(text.replace(row, "| `BATCH_SIZE_FAKE` | 1 | fake |\n" + row, 1))
    documented = documented_variables("adapter.md", "configuration", copy)
    reads = code_reads.python_env_reads([REPO_ROOT / "adapter" / "config.py"])
    assert documented - reads == {"BATCH_SIZE_FAKE"}
