"""The simulator against a real Mosquitto, the real adapter and a real InfluxDB: what it says it
sent is exactly what the platform stored, rejected and ignored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers import (
    REPO_ROOT,
    AdapterProcess,
    InfluxServer,
    MosquittoServer,
    free_port,
    require_binary,
    wait_for,
)

REASONS = ("bad_topic", "not_json", "not_object", "bad_timestamp", "too_large")


@dataclass
class Platform:
    """A test's broker, InfluxDB database and adapter factory, passed around as one."""

    broker: MosquittoServer
    influx: InfluxServer
    database: str
    make_adapter: Callable[..., AdapterProcess]

    def start_adapter(self, **env: str) -> AdapterProcess:
        return self.make_adapter(self.broker, self.influx, self.database, **env)


@pytest.fixture
def platform(
    broker: MosquittoServer, influx: InfluxServer, database: str, make_adapter: Callable[..., AdapterProcess]
) -> Platform:
    return Platform(broker, influx, database, make_adapter)


def run_simulator(
    broker_port: int, workdir: Path, *args: str, timeout_s: float = 60
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`python -m simulator` from the repository root; its result and its JSON summary."""
    summary_path = workdir / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "--host", "127.0.0.1", "--port", str(broker_port),
         "--summary-json", str(summary_path), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )  # fmt: skip
    assert summary_path.exists(), f"no summary; stderr:\n{result.stderr}"
    return result, json.loads(summary_path.read_text())


def wait_until_processed(adapter: AdapterProcess, summary: dict[str, Any]) -> None:
    """Until the adapter received every message the broker forwarded and stored what it took."""
    forwarded = summary["messages_acked"] - summary["no_subscribers"]
    wait_for(
        lambda: (
            adapter.metric("adapter_messages_received_total") >= forwarded
            and adapter.metric("adapter_unacked_messages") == 0
            and adapter.metric("adapter_points_written_total") >= summary["values"]
        ),
        30,
        "the adapter to store the simulator's messages",
    )


def stored_series(influx: InfluxServer, database: str) -> dict[str, dict[str, int]]:
    """Points per series in InfluxDB, shaped like the summary's `series`."""
    stored: defaultdict[str, dict[str, int]] = defaultdict(dict)
    for s in influx.series('SELECT count("value") FROM /.*/ GROUP BY "location", "station"', database):
        station, metric = s["name"].split(".", 1)
        assert station == s["tags"]["station"]
        stored[f"{s['tags']['location']}/{station}"][metric] = int(s["values"][0][1])
    return dict(stored)


def assert_platform_agrees(platform: Platform, adapter: AdapterProcess, summary: dict[str, Any]) -> None:
    assert stored_series(platform.influx, platform.database) == summary["series"]
    assert platform.influx.count_points(platform.database) == summary["values"]
    assert adapter.metric("adapter_points_written_total") == summary["values"]
    for reason in REASONS:
        expected = summary["malformed"].get(reason, 0)
        assert adapter.metric("adapter_messages_rejected_total", reason=reason) == expected, reason
    assert adapter.metric("adapter_values_ignored_total", reason="not_numeric") == summary["ignored_values"]


@pytest.mark.parametrize(
    "case",
    [("iso", "1", "5"), ("epoch", "2", "3.1.1"), ("none", "0", "5")],
    ids=["iso-qos1-mqtt5", "epoch-qos2-mqtt311", "none-qos0-mqtt5"],
)
def test_stored_and_rejected_exactly_as_the_summary_says(
    platform: Platform, tmp_path: Path, case: tuple[str, str, str]
) -> None:
    timestamps, qos, mqtt_version = case
    adapter = platform.start_adapter()
    result, summary = run_simulator(
        platform.broker.port, tmp_path, "--devices", "6", "--locations", "UPB,Dorinel,Lab", "--rate", "0",
        "--count", "300", "--seed", "1234", "--timestamps", timestamps, "--qos", qos,
        "--mqtt-version", mqtt_version, "--backlog", "--backlog-chance", "0.1",
        "--malformed-share", "0.1", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert summary["complete"] and summary["messages_sent"] == summary["messages_acked"] == 300
    assert summary["malformed"] == {"bad_topic": 8, "not_json": 8, "not_object": 7, "bad_timestamp": 7}
    assert summary["backlog_messages"] > 0 and summary["ignored_values"] > 0
    assert set(summary["series"]) == {f"{('UPB', 'Dorinel', 'Lab')[i % 3]}/RPi_{i + 1}" for i in range(6)}
    assert "Simulator summary (seed 1234)" in result.stdout

    wait_until_processed(adapter, summary)
    assert adapter.metric("adapter_messages_received_total") == 300
    assert_platform_agrees(platform, adapter, summary)


def test_too_large_messages_are_rejected_for_their_size(platform: Platform, tmp_path: Path) -> None:
    adapter = platform.start_adapter(MAX_MESSAGE_BYTES="2048")
    result, summary = run_simulator(
        platform.broker.port, tmp_path, "--devices", "3", "--rate", "0", "--count", "60", "--seed", "5",
        "--malformed-share", "0.2", "--malformed-kinds", "too_large,not_object",
        "--too-large-bytes", "2049", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert summary["malformed"] == {"too_large": 6, "not_object": 6}
    wait_until_processed(adapter, summary)
    assert_platform_agrees(platform, adapter, summary)


def test_paced_run_sends_rate_times_duration_with_progress_on_stderr(
    platform: Platform, tmp_path: Path
) -> None:
    adapter = platform.start_adapter()
    result, summary = run_simulator(
        platform.broker.port, tmp_path, "--devices", "2", "--rate", "15", "--duration", "1.2",
        "--progress-interval", "0.2", "--seed", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The schedule, not the clock, decides how many: 2 devices x 15/s x 1.2 s.
    assert summary["messages_sent"] == summary["messages_acked"] == 36
    assert summary["stopped_by"] == "duration"
    assert summary["series"] == {
        "UPB/RPi_1": dict.fromkeys(summary["series"]["UPB/RPi_1"], 18),
        "Dorinel/RPi_2": dict.fromkeys(summary["series"]["Dorinel/RPi_2"], 18),
    }
    progress = [line for line in result.stderr.splitlines() if line.startswith("simulator: ")]
    assert progress and all(" sent " in line and " acked " in line for line in progress)
    assert "simulator:" not in result.stdout  # progress never mixes with the summary
    wait_until_processed(adapter, summary)
    assert_platform_agrees(platform, adapter, summary)


# --- secure mode: accounts and per-topic rights ------------------------------------------


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[MosquittoServer]:
    """Mosquitto with password authentication and an ACL: each device may write its topic only."""
    workdir = tmp_path / "secure-mosquitto"
    workdir.mkdir()
    passwd = require_binary("mosquitto_passwd")
    passwords = workdir / "passwords"
    for i, (user, password) in enumerate((("adapter", "adapter-pw"), ("devices", "devices-pw"))):
        create = ["-c"] if i == 0 else []
        subprocess.run([passwd, *create, "-b", str(passwords), user, password], check=True)
    acl = workdir / "acl"
    acl.write_text(
        "user adapter\ntopic read #\n\nuser devices\ntopic write UPB/RPi_1\ntopic write Dorinel/RPi_2\n"
    )
    port = free_port()
    server = MosquittoServer(
        workdir,
        port=port,
        config_text=(
            f"listener {port} 127.0.0.1\nallow_anonymous false\n"
            # As root, mosquitto would switch to its own user, which cannot read pytest's
            # private temporary directories.
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"password_file {passwords}\nacl_file {acl}\n"
            f"persistence true\npersistence_location {workdir}/\nmax_inflight_messages 0\n"
            "log_dest stdout\nlog_type all\n"
        ),
    )
    server.start()
    yield server
    server.stop()


def test_secure_mode_credentials_and_refused_topics(
    secure_broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
    tmp_path: Path,
) -> None:
    platform = Platform(secure_broker, influx, database, make_adapter)
    adapter = platform.start_adapter(MQTT_USERNAME="adapter", MQTT_PASSWORD="adapter-pw")
    password_file = tmp_path / "devices-password"
    password_file.write_text("devices-pw\n")
    result, summary = run_simulator(
        secure_broker.port, tmp_path, "--devices", "2", "--rate", "0", "--count", "80", "--seed", "3",
        "--username", "devices", "--password-file", str(password_file), "--malformed-share", "0.1",
        "--quiet",
    )  # fmt: skip
    # The ACL lets each device write its own topic only: the broker refuses every bad topic
    # (MQTT 5 PUBACK "Not authorized"), so the run is incomplete and says so.
    assert result.returncode == 1, result.stderr
    assert summary["malformed"]["bad_topic"] == 2
    assert summary["messages_refused"] == {"Not authorized": 2}
    assert "refused by the broker: Not authorized 2" in result.stdout
    wait_until_processed(adapter, summary)
    assert adapter.metric("adapter_messages_received_total") == 78
    stored_summary = {**summary, "malformed": {**summary["malformed"], "bad_topic": 0}}
    assert_platform_agrees(platform, adapter, stored_summary)


def test_secure_mode_wrong_password_is_a_clear_error(secure_broker: MosquittoServer, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "--host", "127.0.0.1", "--port", str(secure_broker.port),
         "--count", "1", "--username", "devices", "--password", "wrong", "--connect-timeout", "10"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 3
    assert "refused the connection" in result.stderr and "--username/--password" in result.stderr


def test_sigterm_stops_publishing_and_waits_for_acknowledgements(platform: Platform, tmp_path: Path) -> None:
    # How a Swarm service scaled to 0 stops it: no duration or count, then SIGTERM.
    adapter = platform.start_adapter()
    health = tmp_path / "health"
    summary_path = tmp_path / "summary.json"
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulator", "--host", "127.0.0.1", "--port", str(platform.broker.port),
             "--devices", "3", "--rate", "20", "--progress-interval", "0.1", "--health-file", str(health),
             "--summary-json", str(summary_path)],
            cwd=REPO_ROOT, stdout=out, stderr=err,
        )  # fmt: skip
        try:
            # The health file appears once it is connected and publishing.
            wait_for(health.exists, 30, "the simulator's health file", proc, tmp_path / "stderr")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    summary = json.loads(summary_path.read_text())
    assert summary["stopped_by"] == "signal" and summary["complete"]
    assert summary["messages_sent"] > 0
    wait_until_processed(adapter, summary)
    assert_platform_agrees(platform, adapter, summary)
