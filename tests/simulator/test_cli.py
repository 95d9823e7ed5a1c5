"""The command line: `python -m simulator` from the repository root, its checks and dry run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapter.contract import ParsedMessage, parse_message
from simulator.config import MalformedKind, TimestampFormat, parse_args
from tests.servers import REPO_ROOT, free_port


def simulator(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulator", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_help_lists_the_options() -> None:
    result = simulator("--help")
    assert result.returncode == 0
    for option in ("--host", "--port", "--devices", "--duration", "--count", "--rate", "--qos",
                   "--locations", "--no-timestamps", "--backlog", "--malformed-share", "--username",
                   "--password", "--seed", "--summary-json"):  # fmt: skip
        assert option in result.stdout


def test_dry_run_prints_contract_messages_and_a_matching_summary(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    result = simulator(
        "--dry-run", "--devices", "4", "--rate", "0", "--count", "120", "--seed", "7", "--backlog",
        "--backlog-chance", "0.2", "--malformed-share", "0.1", "--summary-json", str(summary_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(summary_path.read_text())
    lines = result.stdout.splitlines()
    assert len(lines) == summary["messages_sent"] == 120
    values = rejected = 0
    for line in lines:
        topic, payload = line.split("\t", 1)
        parsed = parse_message(topic, payload.encode(), 0)
        if isinstance(parsed, ParsedMessage) and not parsed.rejected:
            values += len(parsed.points)
        else:
            rejected += 1
    assert values == summary["values"] > 0
    assert rejected == summary["malformed_total"] == 12
    assert summary["backlog_messages"] > 0
    assert "Simulator summary (seed 7" in result.stderr


def test_defaults() -> None:
    config = parse_args([])
    assert (config.host, config.port, config.devices, config.qos) == ("localhost", 1883, 10, 1)
    assert config.locations == ("UPB", "Dorinel")
    assert config.timestamps is TimestampFormat.ISO
    assert config.malformed_share == 0 and MalformedKind.TOO_LARGE not in config.malformed_kinds
    assert config.duration_s is None and config.count is None  # runs until stopped
    assert parse_args(["--no-timestamps"]).timestamps is TimestampFormat.NONE


def test_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    config = parse_args(["--username", "dev", "--password-file", str(secret)])
    assert (config.username, config.password) == ("dev", "s3cret")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "0"], "at least one device"),
        (["--rate", "-1"], "--rate"),
        (["--rate", "0"], "needs --duration or --count"),
        (["--duration", "0"], "--duration"),
        (["--count", "0"], "--count"),
        (["--malformed-share", "1.5"], "--malformed-share"),
        (["--malformed-kinds", "bad_topic,typo"], "unknown kind 'typo'"),
        (["--locations", "UPB/x"], "not a valid location"),
        (["--locations", "UPB,#"], "not a valid location"),
        (["--locations", ","], "at least one location"),
        (["--station-prefix", "a+"], "--station-prefix"),
        (["--qos", "3"], "invalid choice"),
        (["--password", "x"], "--password needs --username"),
        (["--password-file", "/nonexistent/pw"], "cannot read it"),
        (["--backlog-max", "1"], "at least 2"),
        (["--port", "70000"], "--port"),
    ],
)
def test_bad_settings_are_refused_with_a_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unreachable_broker_is_a_clear_error() -> None:
    result = simulator("--port", str(free_port()), "--count", "1", "--connect-timeout", "0.5")
    assert result.returncode == 3
    assert "no connection to the MQTT broker" in result.stderr
