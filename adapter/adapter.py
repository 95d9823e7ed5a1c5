"""The MQTT → InfluxDB adapter: subscribe to every device topic, store numeric values.

Delivery is at-least-once: messages arrive with QoS 1 on a persistent session and are
acknowledged to the broker only after InfluxDB accepted their points, or refused them for
good. Run it as `python adapter/adapter.py`; every setting comes from the environment (see
docs/adapter.md).
"""

from __future__ import annotations

import logging
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

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
    Drop,
    Ignore,
    LineEncoder,
    ParsedMessage,
    Record,
    Reject,
    SeriesBudget,
    parse_message,
    parse_timestamp,
)
from adapter.influx import (
    DatabaseMissingError,
    InfluxWriter,
    SeriesBudgetKeeper,
    TransientWriteError,
    WriteResult,
)
from adapter.metrics import AdapterMetrics, PendingIncrements
from adapter.mqtt_client import BufferedMqttClient

log = logging.getLogger("adapter")
# The log lines' format (configure_logging): `2019-11-26 03:54:20 <message>`, in UTC.
LOG_FORMAT = "%(asctime)s %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# What a log line shows of a stranger's topic or name: control, separator and bidirectional
# characters escaped (no forged or disguised lines), and at most this many characters.
SHOWN_CHARS = 300
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


_REFUSED_KEYS = frozenset({Ignore.BAD_NAME, Ignore.KEY_TOO_LONG})


def shown(text: str) -> str:
    """`text` as it is safe to log."""
    cut = text[:SHOWN_CHARS]
    safe = _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", cut)
    return safe if len(text) <= SHOWN_CHARS else f"{safe}…({len(text)} characters)"


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


class FlowLog:
    """The data-flow log (DEBUG_DATA_FLOW=true): the contract's lines, each formatted as every
    other log line is (LOG_FORMAT), collected while the MQTT thread reads and written with
    one write per socket read, in order.

    Through Python's logging a line costs about 20 µs (a record, a caller lookup, a format,
    a flush), and every message makes several lines. The lines of a message carry the time
    it was received. Only the MQTT thread adds and flushes (and `stop`, once it has ended).
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        # None: sys.stdout at the time of writing, as the log's handler writes.
        self._stream = stream
        self._lines: list[str] = []
        self._second = -1
        self._prefix = ""

    def message(self, received_ns: int) -> None:
        """The lines that follow are about a message received at `received_ns`."""
        second = received_ns // 1_000_000_000
        if second != self._second:
            self._second = second
            self._prefix = time.strftime(LOG_DATE_FORMAT, time.gmtime(second)) + " "

    def line(self, text: str) -> None:
        self._lines.append(f"{self._prefix}{text}\n")

    def flush(self) -> None:
        if self._lines:
            stream = self._stream or sys.stdout
            stream.write("".join(self._lines))
            stream.flush()
            self._lines.clear()


class RateLimitedLog:
    """At most one warning per key per `interval_s`; the next one says how many were held back."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self._interval_s) < self._interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            message += f" ({held} similar warnings in the last {self._interval_s:.0f}s not shown)"
        log.warning(message, *args)


@dataclass(slots=True)
class Batch:
    """Messages collected for InfluxDB writes, acked together once handled."""

    lines: list[str] = field(default_factory=list)
    # Per message that has lines: where its lines end in `lines`, and its device. A refused
    # write is bisected along these bounds down to the offending message.
    ends: list[int] = field(default_factory=list)
    devices: list[tuple[str, str]] = field(default_factory=list)
    # Characters of `lines` with their newlines, in all and where each message's end: the
    # request body's size in bytes for ASCII names (a write that is larger after all is
    # split when InfluxDB answers 413).
    chars: int = 0
    char_ends: list[int] = field(default_factory=list)
    # (connection generation, MQTT message id) in arrival order.
    acks: list[tuple[int, int]] = field(default_factory=list)
    seen: dict[tuple[str, str], float] = field(default_factory=dict)
    # Topics of retained messages: cleared from the broker once the batch is handled.
    retained: list[str] = field(default_factory=list)
    first_received: float = 0.0


class BatchCollector:
    """Thread-safe hand-off from the MQTT thread to the writer thread.

    A batch is handed over when it holds `batch_size` points or `max_chars` characters of
    line protocol, or when its oldest message has waited `flush_interval_s`, whichever comes
    first. `add` blocks while `max_pending` messages or `max_chars` characters are waiting:
    with the batch being written, the adapter never holds more than two batches' worth of
    lines, however large the messages (QoS 1 is also bounded by the broker, which sends at
    most Receive Maximum unacked messages; QoS 0 has no such bound). A full collector
    stalls the MQTT thread (TCP backpressure) rather than growing memory.
    """

    def __init__(self, batch_size: int, flush_interval_s: float, max_pending: int, max_chars: int) -> None:
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._max_pending = max_pending
        self._max_chars = max_chars
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
        *,
        retained_topic: str | None = None,
    ) -> None:
        chars = sum(map(len, lines)) + len(lines) if lines else 0
        with self._cond:
            while (
                len(self._batch.acks) >= self._max_pending or self._batch.chars >= self._max_chars
            ) and not self._closed:
                self._cond.wait()
            batch = self._batch
            if not batch.acks:
                batch.first_received = time.monotonic()
                self._cond.notify()
            batch.acks.append((generation, mid))
            if retained_topic is not None:
                batch.retained.append(retained_topic)
            if lines and device is not None:
                batch.lines.extend(lines)
                batch.ends.append(len(batch.lines))
                batch.devices.append(device)
                batch.chars += chars
                batch.char_ends.append(batch.chars)
                batch.seen[device] = received_s
                if len(batch.lines) >= self._batch_size or batch.chars >= self._max_chars:
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
            while (
                len(self._batch.lines) < self._batch_size
                and self._batch.chars < self._max_chars
                and not self._closed
            ):
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


class StopDeadlineError(Exception):
    """The adapter is stopping and its time for storing is up: leave the rest unacked."""


class MqttSource:
    """The broker side: a persistent QoS 1 session whose messages we ack by hand."""

    def __init__(self, config: AdapterConfig, metrics: AdapterMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self.generation = 0
        self.stopping = False
        self.on_message: Callable[[int, str, int, bytes, bool], None] | None = None
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

    def clear_retained(self, topics: list[str]) -> int:
        """An empty retained message on each topic: the broker deletes what it retained there.
        Returns how many topics were cleared.

        QoS 0: nothing waits for an acknowledgement, so the broker frees the messages as fast
        as they are handled (QoS 1 would let at most paho's in-flight window through at a
        time). A clear lost in a disconnection is left to the next sweep."""
        distinct = dict.fromkeys(topics)
        for topic in distinct:
            self.client.publish(topic, b"", qos=0, retain=True)
        return len(distinct)

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
            self._config.mqtt_topic_shown,
        )
        # Subscribing on every connect renews the subscription if the broker lost our
        # session. Retained messages are old state, not new readings: never replay them.
        # Retain-as-published shows which live messages the broker retains, so that we can
        # clear them (the platform never reads them; they would only fill the broker).
        options = SubscribeOptions(
            qos=1, retainAsPublished=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND
        )
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

    def _dispatch(self, topic: str, mid: int, payload: bytes, retain: bool) -> None:
        assert self.on_message is not None
        self.on_message(self.generation, topic, mid, payload, retain)

    def _dispatch_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        # Only QoS 0 arrives here (our subscription caps QoS at 1, which the fast path
        # takes); id 0 tells the writer there is nothing to ack.
        assert self.on_message is not None
        self.on_message(self.generation, message.topic, 0, message.payload, bool(message.retain))


class RetainedSweeper:
    """Clears the retained messages the adapter did not see arrive: those from before it
    started, or dropped from its session's queue once the broker's queue limit was reached.

    A short clean-start connection subscribes to the adapter's topic filter asking for the
    retained messages, and clears every one it is sent (an empty retained message on its
    topic). They are not stored: a retained message is old state, and a live copy of it still
    reaches the adapter's own session. The broker sends a subscriber the retained messages
    before anything published after the subscription, so an empty retained message on a
    topic of the sweep's own (the marker, which the adapter ignores like any clear) ends it.
    """

    def __init__(self, config: AdapterConfig, timeout_s: float = 120.0) -> None:
        self._config = config
        self._timeout_s = timeout_s
        topic = config.mqtt_topic
        if topic.startswith("$share/"):
            # The broker sends no retained messages to a shared subscription.
            topic = topic.split("/", 2)[2]
        self.topic_filter = topic

    def sweep(self) -> int:
        """One sweep; returns how many retained messages it cleared. Raises SweepError."""
        marker_name = f"sweep-{random.getrandbits(64):016x}"
        marker = "/".join(
            marker_name if level in ("#", "+") else level for level in self.topic_filter.split("/")
        )
        done = threading.Event()
        subscribed = threading.Event()
        cleared: list[mqtt.MQTTMessageInfo] = []
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{self._config.mqtt_client_id}-sweep",
            protocol=mqtt.MQTTv5,
        )
        if self._config.mqtt_username:
            client.username_pw_set(self._config.mqtt_username, self._config.mqtt_password)

        def on_message(c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
            if message.topic == marker:
                done.set()
            elif message.retain and message.payload:
                cleared.append(c.publish(message.topic, b"", qos=1, retain=True))

        client.on_message = on_message
        client.on_subscribe = lambda *_: subscribed.set()
        try:
            client.connect(self._config.mqtt_host, self._config.mqtt_port, keepalive=30, clean_start=True)
        except OSError as exc:
            raise SweepError(f"cannot connect to the broker: {exc}") from exc
        client.loop_start()
        try:
            # QoS 1: past its queue limit the broker would drop QoS 0 messages for a slow reader.
            options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
            client.subscribe(self.topic_filter, options=options)
            if not subscribed.wait(self._timeout_s):
                raise SweepError("no SUBACK")
            client.publish(marker, b"", qos=1, retain=True)
            if not done.wait(self._timeout_s):
                raise SweepError(f"the retained messages did not end within {self._timeout_s:.0f}s")
            if cleared:
                # PUBACKs come in order: the last one acknowledges them all.
                cleared[-1].wait_for_publish(self._timeout_s)
            return len(cleared)
        finally:
            client.disconnect()
            client.loop_stop()


class SweepError(Exception):
    """A sweep of retained messages did not complete (it is tried again later)."""


class Adapter:
    """Wires the broker, the contract and InfluxDB together, and owns the writer thread."""

    def __init__(self, config: AdapterConfig, metrics: AdapterMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or AdapterMetrics(
            device_ttl_s=config.device_metrics_ttl_s, max_devices=config.max_device_metrics
        )
        self.metrics.unacked_limit.set(config.max_unacked)
        # Read when scraped: the MQTT thread's hot path does no gauge bookkeeping.
        self.metrics.unacked.set_function(lambda: self.collector.pending() + self._in_flight)
        limits = config.limits
        self.budget = SeriesBudget(limits.max_series_per_device, limits.max_series)
        self.metrics.series.set_function(lambda: self.budget.count)
        self.metrics.series_limit.set(limits.max_series)
        user, password = config.influxdb_username, config.influxdb_password
        self.writer = InfluxWriter(
            config.influxdb_host,
            config.influxdb_port,
            config.influxdb_database,
            username=user,
            password=password,
        )
        # Its own connection: the series are read while the writer thread writes.
        reader = InfluxWriter(
            config.influxdb_host,
            config.influxdb_port,
            config.influxdb_database,
            timeout_s=60,
            username=user,
            password=password,
        )
        self.budget_keeper = SeriesBudgetKeeper(self.budget, reader, config.series_refresh_s)
        self.collector = BatchCollector(
            config.batch_size,
            config.flush_interval_ms / 1000,
            max_pending=config.max_unacked,
            max_chars=config.max_batch_bytes,
        )
        self.flow = FlowLog()
        self._encoder = LineEncoder(limits.max_series)
        self.source = MqttSource(config, self.metrics)
        self.source.on_message = self.handle_message
        self.source.client.on_read_end = self._read_done
        self._writer_thread = threading.Thread(target=self._write_loop, name="influx-writer", daemon=True)
        self._series_thread = threading.Thread(target=self._series_loop, name="series-budget", daemon=True)
        self.sweeper = RetainedSweeper(config)
        self._sweep_thread = threading.Thread(target=self._sweep_loop, name="retained-sweep", daemon=True)
        self._in_flight = 0
        # Stop handling: `_stopping` wakes the threads' waits; `_stop_deadline` ends retrying.
        self._stopping = threading.Event()
        self._stop_deadline = float("inf")
        self._start_lock = threading.Lock()
        self._reading = False
        self._warnings = RateLimitedLog()
        # Label children bound once: no label lookup on the message path. The MQTT thread's
        # increments are applied once per socket read (`_read_done`).
        self._counts = PendingIncrements()
        self._received_counter = self.metrics.messages_received
        self._reject_counters = {r: self.metrics.messages_rejected.labels(r.value) for r in Reject}
        self._ignore_counters = {i: self.metrics.values_ignored.labels(i.value) for i in Ignore}
        self._drop_counters = {d: self.metrics.points_dropped.labels(d.value) for d in Drop}

    # --- MQTT thread ---------------------------------------------------------------

    def _read_done(self) -> None:
        """The messages of one socket read are handled: their log lines and counts go out."""
        self.flow.flush()
        self._counts.flush()

    def handle_message(
        self, generation: int, topic: str, mid: int, payload: bytes, retain: bool = False
    ) -> None:
        received_ns = time.time_ns()
        counts = self._counts
        counts.inc(self._received_counter)
        retained_topic = topic if retain else None
        if retain and not payload:
            # Someone (often we) cleared a retained message: a deletion, not a reading.
            self.collector.add(generation, mid, [], None, 0.0)
            return
        debug = self.config.debug_data_flow
        if debug:
            self.flow.message(received_ns)
            self.flow.line(f"Received a message by topic [{shown(topic)}]")
        parsed = parse_message(topic, payload, received_ns, self.config.limits)
        lines: list[str] = []
        device = None
        if isinstance(parsed, Reject):
            counts.inc(self._reject_counters[parsed])
            if debug:
                self.flow.line(f"Ignored the message by topic [{shown(topic)}]: {parsed.value}")
        else:
            refused = self.budget.admit(parsed)
            if refused:
                self._account_budget(parsed, refused, debug)
            for record in parsed.records:
                self._account(record, parsed, debug)
                if record.points:
                    lines += self._encoder.lines(parsed.location, parsed.station, record.points)
            if lines:
                device = (parsed.location, parsed.station)
        self.collector.add(generation, mid, lines, device, received_ns / 1e9, retained_topic=retained_topic)

    def _account(self, record: Record, parsed: ParsedMessage, debug: bool) -> None:
        if record.reject is not None:
            self._counts.inc(self._reject_counters[record.reject])
            if debug:
                self.flow.line(
                    f"Ignored data by [{parsed.location}/{parsed.station}]: "
                    f"{record.reject.value} ({record.reject_detail})"
                )
            return
        for key, why in record.ignored:
            self._counts.inc(self._ignore_counters[why])
            # Keys refused by a name rule are logged; values that are not numbers are simply
            # not readings (a device's "status": "OK"), as the contract says.
            if debug and why in _REFUSED_KEYS:
                self.flow.line(f"Ignored {parsed.location}.{parsed.station}.{shown(key)}: {why.value}")
        if debug:
            flow = self.flow
            if record.device_time is None:
                flow.line("Data timestamp is NOW")
            else:
                flow.line(f"Data timestamp is: {format_device_time(record.device_time)}")
            device = f"{parsed.location}.{parsed.station}."
            for point in record.points:
                flow.line(f"{device}{point.metric} {format_value(point.value)}")

    def _account_budget(self, parsed: ParsedMessage, refused: list[tuple[str, Drop]], debug: bool) -> None:
        for metric, why in refused:
            self._drop_counters[why].inc()
            if debug:
                self.flow.line(f"Ignored {parsed.location}.{parsed.station}.{metric}: {why.value}")
        # The warning follows the data-flow lines before it.
        self.flow.flush()
        why = refused[0][1]
        if why is Drop.DEVICE_SERIES_BUDGET:
            self._warnings.warning(
                why.value,
                "Device %s/%s has %d series (MAX_SERIES_PER_DEVICE): %d new metrics refused, e.g. %s",
                parsed.location,
                parsed.station,
                self.config.limits.max_series_per_device,
                len(refused),
                shown(refused[0][0]),
            )
        else:
            self._warnings.warning(
                why.value,
                "The database has %d series (MAX_SERIES): %d points of new series from %s/%s refused",
                self.config.limits.max_series,
                len(refused),
                parsed.location,
                parsed.station,
            )

    # --- writer thread ---------------------------------------------------------------

    def _write_loop(self) -> None:
        while (batch := self.collector.take()) is not None:
            self._in_flight = len(batch.acks)
            try:
                self._store(batch)
            except StopDeadlineError:
                log.warning(
                    "Stopping: %d messages not stored stay unacked in the broker's session "
                    "(redelivered when the adapter is back)",
                    len(batch.acks) + self.collector.pending(),
                )
                self._in_flight = 0
                return
            self.source.ack(batch.acks)
            if batch.retained:
                self.metrics.retained_cleared.inc(self.source.clear_retained(batch.retained))
            self._in_flight = 0
            self.metrics.batch_latency_seconds.observe(time.monotonic() - batch.first_received)
            self.metrics.device_last_seen.update(batch.seen)

    def _store(self, batch: Batch) -> None:
        """Write the batch in requests of at most MAX_BATCH_BYTES; raises StopDeadlineError."""
        limit = self.config.max_batch_bytes
        first = 0
        first_chars = 0
        for index, end_chars in enumerate(batch.char_ends):
            if index > first and end_chars - first_chars > limit:
                self._write_span(batch, first, index)
                first, first_chars = index, batch.char_ends[index - 1]
        if batch.ends:
            self._write_span(batch, first, len(batch.ends))

    def _write_span(self, batch: Batch, first: int, stop: int, line_lo: int = -1, line_hi: int = -1) -> None:
        """Write messages [first, stop) (or lines [line_lo, line_hi) of one message).

        A refused write is split in halves, by message and then by line, until each refusal
        is pinned on one line of one message: it is counted by reason and logged, everything
        else is stored. Rewriting a half InfluxDB already stored rewrites the same points.
        """
        if line_lo < 0:
            line_lo = batch.ends[first - 1] if first else 0
            line_hi = batch.ends[stop - 1]
        lines = batch.lines[line_lo:line_hi]
        if stop - first == 1 and len(lines) > 1 and self._oversized(lines):
            # One message larger than a write may be: its lines go in several writes.
            middle = (line_lo + line_hi) // 2
            self._write_span(batch, first, stop, line_lo, middle)
            self._write_span(batch, first, stop, middle, line_hi)
            return
        result = self._write_retrying(lines)
        if not result.refused:
            self.metrics.points_written.inc(result.written)
            return
        if stop - first > 1:
            middle = (first + stop) // 2
            self._write_span(batch, first, middle)
            self._write_span(batch, middle, stop)
        elif len(lines) > 1:
            # Within one message, down to single lines: InfluxDB names only the first reason
            # of a refusal, and does not count unparsable lines next to refused points.
            middle = (line_lo + line_hi) // 2
            self._write_span(batch, first, stop, line_lo, middle)
            self._write_span(batch, first, stop, middle, line_hi)
        else:
            self._account_refused(result, batch.devices[first])

    def _oversized(self, lines: list[str]) -> bool:
        return sum(map(len, lines)) + len(lines) > self.config.max_batch_bytes

    def _account_refused(self, result: WriteResult, device: tuple[str, str]) -> None:
        self.metrics.points_written.inc(result.written)
        self.metrics.write_errors.labels("permanent").inc()
        for why, count in result.refused:
            self._drop_counters[why].inc(count)
        why = result.refused[0][0]
        hint = " (InfluxDB's max-body-size is below MAX_BATCH_BYTES)" if result.too_large else ""
        self._warnings.warning(
            why.value,
            "InfluxDB refused a point of %s/%s for good (%s)%s: %s",
            device[0],
            device[1],
            why.value,
            hint,
            shown(result.error),
        )

    def _write_retrying(self, lines: list[str]) -> WriteResult:
        """One write, retried until InfluxDB answers it; raises StopDeadlineError."""
        backoff = Backoff()
        while True:
            if time.monotonic() > self._stop_deadline:
                raise StopDeadlineError
            started = time.monotonic()
            try:
                result = self.writer.write_lines(lines)
            except DatabaseMissingError:
                log.warning("Database %r is missing; creating it", self.writer.database)
                self._retry_after(backoff, "database missing", create=True)
                continue
            except TransientWriteError as exc:
                self.metrics.write_errors.labels("transient").inc()
                self._retry_after(backoff, str(exc))
                continue
            if backoff.attempt:
                log.info("InfluxDB write succeeded again after %d retries", backoff.attempt)
            self.metrics.influxdb_up.set(1)
            self.metrics.batch_write_seconds.observe(time.monotonic() - started)
            self.metrics.batch_points.observe(len(lines))
            return result

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
        # Never sleep past the stop deadline; a stop wakes the wait to re-check it.
        wait = min(delay, max(0.0, self._stop_deadline - time.monotonic()))
        if self._stopping.is_set():
            time.sleep(wait)
        else:
            self._stopping.wait(wait)
        if create:
            try:
                self.writer.ensure_database()
            except TransientWriteError as exc:
                log.warning("%s", exc)

    # --- series budget ---------------------------------------------------------------

    def _series_loop(self) -> None:
        """Read InfluxDB's series before reading the broker, then again every
        SERIES_REFRESH_INTERVAL (series other replicas or the HTTP API created, or an
        operator dropped)."""
        backoff = Backoff(first_s=1.0, cap_s=30.0)
        while not self._stopping.is_set():
            try:
                self.budget_keeper.load()
                break
            except TransientWriteError as exc:
                delay = backoff.next_delay()
                log.warning("Cannot read InfluxDB's series yet (%s); retry in %.0fs", exc, delay)
                self._stopping.wait(delay)
        with self._start_lock:
            if self._stopping.is_set():
                return
            self.source.start()
            self._reading = True
        if self.config.retained_sweep_s:
            self._sweep_thread.start()
        interval = self.config.series_refresh_s
        while interval and not self._stopping.wait(interval):
            try:
                self.budget_keeper.load()
            except TransientWriteError as exc:
                log.warning("Cannot refresh the series budget from InfluxDB: %s", exc)

    def _sweep_loop(self) -> None:
        """A sweep of retained messages at start, then every RETAINED_SWEEP_INTERVAL."""
        while not self._stopping.is_set():
            try:
                # The broker sends one subscriber at most its queue limit's worth of retained
                # messages (max_queued_bytes): sweep again until a sweep finds none.
                for _ in range(1000):
                    cleared = self.sweeper.sweep()
                    self.metrics.retained_sweeps.inc()
                    self.metrics.retained_cleared.inc(cleared)
                    if not cleared or self._stopping.is_set():
                        break
                    log.info("Cleared %d retained messages the broker still held", cleared)
            except SweepError as exc:
                log.warning(
                    "Sweep of retained messages failed (%s); next one in %ds",
                    exc,
                    self.config.retained_sweep_s,
                )
            self._stopping.wait(self.config.retained_sweep_s)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self.config.mqtt_client_id_default:
            log.warning(
                "MQTT_CLIENT_ID is the default %r: anyone who connects with it takes over this "
                "adapter's session; set MQTT_CLIENT_ID_FILE to a secret (the stack does)",
                self.config.mqtt_client_id,
            )
        try:
            if self.writer.ensure_database():
                log.info("Created InfluxDB database %r (retention INF)", self.config.influxdb_database)
        except TransientWriteError as exc:
            # Not fatal: writes retry and create it once InfluxDB answers.
            log.warning("%s; will retry on first write", exc)
        self._writer_thread.start()
        self._series_thread.start()

    def stop(self) -> None:
        """Graceful stop: receive nothing more, store and ack what was received (for at most
        STOP_TIMEOUT seconds of retrying), disconnect."""
        log.info(
            "Stopping: storing the %d messages received but not yet stored",
            self.collector.pending() + self._in_flight,
        )
        with self._start_lock:
            self._stop_deadline = time.monotonic() + self.config.stop_timeout_s
            self._stopping.set()
            reading = self._reading
        if reading:
            self.source.stop_reading()
        self._read_done()  # the MQTT thread has ended: what it read is logged and counted
        self.collector.close()
        self._writer_thread.join()
        if reading:
            self.source.disconnect()
        self.writer.close()
        registry = self.metrics.registry
        log.info(
            "StopDeadlineError: received %d messages, stored %d points",
            registry.get_sample_value("adapter_messages_received_total") or 0,
            registry.get_sample_value("adapter_points_written_total") or 0,
        )


def configure_logging() -> None:
    # UTC timestamps in the contract's format; stdout so `docker service logs` shows them.
    logging.Formatter.converter = time.gmtime
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main() -> int:
    try:
        config = AdapterConfig.from_env()
    except ConfigError as exc:
        print(f"adapter: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    adapter = Adapter(config)
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_address, registry=adapter.metrics.registry)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "Adapter starting: MQTT %s:%d topic %s -> InfluxDB %s:%d/%s (batch %d points / %d bytes / %d ms)",
        config.mqtt_host,
        config.mqtt_port,
        config.mqtt_topic_shown,
        config.influxdb_host,
        config.influxdb_port,
        config.influxdb_database,
        config.batch_size,
        config.max_batch_bytes,
        config.flush_interval_ms,
    )
    adapter.start()
    stop.wait()
    adapter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
