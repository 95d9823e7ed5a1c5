"""Real third-party device clients publish bursts through the shipped broker configuration,
the real adapter and InfluxDB: MQTT.js (npm `mqtt`, pinned in package-lock.json) and
`mosquitto_pub`, at QoS 0, 1 and 2, in MQTT 3.1.1 and 5, with and without the retain flag,
and as backlog arrays. Every reading carries its own device timestamp, so each one is one
point: a burst of 3 000 must leave exactly 3 000 points with the values sent (issue 18's
table: QoS 2 used to keep 1 000 of 3 000)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
from tests.stack.test_mosquitto_conf import Paths

CLIENTS = REPO_ROOT / "tests" / "device_clients"
DATABASE = "t_device_clients"
READINGS = 3000
# Device timestamps: one millisecond apart, each cell in a day of its own.
EPOCH = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Burst:
    client: str  # "mqttjs" or "mosquitto_pub"
    qos: int
    version: int  # 4: MQTT 3.1.1, 5: MQTT 5
    retain: bool = False
    per_message: int = 1  # > 1: backlog arrays of that many readings

    @property
    def station(self) -> str:
        shape = f"array{self.per_message}" if self.per_message > 1 else "single"
        return f"{self.client}_q{self.qos}_v{self.version}_{'retained' if self.retain else 'plain'}_{shape}"

    def __str__(self) -> str:
        return self.station


TABLE = [
    Burst(client, qos, version, retain)
    for client in ("mqttjs", "mosquitto_pub")
    for qos in (0, 1, 2)
    for version in (4, 5)
    for retain in (False, True)
]
BACKLOG = [Burst("mqttjs", qos, version, per_message=100) for qos in (1, 2) for version in (4, 5)]


@dataclass
class Platform:
    broker: MosquittoServer
    adapter: AdapterProcess
    influx: InfluxServer


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, influx: InfluxServer) -> Iterator[Platform]:
    """The broker with mosquitto_mqtt_vol/mosquitto.conf as shipped (paths rewritten), the adapter."""
    workdir = tmp_path_factory.mktemp("device_clients")
    paths = Paths(workdir / "broker")
    port = free_port()
    broker = MosquittoServer(paths.workdir, port=port, config_text=paths.config("mosquitto.conf", port))
    broker.start()
    adapter = AdapterProcess(workdir / "adapter", broker, influx, DATABASE)
    try:
        adapter.start()
        yield Platform(broker, adapter, influx)
    finally:
        adapter.stop()
        broker.stop()


def first_timestamp(index: int) -> datetime:
    return EPOCH + timedelta(days=index)


def node() -> str:
    path = require_binary("node")
    if not (CLIENTS / "node_modules" / "mqtt").is_dir():
        raise AssertionError(
            "MQTT.js is not installed: run ./test.sh, which runs npm ci in tests/device_clients"
        )
    return path


def publish_burst(burst: Burst, port: int, first: datetime) -> dict[str, int]:
    topic = f"Clients/{burst.station}"
    first_ms = int(first.timestamp() * 1000)
    if burst.client == "mqttjs":
        proc = subprocess.run(
            [node(), str(CLIENTS / "burst.js"), str(port), topic, str(burst.qos), str(burst.version),
             "1" if burst.retain else "0", str(READINGS), str(burst.per_message), str(first_ms)],
            capture_output=True, text=True, timeout=120, check=False, cwd=CLIENTS,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)
    # mosquitto_pub -l: one connection, every line of stdin one message, sent as fast as it goes.
    lines = "".join(
        json.dumps(
            {"TEMP": i, "timestamp": (first + timedelta(milliseconds=i)).isoformat(timespec="milliseconds")}
        )
        + "\n"
        for i in range(READINGS)
    )
    version = {4: "mqttv311", 5: "mqttv5"}[burst.version]
    args = [
        require_binary("mosquitto_pub"),
        "-p",
        str(port),
        "-t",
        topic,
        "-q",
        str(burst.qos),
        "-V",
        version,
        "-l",
    ]
    if burst.retain:
        args.append("-r")
    proc = subprocess.run(args, input=lines, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return {"acked": READINGS, "errors": 0, "messages": READINGS}


def stored(influx: InfluxServer, station: str) -> list[tuple[int, float]]:
    series = influx.series(f'SELECT "value" FROM "{station}.TEMP"', DATABASE)
    return [(int(t), float(v)) for t, v in series[0]["values"]] if series else []


def check_every_reading_stored_once(platform: Platform, burst: Burst, index: int) -> None:
    first = first_timestamp(index)
    result = publish_burst(burst, platform.broker.port, first)
    assert result["errors"] == 0, result
    wait_for(
        lambda: len(stored(platform.influx, burst.station)) >= READINGS,
        90,
        f"{READINGS} points of {burst}",
        platform.adapter.proc,
        platform.adapter.log_path,
    )
    points = stored(platform.influx, burst.station)
    first_ns = int(first.timestamp()) * 10**9
    # Exactly the readings sent: each at its own device timestamp, with its own value.
    assert points == [(first_ns + i * 10**6, float(i)) for i in range(READINGS)]


@pytest.mark.parametrize("burst", TABLE, ids=str)
def test_burst_of_3000_readings_is_stored_exactly_once(platform: Platform, burst: Burst) -> None:
    check_every_reading_stored_once(platform, burst, TABLE.index(burst))


@pytest.mark.parametrize("burst", BACKLOG, ids=str)
def test_backlog_flush_of_3000_readings_is_stored_exactly_once(platform: Platform, burst: Burst) -> None:
    check_every_reading_stored_once(platform, burst, len(TABLE) + BACKLOG.index(burst))
