"""A persistent session overflows on a real Mosquitto: the broker drops what exceeds
max_queued_messages, the exporter counts it, and Prometheus with the shipped rules fires
BrokerMessagesDropped."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.mqtt_client import Publisher
from tests.prometheus.platform_files import ALERTS, SCRAPE_JOB_NAMES, local_config
from tests.servers import BrokerExporterProcess, MosquittoServer, PrometheusServer, free_port, wait_for
from tests.stack.test_mosquitto_conf import Subscriber

QUEUE_LIMIT = 50
PUBLISHED = 80


def test_overflowing_session_is_counted_and_fires_the_alert(
    tmp_path: Path, make_prometheus: Callable[..., PrometheusServer]
) -> None:
    broker = MosquittoServer(tmp_path / "mosquitto", extra_config="sys_interval 1\n")
    # The queue of this test's broker is small, so that a few messages overflow it.
    broker.config_path.write_text(
        broker.config_path.read_text().replace(
            "max_queued_messages 1000000", f"max_queued_messages {QUEUE_LIMIT}"
        )
    )
    broker.start()
    exporter = BrokerExporterProcess(tmp_path / "exporter", broker)
    try:
        exporter.start()
        wait_for(
            lambda: exporter.metric("mosquitto_publish_messages_dropped_total") is not None,
            15,
            "the dropped counter",
            exporter.proc,
        )
        assert exporter.metric("mosquitto_publish_messages_dropped_total") == 0
        targets = {job: f"127.0.0.1:{free_port()}" for job in SCRAPE_JOB_NAMES}
        targets["broker_exporter"] = f"127.0.0.1:{exporter.metrics_port}"
        prometheus = make_prometheus(local_config(targets), {"alerts.yml": ALERTS.read_text()})

        def firing() -> list[dict]:
            return prometheus.query('ALERTS{alertname="BrokerMessagesDropped",alertstate="firing"}')

        # Scraped before the overflow: the counter is known at 0 and nothing fires.
        wait_for(
            lambda: bool(prometheus.query('mosquitto_publish_messages_dropped_total{job="broker_exporter"}')),
            30,
            "a scrape of the exporter",
            prometheus.proc,
        )
        assert firing() == []

        prefix = f"overflow/{uuid.uuid4().hex}"
        client_id = f"overflow-{uuid.uuid4().hex}"
        away = Subscriber(broker.port, client_id=client_id)
        away.subscribe(f"{prefix}/#")
        away.close()
        publisher = Publisher(broker.port)
        try:
            for i in range(PUBLISHED):
                publisher.publish(f"{prefix}/RPi_1", json.dumps({"TEMP": i}))
            publisher.wait(30)
        finally:
            publisher.close()

        dropped = PUBLISHED - QUEUE_LIMIT
        wait_for(
            lambda: exporter.metric("mosquitto_publish_messages_dropped_total") == dropped,
            15,
            f"{dropped} drops counted",
            exporter.proc,
        )
        wait_for(lambda: bool(firing()), 30, "BrokerMessagesDropped to fire", prometheus.proc)
        (alert,) = firing()
        assert alert["metric"]["severity"] == "critical"
        assert alert["metric"]["job"] == "broker_exporter"
        detail = prometheus.api("alerts")["alerts"]
        (rule,) = [a for a in detail if a["labels"]["alertname"] == "BrokerMessagesDropped"]
        # Prometheus' increase() extrapolates over the window: "about" at least what was dropped.
        assert float(rule["value"]) >= dropped
        assert rule["annotations"]["summary"].startswith("The MQTT broker dropped about ")

        # The session kept exactly what fitted.
        back = Subscriber(broker.port, client_id=client_id)
        try:
            kept = back.take(QUEUE_LIMIT, timeout_s=10)
            assert [json.loads(p)["TEMP"] for _, p in kept] == list(range(QUEUE_LIMIT))
            assert back.messages.empty()
        finally:
            back.close()
    finally:
        exporter.stop()
        broker.stop()
