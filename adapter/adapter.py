"""The MQTT → InfluxDB adapter: subscribe to every device topic, store numeric values.

Delivery is at-least-once: messages arrive with QoS 1 on a persistent session and are
acknowledged to the broker only after InfluxDB accepted their points. Run it as
`python adapter/adapter.py`; every setting comes from the environment (see README).
"""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import start_http_server

if __package__ in (None, ""):  # run as a script: make `adapter` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapter.config import AdapterConfig, ConfigError
from adapter.contract import (
    Ignore,
    ParsedMessage,
    Record,
    Reject,
    line_protocol,
    parse_message,
    parse_timestamp,
)
from adapter.influx import DatabaseMissingError, InfluxWriter, TransientWriteError
from adapter.metrics import AdapterMetrics
from adapter.mqtt_client import BufferedMqttClient

log = logging.getLogger("adapter")
# Data-flow lines go through their own logger so DEBUG_DATA_FLOW switches exactly them.
flow_log = logging.getLogger("adapter.dataflow")


def format_value(value: float) -> str:
    """How a stored value is shown in the data-flow log: `99`, not `99.0`."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def format_device_time(raw: object) -> str:
    """A valid `timestamp` as logged: `2019-11-26T03:54:20+03:00` → `2019-11-26 03:54:20+03:00`.

    Epoch numbers are shown as the UTC instant they stand for.
    """
    if isinstance(raw, str):
        text = raw[:10] + " " + raw[11:]
        return text[:-1] + "+00:00" if text[-1] in "Zz" else text
    seconds, ns = divmod(parse_timestamp(raw), 1_000_000_000)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{ns:09d}".rstrip("0").rstrip(".") + "+00:00"


@dataclass(slots=True)
class Batch:
    """Messages collected for one InfluxDB write, acked together once it succeeded."""

    lines: list[str] = field(default_factory=list)
    # (connection generation, MQTT message id) in arrival order.
    acks: list[tuple[int, int]] = field(default_factory=list)
    seen: dict[tuple[str, str], float] = field(default_factory=dict)
    first_received: float = 0.0


class BatchCollector:
    """Thread-safe hand-off from the MQTT thread to the writer thread.

    A batch is handed over when it holds `batch_size` points or when its oldest message
    has waited `flush_interval_s`, whichever comes first. `add` blocks while `max_pending`
    messages are waiting: QoS 1 never gets there (the broker sends at most Receive Maximum
    unacked messages), but QoS 0 has no such bound, and a flood of it while InfluxDB is
    down must stall the MQTT thread (TCP backpressure) rather than grow memory.
    """

    def __init__(self, batch_size: int, flush_interval_s: float, max_pending: int) -> None:
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_pending = max_pending
        self._cond = threading.Condition()
        self._batch = Batch()
        self._closed = False

    def add(
        self,
        generation: int,
        mid: int,
        lines: list[str],
        device: tuple[str, str] | None,
        received_s: float,
    ) -> None:
        with self._cond:
            while len(self._batch.acks) >= self._max_pending and not self._closed:
                self._cond.wait()
            batch = self._batch
            if not batch.acks:
                batch.first_received = time.monotonic()
                self._cond.notify()
            batch.acks.append((generation, mid))
            if lines:
                batch.lines.extend(lines)
                if device is not None:
                    batch.seen[device] = received_s
                if len(batch.lines) >= self._batch_size:
                    self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._batch.acks)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self) -> Batch | None:
        """Block until a batch is due; None once closed and empty."""
        with self._cond:
            while not self._batch.acks:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._batch.first_received + self._flush_interval_s
            while len(self._batch.lines) < self._batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, self._batch = self._batch, Batch()
            self._cond.notify_all()  # room again for an `add` waiting on a full collector
            return batch


class Backoff:
    """Exponential backoff with full jitter, capped."""

    def __init__(self, first_s: float = 0.1, cap_s: float = 10.0) -> None:
        self._first_s = first_s
        self._cap_s = cap_s
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self._cap_s, self._first_s * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class MqttSource:
    """The broker side: a persistent QoS 1 session whose messages we ack by hand."""

    def __init__(self, config: AdapterConfig, metrics: AdapterMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self.generation = 0
        self.stopping = False
        self.on_message: Callable[[int, str, int, bytes], None] | None = None
        client = BufferedMqttClient(
            on_qos1_publish=self._dispatch,
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.mqtt_client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if config.mqtt_username:
            client.username_pw_set(config.mqtt_username, config.mqtt_password)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        # QoS 0 messages (a device that does not ask for delivery guarantees) take paho's
        # ordinary path; they need no ack.
        client.on_message = self._dispatch_message
        self.client = client

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        # Persistent session: the broker keeps our subscription and queues messages while
        # we are away; Receive Maximum bounds how many unacked messages it sends us.
        props.SessionExpiryInterval = self._config.mqtt_session_expiry_s
        props.ReceiveMaximum = self._config.max_unacked
        self.client.connect_async(
            self._config.mqtt_host,
            self._config.mqtt_port,
            keepalive=30,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()

    def stop_reading(self) -> None:
        """Stop the network thread: nothing more is received (the broker keeps it for us)."""
        self.client.loop_stop()

    def disconnect(self) -> None:
        self.stopping = True
        self.client.disconnect()

    def ack(self, acks: list[tuple[int, int]]) -> None:
        current = self.generation
        # An id from an earlier connection means nothing on this one; the broker
        # redelivers that message, and its copy is acked when it is stored again.
        # Id 0 marks a QoS 0 message, which has no ack.
        self.client.ack_many([mid for generation, mid in acks if generation == current and mid])

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker refused the connection: %s", reason_code)
            return
        self.generation += 1
        self._metrics.mqtt_connected.set(1)
        log.info(
            "Connected to MQTT broker %s:%d (session present: %s); subscribing to %s",
            self._config.mqtt_host,
            self._config.mqtt_port,
            flags.session_present,
            self._config.mqtt_topic,
        )
        # Subscribing on every connect renews the subscription if the broker lost our
        # session. Retained messages are old state, not new readings: never replay them.
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe(self._config.mqtt_topic, options=options)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._metrics.mqtt_connected.set(0)
        if self.stopping:
            log.info("Disconnected from MQTT broker")
        else:
            log.warning("Disconnected from MQTT broker (%s); reconnecting", reason_code)

    def _dispatch(self, topic: str, mid: int, payload: bytes) -> None:
        assert self.on_message is not None
        self.on_message(self.generation, topic, mid, payload)

    def _dispatch_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        # Only QoS 0 arrives here (our subscription caps QoS at 1, which the fast path
        # takes); id 0 tells the writer there is nothing to ack.
        assert self.on_message is not None
        self.on_message(self.generation, message.topic, 0, message.payload)


class Adapter:
    """Wires the broker, the contract and InfluxDB together, and owns the writer thread."""

    def __init__(self, config: AdapterConfig, metrics: AdapterMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or AdapterMetrics()
        self.metrics.unacked_limit.set(config.max_unacked)
        # Read when scraped: the MQTT thread's hot path does no gauge bookkeeping.
        self.metrics.unacked.set_function(lambda: self.collector.pending() + self._in_flight)
        self.writer = InfluxWriter(
            config.influxdb_host,
            config.influxdb_port,
            config.influxdb_database,
            username=config.influxdb_username,
            password=config.influxdb_password,
        )
        self.collector = BatchCollector(
            config.batch_size, config.flush_interval_ms / 1000, max_pending=config.max_unacked
        )
        self.source = MqttSource(config, self.metrics)
        self.source.on_message = self.handle_message
        self._writer_thread = threading.Thread(target=self._write_loop, name="influx-writer", daemon=True)
        self._in_flight = 0
        # Label children bound once: no label lookup on the message path.
        self._reject_counters = {r: self.metrics.messages_rejected.labels(r.value) for r in Reject}
        self._ignore_counters = {i: self.metrics.values_ignored.labels(i.value) for i in Ignore}

    # --- MQTT thread ---------------------------------------------------------------

    def handle_message(self, generation: int, topic: str, mid: int, payload: bytes) -> None:
        received_ns = time.time_ns()
        self.metrics.messages_received.inc()
        debug = self.config.debug_data_flow
        if debug:
            flow_log.info("Received a message by topic [%s]", topic)
        parsed = parse_message(topic, payload, received_ns, self.config.max_message_bytes)
        lines: list[str] = []
        device = None
        if isinstance(parsed, Reject):
            self._reject_counters[parsed].inc()
            if debug:
                flow_log.info("Ignored the message by topic [%s]: %s", topic, parsed.value)
        else:
            for record in parsed.records:
                self._account(record, parsed, debug)
                lines.extend(line_protocol(p) for p in record.points)
            if lines:
                device = (parsed.location, parsed.station)
        self.collector.add(generation, mid, lines, device, received_ns / 1e9)

    def _account(self, record: Record, parsed: ParsedMessage, debug: bool) -> None:
        if record.reject is not None:
            self._reject_counters[record.reject].inc()
            if debug:
                flow_log.info(
                    "Ignored data by [%s/%s]: %s (%s)",
                    parsed.location,
                    parsed.station,
                    record.reject.value,
                    record.reject_detail,
                )
            return
        for _key, why in record.ignored:
            self._ignore_counters[why].inc()
        if debug:
            if record.device_time is None:
                flow_log.info("Data timestamp is NOW")
            else:
                shown = format_device_time(record.device_time)
                flow_log.info("Data timestamp is: %s", shown)
            for point in record.points:
                flow_log.info(
                    "%s.%s.%s %s", point.location, point.station, point.metric, format_value(point.value)
                )

    # --- writer thread ---------------------------------------------------------------

    def _write_loop(self) -> None:
        while (batch := self.collector.take()) is not None:
            self._in_flight = len(batch.acks)
            self._store(batch)
            self.source.ack(batch.acks)
            self._in_flight = 0
            self.metrics.batch_latency_seconds.observe(time.monotonic() - batch.first_received)
            for (location, station), seen in batch.seen.items():
                self.metrics.device_last_seen.labels(location, station).set(seen)

    def _store(self, batch: Batch) -> None:
        """Write until InfluxDB has taken the batch (or refused parts of it for good)."""
        backoff = Backoff()
        while True:
            started = time.monotonic()
            try:
                result = self.writer.write_lines(batch.lines)
            except DatabaseMissingError:
                log.warning("Database %r is missing; creating it", self.writer.database)
                self._retry_after(backoff, "database missing", create=True)
                continue
            except TransientWriteError as exc:
                self.metrics.write_errors.labels("transient").inc()
                self._retry_after(backoff, str(exc))
                continue
            break
        if backoff.attempt:
            log.info("InfluxDB write succeeded again after %d retries", backoff.attempt)
        self.metrics.influxdb_up.set(1)
        self.metrics.batch_write_seconds.observe(time.monotonic() - started)
        self.metrics.batch_points.observe(len(batch.lines))
        self.metrics.points_written.inc(result.written)
        if result.dropped:
            self.metrics.points_dropped.inc(result.dropped)
            self.metrics.write_errors.labels("permanent").inc()
            log.error(
                "InfluxDB refused %d of %d points for good: %s",
                result.dropped,
                len(batch.lines),
                result.error,
            )

    def _retry_after(self, backoff: Backoff, reason: str, create: bool = False) -> None:
        self.metrics.influxdb_up.set(0)
        self.metrics.write_retries.inc()
        delay = backoff.next_delay()
        log.warning(
            "InfluxDB write failed (%s); %d messages held unacked; retry in %.1fs",
            reason,
            self._in_flight + self.collector.pending(),
            delay,
        )
        time.sleep(delay)
        if create:
            try:
                self.writer.ensure_database()
            except TransientWriteError as exc:
                log.warning("%s", exc)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        try:
            if self.writer.ensure_database():
                log.info("Created InfluxDB database %r (retention INF)", self.config.influxdb_database)
        except TransientWriteError as exc:
            # Not fatal: writes retry and create it once InfluxDB answers.
            log.warning("%s; will retry on first write", exc)
        self._writer_thread.start()
        self.source.start()

    def stop(self) -> None:
        """Graceful stop: receive nothing more, store and ack what was received, disconnect."""
        log.info(
            "Stopping: storing the %d messages received but not yet stored",
            self.collector.pending() + self._in_flight,
        )
        self.source.stop_reading()
        self.collector.close()
        self._writer_thread.join()
        self.source.disconnect()
        self.writer.close()
        registry = self.metrics.registry
        log.info(
            "Stopped: received %d messages, stored %d points",
            registry.get_sample_value("adapter_messages_received_total") or 0,
            registry.get_sample_value("adapter_points_written_total") or 0,
        )


def configure_logging(debug_data_flow: bool) -> None:
    # UTC timestamps in the contract's format; stdout so `docker service logs` shows them.
    logging.Formatter.converter = time.gmtime
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    flow_log.disabled = not debug_data_flow


def main() -> int:
    try:
        config = AdapterConfig.from_env()
    except ConfigError as exc:
        print(f"adapter: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.debug_data_flow)
    adapter = Adapter(config)
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_address, registry=adapter.metrics.registry)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "Adapter starting: MQTT %s:%d topic %s -> InfluxDB %s:%d/%s (batch %d points / %d ms)",
        config.mqtt_host,
        config.mqtt_port,
        config.mqtt_topic,
        config.influxdb_host,
        config.influxdb_port,
        config.influxdb_database,
        config.batch_size,
        config.flush_interval_ms,
    )
    adapter.start()
    stop.wait()
    adapter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
