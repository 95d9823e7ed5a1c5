"""At-least-once delivery: no message lost when the adapter, InfluxDB or the broker fails.

Each message carries its own timestamp, so a redelivered message overwrites the same
points and the stored count is exact whatever was delivered twice.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.mqtt_client import Publisher
from tests.servers import AdapterProcess, InfluxServer, MosquittoServer, wait_for

T0_MS = 1_700_000_000_000
STATIONS = 10
FIELDS = 3
N = 20_000  # messages per no-loss scenario
RATE = 4_000.0  # messages per second: the stream lasts 5 s, long enough to break it mid-way


def message(i: int) -> tuple[str, str]:
    payload = {"a": i, "b": i * 0.5, "c": -i, "timestamp": T0_MS + i}  # epoch ms: unique per message
    return f"Loss/St{i % STATIONS}", json.dumps(payload)


class Stream:
    """Publishes messages [0, n) at a steady rate from a background thread."""

    def __init__(self, broker: MosquittoServer, n: int, rate: float) -> None:
        self.publisher = Publisher(broker.port)
        self.n = n
        self.rate = rate
        self.sent = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        for i in range(self.n):
            # Pace by schedule, not by sleeping per message: keeps the rate without drift.
            ahead = started + i / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            self.publisher.publish(*message(i))
            self.sent = i + 1

    def start(self) -> Stream:
        self._thread.start()
        return self

    def finish(self, timeout_s: float = 180) -> None:
        self._thread.join(timeout_s)
        self.publisher.wait(timeout_s)
        self.publisher.close()


def wait_mid_stream(influx: InfluxServer, database: str) -> None:
    """Until a fifth of the N-message stream is stored: the moment to break something."""
    wait_for(lambda: influx.count_points(database) > N * FIELDS // 5, 60, "a fifth of the stream stored")


def wait_stored(influx: InfluxServer, database: str, expected: int, timeout_s: float = 180) -> None:
    wait_for(lambda: influx.count_points(database) >= expected, timeout_s, f"{expected} points stored")
    assert influx.count_points(database) == expected


@pytest.fixture
def stream_factory() -> Iterator[Callable[[MosquittoServer, int, float], Stream]]:
    streams: list[Stream] = []

    def make(broker: MosquittoServer, n: int, rate: float) -> Stream:
        s = Stream(broker, n, rate)
        streams.append(s)
        return s.start()

    yield make
    for s in streams:
        s.publisher.client.loop_stop()


@pytest.mark.slow
def test_adapter_killed_mid_stream(
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
    stream_factory: Callable[[MosquittoServer, int, float], Stream],
) -> None:
    adapter = make_adapter(broker, influx, database)
    stream = stream_factory(broker, N, RATE)
    wait_mid_stream(influx, database)
    adapter.kill()
    killed_at = stream.sent
    adapter.start()  # same client id: the broker kept the session and the unacked messages
    stream.finish()
    assert 0 < killed_at < N, "the kill must land mid-stream"
    wait_stored(influx, database, N * FIELDS)


@pytest.mark.slow
def test_influxdb_down_for_ten_seconds(
    broker: MosquittoServer,
    own_influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
    stream_factory: Callable[[MosquittoServer, int, float], Stream],
) -> None:
    bound = 2000
    adapter = make_adapter(broker, own_influx, database, MAX_UNACKED=str(bound))
    stream = stream_factory(broker, N, RATE)
    wait_mid_stream(own_influx, database)
    own_influx.stop()
    down_until = time.monotonic() + 10
    peak = 0.0
    while time.monotonic() < down_until:
        peak = max(peak, adapter.metric("adapter_unacked_messages"))
        time.sleep(0.2)
    assert adapter.metric("adapter_write_retries_total") > 0
    assert adapter.metric("adapter_influxdb_up") == 0
    # Backpressure: the broker holds the rest; the adapter never holds more than its bound.
    assert 0 < peak <= bound
    own_influx.start()
    stream.finish()
    wait_stored(own_influx, database, N * FIELDS)
    assert adapter.proc is not None and adapter.proc.poll() is None
    assert adapter.metric("adapter_points_dropped_total", reason="type_conflict") == 0


@pytest.mark.slow
def test_broker_restarted_mid_stream(
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
    stream_factory: Callable[[MosquittoServer, int, float], Stream],
) -> None:
    adapter = make_adapter(broker, influx, database)
    stream = stream_factory(broker, N, RATE)
    wait_mid_stream(influx, database)
    broker.stop()  # SIGTERM: mosquitto saves sessions and queued messages to its database
    broker.start()
    stream.finish()
    wait_stored(influx, database, N * FIELDS)
    assert "Disconnected from MQTT broker" in adapter.log_text()


def test_resubscribes_after_broker_lost_its_sessions(
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
) -> None:
    adapter = make_adapter(broker, influx, database)
    pub = Publisher(broker.port)
    pub.publish_all(message(i) for i in range(10))
    pub.wait()
    pub.close()
    wait_stored(influx, database, 10 * FIELDS, 30)
    broker.stop()
    (broker.workdir / "mosquitto.db").unlink()  # a broker without our session or subscription
    broker.start()
    wait_for(lambda: adapter.log_text().count("subscribing to") == 2, 60, "the adapter to reconnect")
    pub = Publisher(broker.port)
    pub.publish_all(message(i) for i in range(10, 20))
    pub.wait()
    pub.close()
    wait_stored(influx, database, 20 * FIELDS, 30)
    assert adapter.log_text().count("session present: False") == 2


def test_sigterm_stores_everything_received(
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
    stream_factory: Callable[[MosquittoServer, int, float], Stream],
) -> None:
    # A long flush interval keeps messages waiting in the adapter when the signal comes.
    adapter = make_adapter(broker, influx, database, FLUSH_INTERVAL_MS="5000", BATCH_SIZE="100000")
    stream = stream_factory(broker, 5000, 2000.0)
    wait_for(lambda: adapter.metric("adapter_messages_received_total") > 1000, 30, "messages received")
    assert influx.count_points(database) == 0  # nothing flushed yet: all of it is pending
    assert adapter.proc is not None
    adapter.proc.send_signal(signal.SIGTERM)
    assert adapter.proc.wait(30) == 0
    stream.finish()
    summary = adapter.log_text().splitlines()[-1]
    received = int(summary.split("received ")[1].split(" messages")[0])
    assert f"stored {received * FIELDS} points" in summary
    assert received >= 1000
    assert influx.count_points(database) == received * FIELDS


def test_permanent_write_error_drops_only_the_bad_points(
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
) -> None:
    adapter = make_adapter(broker, influx, database)
    # Someone wrote a string into a series the device is about to use, in the same shard
    # (InfluxDB fixes a field's type per shard): a field type conflict.
    assert (
        influx.write(database, 'Bad.v,location=X,station=Bad value="text" 1699999999000000000').status_code
        == 204
    )
    pub = Publisher(broker.port)
    pub.publish("X/Bad", '{"v": 1, "w": 2, "timestamp": 1700000000}')
    pub.publish_all(message(i) for i in range(50))
    pub.wait()
    pub.close()
    wait_for(
        lambda: (
            adapter.metric("adapter_unacked_messages") == 0
            and adapter.metric("adapter_messages_received_total") == 51
        ),
        30,
        "all messages handled",
    )
    wait_for(lambda: influx.count_points(database) >= 1 + 50 * FIELDS, 30, "the good points stored")
    assert adapter.metric("adapter_points_dropped_total", reason="type_conflict") == 1
    assert adapter.metric("adapter_write_errors_total", kind="permanent") >= 1
    assert [row[1] for row in influx.series('SELECT "value" FROM "Bad.w"', database)[0]["values"]] == [2.0]
    assert influx.count_points(database) == 1 + 50 * FIELDS  # Bad.w and the stream
    assert influx.series('SELECT "value" FROM "Bad.v"', database)[0]["values"] == [
        [1699999999000000000, "text"]
    ]
    # The message was acked: a new session with the same id gets nothing redelivered.
    adapter.stop()
    adapter.start()
    time.sleep(0.5)
    assert adapter.metric("adapter_messages_received_total") == 0


def test_qos0_flood_while_influxdb_is_down_stays_bounded(
    broker: MosquittoServer,
    own_influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
) -> None:
    # QoS 0 is outside MQTT's Receive Maximum: the adapter must bound it by itself.
    bound = 200
    adapter = make_adapter(broker, own_influx, database, MAX_UNACKED=str(bound))
    own_influx.stop()
    pub = Publisher(broker.port)
    pub.publish_all((message(i) for i in range(3000)), qos=0)
    peak = 0.0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        peak = max(peak, adapter.metric("adapter_unacked_messages"))
        time.sleep(0.1)
    # At most one batch being written and one full collector waiting behind it.
    assert bound <= peak <= 2 * bound
    own_influx.start()
    pub.publish("Loss/after", json.dumps({"v": 1, "timestamp": T0_MS}), qos=1)
    pub.wait()
    pub.close()
    wait_for(
        lambda: bool(own_influx.series('SELECT "value" FROM "after.v"', database)), 60, "the QoS 1 message"
    )
    assert adapter.proc is not None and adapter.proc.poll() is None
