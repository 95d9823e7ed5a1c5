"""The adapter's settings for a hardened deployment: InfluxDB credentials (the secure profile's
authenticated InfluxDB) and the address its metrics listen on (loopback unless told)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from adapter.config import AdapterConfig, ConfigError
from tests.cmdline import command_lines, leaks
from tests.mqtt_client import Publisher
from tests.secure_influx import DATABASE, SecureInflux
from tests.servers import REPO_ROOT, AdapterProcess, MosquittoServer, listening_addresses, wait_for


def stored(secure_influx: SecureInflux, station: str) -> int:
    """Points of the station's measurements, counted by the admin."""
    answer = secure_influx.query(f'SELECT count("value") FROM /^{station}\\./ WHERE "location" = \'SEC\'')
    return sum(int(series["values"][0][1]) for series in answer.json()["results"][0].get("series", []))


def publish_readings(publisher: Publisher, station: str, count: int, first: int = 0) -> None:
    for i in range(first, first + count):
        publisher.publish(
            f"SEC/{station}", json.dumps({"BAT": i, "TEMP": 20.5, "timestamp": 1_700_000_000 + i})
        )
    publisher.wait()


def test_stores_over_the_authenticated_influxdb(
    broker: MosquittoServer,
    secure_influx: SecureInflux,
    make_adapter: Callable[..., AdapterProcess],
    publisher: Publisher,
) -> None:
    station = f"sec_{uuid.uuid4().hex[:8]}"
    adapter = make_adapter(
        broker,
        secure_influx.server,
        DATABASE,
        INFLUXDB_USERNAME="adapter",
        INFLUXDB_PASSWORD_FILE=str(secure_influx.accounts.file("adapter")),
    )
    publish_readings(publisher, station, 200)
    wait_for(lambda: stored(secure_influx, station) == 400, 30, "400 points over authentication")
    assert adapter.metric("adapter_write_retries_total") == 0
    assert adapter.metric("adapter_influxdb_up") == 1
    assert "Created InfluxDB database" not in adapter.log_text()  # it exists, and the user may not create
    assert adapter.proc is not None
    password = secure_influx.accounts.passwords["adapter"]
    assert leaks([command_lines()[adapter.proc.pid], adapter.log_text()], [password]) == []


def test_refused_credentials_hold_the_messages_until_they_are_fixed(
    broker: MosquittoServer,
    secure_influx: SecureInflux,
    make_adapter: Callable[..., AdapterProcess],
    publisher: Publisher,
    tmp_path: Path,
) -> None:
    station = f"sec_{uuid.uuid4().hex[:8]}"
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-adapter-password")
    client_id = f"adapter-{station}"
    settings = {"INFLUXDB_USERNAME": "adapter", "MQTT_CLIENT_ID": client_id}
    right = str(secure_influx.accounts.file("adapter"))
    # An earlier run made the adapter's persistent session; then its password is changed wrongly.
    first = make_adapter(broker, secure_influx.server, DATABASE, INFLUXDB_PASSWORD_FILE=right, **settings)
    publish_readings(publisher, station, 50)
    wait_for(lambda: stored(secure_influx, station) == 100, 30, "the first 50 messages' 100 points")
    first.stop()

    refused = make_adapter(
        broker, secure_influx.server, DATABASE, start=False, INFLUXDB_PASSWORD_FILE=str(wrong), **settings
    )
    # It reads InfluxDB's series before it reads the broker, so it never subscribes: started
    # once it has been refused.
    refused.ready = lambda: "HTTP 401" in refused.log_text() or "401:" in refused.log_text()  # type: ignore[method-assign]
    refused.start()
    publish_readings(publisher, station, 50, first=50)
    # Not a crash and not a drop: a deployment problem, retried while the broker holds the
    # messages in the session.
    wait_for(lambda: refused.log_text().count("authorization failed") >= 2, 30, "retries")
    assert refused.metric("adapter_mqtt_connected") == 0
    assert refused.metric("adapter_points_dropped_total") == 0
    assert refused.proc is not None and refused.proc.poll() is None
    assert stored(secure_influx, station) == 100
    refused.kill()

    # Fixed (the right secret), the same session gets every held message.
    fixed = make_adapter(broker, secure_influx.server, DATABASE, INFLUXDB_PASSWORD_FILE=right, **settings)
    wait_for(lambda: stored(secure_influx, station) == 200, 30, "all 200 points once the password is right")
    assert fixed.metric("adapter_write_retries_total") == 0


@pytest.mark.parametrize(
    ("address", "listening"),
    [(None, {"127.0.0.1"}), ("127.0.0.1", {"127.0.0.1"}), ("0.0.0.0", {"0.0.0.0"})],
    ids=["default", "loopback", "every address (the stack)"],
)
def test_metrics_listen_on_loopback_unless_told_otherwise(
    broker: MosquittoServer,
    secure_influx: SecureInflux,
    make_adapter: Callable[..., AdapterProcess],
    address: str | None,
    listening: set[str],
) -> None:
    settings = {
        "INFLUXDB_USERNAME": "adapter",
        "INFLUXDB_PASSWORD_FILE": str(secure_influx.accounts.file("adapter")),
    }
    if address is not None:
        settings["METRICS_ADDRESS"] = address
    adapter = make_adapter(broker, secure_influx.server, DATABASE, **settings)
    assert listening_addresses(adapter.metrics_port) == listening
    assert adapter.metric("adapter_mqtt_connected") == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METRICS_ADDRESS": "localhost"}, "METRICS_ADDRESS='localhost': expected an IP address"),
        ({"METRICS_ADDRESS": "0.0.0.0:8000"}, "METRICS_ADDRESS='0.0.0.0:8000': expected an IP address"),
        (
            {"INFLUXDB_USERNAME": "adapter"},
            "INFLUXDB_USERNAME and INFLUXDB_PASSWORD (or INFLUXDB_PASSWORD_FILE)",
        ),
        ({"INFLUXDB_PASSWORD": "a-password"}, "INFLUXDB_USERNAME and INFLUXDB_PASSWORD"),
        (
            {"INFLUXDB_USERNAME": "adapter", "INFLUXDB_PASSWORD_FILE": "/no/such/secret"},
            "INFLUXDB_PASSWORD_FILE=/no/such/secret: cannot read it",
        ),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        AdapterConfig.from_env(env)


def test_the_process_refuses_a_bad_metrics_address_at_start() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "adapter" / "adapter.py")],
        env={"METRICS_ADDRESS": "every-interface", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "configuration error: METRICS_ADDRESS='every-interface'" in result.stderr


def test_credentials_and_the_address_are_read_from_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "influxdb_adapter_password"
    secret.write_text("s3cret-value\n")
    config = AdapterConfig.from_env(
        {"INFLUXDB_USERNAME": "adapter", "INFLUXDB_PASSWORD_FILE": str(secret), "METRICS_ADDRESS": "::"}
    )
    assert (config.influxdb_username, config.influxdb_password, config.metrics_address) == (
        "adapter",
        "s3cret-value",
        "::",
    )
    assert "s3cret-value" not in repr(config)
    defaults = AdapterConfig.from_env({})
    assert (defaults.influxdb_username, defaults.influxdb_password, defaults.metrics_address) == (
        None,
        None,
        "127.0.0.1",
    )
