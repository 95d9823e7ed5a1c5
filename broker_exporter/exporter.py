"""Subscribes to Mosquitto's `$SYS/#` and serves the latest values as Prometheus metrics.

    python -m broker_exporter        (settings: docs/monitoring.md, "Broker metrics")

`SysTree` keeps the last value of every statistic; `SysCollector` turns it into metric
families at each scrape; `BrokerWatcher` is the MQTT side (reconnecting, clean session,
QoS 0: a missed update is replaced by the next one within sys_interval).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from broker_exporter.config import ConfigError, ExporterConfig
from broker_exporter.sys_topics import SYS_METRICS, VERSION_KEY, Kind, key_of, parse_number, parse_version

log = logging.getLogger("broker_exporter")

SYS_TOPIC = "$SYS/#"


class SysTree:
    """The latest value of each known `$SYS` statistic, safe to read while MQTT updates it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self.version: str | None = None
        self.connected = False
        self.last_update: float | None = None  # Unix time of the last `$SYS` message

    def update(self, key: str, value: float) -> None:
        with self._lock:
            self._values[key] = value
            self.last_update = time.time()

    def values(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)

    def forget(self) -> None:
        """A new broker connection: the broker may have restarted, so old values are void."""
        with self._lock:
            self._values.clear()
            self.version = None


class SysCollector(Collector):
    """Metric families from a SysTree: only statistics the broker has reported, and only while
    it is connected and reporting, are exported (an absent series means "not known", never a
    made-up 0 or a stale value)."""

    def __init__(self, tree: SysTree, stale_after_s: int) -> None:
        self.tree = tree
        self.stale_after_s = stale_after_s

    def up(self) -> bool:
        """Connected, and `$SYS` not silent for longer than stale_after_s: a hung broker may
        keep its socket open for a while before the MQTT keepalive gives up on it."""
        last = self.tree.last_update
        return self.tree.connected and last is not None and time.time() - last <= self.stale_after_s

    def collect(self) -> Iterator[Metric]:
        up = self.up()
        # While the broker is gone or silent, its last statistics are no longer its state.
        values = self.tree.values() if up else {}
        for key, spec in SYS_METRICS.items():
            if key not in values:
                continue
            family: Metric
            if spec.kind is Kind.COUNTER:
                family = CounterMetricFamily(spec.name, spec.help)
            else:
                family = GaugeMetricFamily(spec.name, spec.help)
            family.add_metric([], values[key])
            yield family
        connected = GaugeMetricFamily(
            "mosquitto_exporter_connected",
            "1 while the exporter is subscribed to $SYS/# and the broker's statistics keep coming",
        )
        connected.add_metric([], 1.0 if up else 0.0)
        yield connected
        if self.tree.last_update is not None:
            last = GaugeMetricFamily(
                "mosquitto_exporter_last_update_timestamp_seconds",
                "Unix time of the last $SYS message from the broker",
            )
            last.add_metric([], self.tree.last_update)
            yield last
        if up and self.tree.version:
            info = InfoMetricFamily("mosquitto_broker", "The broker's version")
            info.add_metric([], {"version": self.tree.version})
            yield info


class BrokerWatcher:
    """The MQTT client: subscribes to `$SYS/#` on every (re)connect and fills a SysTree."""

    def __init__(self, config: ExporterConfig, tree: SysTree, registry: CollectorRegistry) -> None:
        self.config = config
        self.tree = tree
        self.ignored = Counter(
            "mosquitto_exporter_ignored_messages",
            "$SYS messages not exported, by reason (unknown topic, unreadable payload)",
            ["reason"],
            registry=registry,
        )
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.mqtt_client_id,
            protocol=mqtt.MQTTv5,
        )
        if config.mqtt_username:
            self.client.username_pw_set(config.mqtt_username, config.mqtt_password)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            # A refused login stays refused: say so at every attempt, paho retries.
            log.error("the broker refused the connection: %s", rc)
            return
        log.info(
            "connected to %s:%s, subscribing to %s", self.config.mqtt_host, self.config.mqtt_port, SYS_TOPIC
        )
        self.tree.forget()
        client.subscribe(SYS_TOPIC, qos=0)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        if any(rc.is_failure for rc in rcs):
            log.error(
                "the broker refused the subscription to %s: %s (secure mode: the account "
                "needs subscribePattern $SYS/#)",
                SYS_TOPIC,
                rcs[0],
            )
            return
        self.tree.connected = True

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if self.tree.connected:
            log.warning("disconnected from the broker (%s); reconnecting", rc)
        self.tree.connected = False

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        key = key_of(message.topic)
        if key == VERSION_KEY:
            version = parse_version(message.payload)
            if version is None:
                self.ignored.labels("bad_payload").inc()
            else:
                self.tree.version = version
                self.tree.last_update = time.time()
            return
        if key is None or key not in SYS_METRICS:
            # load averages, deprecated duplicates, $SYS topics of plugins or other brokers
            self.ignored.labels("unknown_topic").inc()
            self.tree.last_update = time.time()
            return
        value = parse_number(message.payload)
        if value is None:
            self.ignored.labels("bad_payload").inc()
            return
        self.tree.update(key, value)

    def start(self) -> None:
        # connect_async + loop_start: the first connection is retried like any later one,
        # so the exporter may start before the broker.
        self.client.connect_async(self.config.mqtt_host, self.config.mqtt_port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def build(config: ExporterConfig) -> tuple[CollectorRegistry, SysTree, BrokerWatcher]:
    registry = CollectorRegistry()
    tree = SysTree()
    registry.register(SysCollector(tree, config.stale_after_s))
    return registry, tree, BrokerWatcher(config, tree, registry)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ExporterConfig.from_env()
    except ConfigError as exc:
        log.error("bad setting: %s", exc)
        return 2
    registry, _tree, watcher = build(config)
    start_http_server(config.metrics_port, registry=registry)
    log.info("serving metrics on :%s/metrics", config.metrics_port)
    watcher.start()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    watcher.stop()
    return 0
