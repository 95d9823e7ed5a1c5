"""The adapter's Prometheus endpoint counts exactly what happened."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from tests.mqtt_client import Publisher
from tests.servers import AdapterProcess, InfluxServer, MosquittoServer, wait_for


def test_counters_match_what_was_sent(
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
    publisher: Publisher,
) -> None:
    adapter = make_adapter(broker, influx, database, MAX_UNACKED="500")
    assert adapter.metric("adapter_unacked_limit") == 500
    assert adapter.metric("adapter_mqtt_connected") == 1
    before = time.time()
    for i in range(120):  # 120 valid messages, 2 numbers + 1 string each
        publisher.publish(f"M/Dev{i % 3}", json.dumps({"t": i, "h": 50, "status": "OK"}))
    for _ in range(7):
        publisher.publish("M/Dev0/extra", "{}")
    for _ in range(5):
        publisher.publish("M/Dev1", "not json")
    publisher.publish("M/Dev2", '[{"t": 1, "timestamp": "never"}, 4]')
    publisher.wait()
    wait_for(lambda: adapter.metric("adapter_messages_received_total") == 133, 20, "133 messages received")
    wait_for(lambda: adapter.metric("adapter_unacked_messages") == 0, 20, "everything acked")

    assert adapter.metric("adapter_points_written_total") == 240
    assert influx.count_points(database) == 240
    assert adapter.metric("adapter_messages_rejected_total", reason="bad_topic") == 7
    assert adapter.metric("adapter_messages_rejected_total", reason="not_json") == 5
    assert adapter.metric("adapter_messages_rejected_total", reason="bad_timestamp") == 1
    assert adapter.metric("adapter_messages_rejected_total", reason="not_object") == 1
    assert adapter.metric("adapter_values_ignored_total", reason="not_numeric") == 120
    assert sum(adapter.samples("adapter_points_dropped_total").values()) == 0
    assert adapter.metric("adapter_write_retries_total") == 0
    assert adapter.metric("adapter_batch_write_seconds_count") >= 1
    assert adapter.metric("adapter_batch_points_sum") == 240
    assert adapter.metric("adapter_influxdb_up") == 1
    for station in ("Dev0", "Dev1", "Dev2"):
        seen = adapter.metric("adapter_device_last_seen_timestamp_seconds", location="M", station=station)
        assert before <= seen <= time.time()
    # A device whose messages were all rejected was never seen.
    text = adapter.metrics_text()
    assert 'station="extra"' not in text
