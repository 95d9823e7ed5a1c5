"""The broker metrics exporter against a real Mosquitto: every statistic it maps exists on the
broker we ship, the values follow real traffic, and a broker that goes away is reported."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker_exporter.sys_topics import PREFIX, SYS_METRICS, Kind
from tests.mqtt_client import Publisher
from tests.servers import BrokerExporterProcess, MosquittoServer, require_binary, wait_for

# $SYS every second instead of every 10 s: the values under test arrive quickly.
FAST_SYS = "sys_interval 1\n"


@pytest.fixture
def sys_broker(tmp_path: Path) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path / "mosquitto", extra_config=FAST_SYS)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_exporter(tmp_path: Path) -> Iterator[Callable[..., BrokerExporterProcess]]:
    started: list[BrokerExporterProcess] = []

    def make(broker: MosquittoServer, start: bool = True, **env: str) -> BrokerExporterProcess:
        proc = BrokerExporterProcess(tmp_path / f"exporter{len(started)}", broker, **env)
        started.append(proc)
        if start:
            proc.start()
        return proc

    yield make
    for proc in started:
        proc.stop()


def sys_topics_of(broker: MosquittoServer) -> set[str]:
    """The `$SYS/broker/` keys a fresh broker publishes (its first publication holds them all)."""
    out = subprocess.run(
        [require_binary("mosquitto_sub"), "-p", str(broker.port), "-t", "$SYS/#", "-v", "-W", "3"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    keys = set()
    for line in out.splitlines():
        topic = line.rsplit(" ", 1)[0] if not line.startswith(f"{PREFIX}retained messages/") else line
        if topic.startswith(f"{PREFIX}retained messages/count"):
            keys.add("retained messages/count")
        elif topic.startswith(PREFIX):
            keys.add(topic[len(PREFIX) :].split(" ")[0])
    return keys


def test_every_mapped_statistic_exists_on_our_mosquitto(sys_broker: MosquittoServer) -> None:
    published = sys_topics_of(sys_broker)
    assert set(SYS_METRICS) - published == set()


def test_metrics_follow_real_traffic(
    sys_broker: MosquittoServer, make_exporter: Callable[..., BrokerExporterProcess]
) -> None:
    exporter = make_exporter(sys_broker)
    # The exporter itself is a client: counted at the broker's next publication.
    wait_for(lambda: (exporter.metric("mosquitto_clients_connected") or 0) >= 1, 10, "clients", exporter.proc)
    before = exporter.metrics()
    assert 'mosquitto_broker_info{version="2.0.' in exporter.metrics_text()
    assert before["mosquitto_heap_bytes"] > 0
    assert before["mosquitto_exporter_last_update_timestamp_seconds"] > 0

    publisher = Publisher(sys_broker.port)
    topic = f"exportertest/{uuid.uuid4().hex}"
    payload = json.dumps({"TEMP": 21.5, "timestamp": "2026-01-02T03:04:05Z"})
    try:
        # Not retained: Mosquitto 2.0.11 leaves retained PUBLISH packets out of this counter.
        for i in range(250):
            publisher.publish(f"{topic}/{i}", payload)
        for i in range(10):
            publisher.publish(f"{topic}/retained/{i}", payload, retain=True)
        publisher.wait(30)

        def counted() -> bool:
            now = exporter.metrics()
            return (
                now.get("mosquitto_publish_messages_received_total", 0)
                >= before.get("mosquitto_publish_messages_received_total", 0) + 250
                and now.get("mosquitto_retained_messages", 0) >= before["mosquitto_retained_messages"] + 10
            )

        wait_for(counted, 15, "the published messages in the exporter's metrics", exporter.proc)
        now = exporter.metrics()
        assert now["mosquitto_clients_connected"] == before["mosquitto_clients_connected"] + 1
        assert now["mosquitto_publish_bytes_received_total"] >= (
            before.get("mosquitto_publish_bytes_received_total", 0) + 250 * len(payload)
        )
        assert now["mosquitto_bytes_received_total"] > now["mosquitto_publish_bytes_received_total"]
    finally:
        publisher.close()
    # Each counter is exported as a counter, each gauge as a gauge.
    text = exporter.metrics_text()
    for metric in SYS_METRICS.values():
        name = metric.name + ("_total" if metric.kind is Kind.COUNTER else "")
        if f"\n{name} " in text:
            assert f"# TYPE {name} {metric.kind.value}" in text


def test_broker_going_away_and_coming_back(
    sys_broker: MosquittoServer, make_exporter: Callable[..., BrokerExporterProcess]
) -> None:
    exporter = make_exporter(sys_broker)
    sys_broker.stop()
    wait_for(lambda: exporter.metric("mosquitto_exporter_connected") == 0, 15, "disconnected", exporter.proc)
    # What the old broker said is not reported as the state of a broker that is gone.
    assert exporter.metric("mosquitto_uptime_seconds") is None
    assert exporter.metric("mosquitto_publish_messages_sent_total") is None
    sys_broker.start()
    wait_for(lambda: exporter.metric("mosquitto_exporter_connected") == 1, 60, "reconnected", exporter.proc)
    wait_for(lambda: exporter.metric("mosquitto_uptime_seconds") is not None, 10, "uptime", exporter.proc)
    assert exporter.metric("mosquitto_uptime_seconds") < 60


def test_a_hung_broker_counts_as_unreachable(
    sys_broker: MosquittoServer, make_exporter: Callable[..., BrokerExporterProcess]
) -> None:
    """A broker that keeps its socket open but stops working (SIGSTOP) is reported as not
    connected once STALE_AFTER passes without a statistic, and as connected when it resumes."""
    exporter = make_exporter(sys_broker, STALE_AFTER="5")
    assert sys_broker.proc is not None
    sys_broker.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: exporter.metric("mosquitto_exporter_connected") == 0, 30, "stale", exporter.proc)
        assert exporter.metric("mosquitto_heap_bytes") is None
    finally:
        sys_broker.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: exporter.metric("mosquitto_exporter_connected") == 1, 30, "fresh again", exporter.proc)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MQTT_PORT": "0"}, "MQTT_PORT=0: must be between 1 and 65535"),
        ({"METRICS_PORT": "x"}, "METRICS_PORT='x': expected a whole number"),
        ({"STALE_AFTER": "1"}, "STALE_AFTER=1: must be between 5 and 3600"),
        (
            {"MQTT_PASSWORD_FILE": "/nonexistent/secret"},
            "MQTT_PASSWORD_FILE=/nonexistent/secret: cannot read",
        ),
    ],
)
def test_bad_settings_stop_it_with_a_clear_message(
    sys_broker: MosquittoServer, make_exporter: Callable[..., BrokerExporterProcess], env: dict, message: str
) -> None:
    exporter = make_exporter(sys_broker, start=False, **env)
    with open(exporter.log_path, "wb") as log:
        proc = subprocess.run(
            exporter.command(),
            check=False,
            env=exporter.env,
            cwd=exporter.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=30,
        )
    assert proc.returncode == 2
    assert message in exporter.log_text()
