"""Prometheus metrics of the adapter (served on METRICS_PORT at /metrics)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

LAST_SEEN = "adapter_device_last_seen_timestamp_seconds"


class DeviceLastSeen:
    """The last-seen gauge per device, with a bounded label set.

    A device is forgotten once it has been silent for `ttl_s`, and beyond `cap` devices the
    one silent longest goes first, so a stranger inventing stations cannot grow the scrape
    without end. Each device costs one line of about 100 bytes per scrape.
    """

    def __init__(self, ttl_s: float, cap: int) -> None:
        self._ttl_s = ttl_s
        self._cap = cap
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def update(self, seen: Mapping[tuple[str, str], float]) -> None:
        with self._lock:
            for device, at in seen.items():
                self._seen[device] = at
                self._seen.move_to_end(device)
            while len(self._seen) > self._cap:
                self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(LAST_SEEN, "", labels=["location", "station"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            LAST_SEEN, "Unix time of the last stored message per device", labels=["location", "station"]
        )
        oldest = time.time() - self._ttl_s
        with self._lock:
            # Oldest update first: stop at the first device seen recently enough.
            while self._seen and next(iter(self._seen.values())) < oldest:
                self._seen.popitem(last=False)
            for (location, station), at in self._seen.items():
                family.add_metric([location, station], at)
        yield family


class PendingIncrements:
    """Counter increments collected on one thread and applied together (`flush`).

    A Prometheus increment takes a lock and costs about a microsecond; the adapter's MQTT
    thread makes two or more per message and applies them once per socket read, so a
    scrape trails the messages being handled by at most that read. Not thread-safe: one
    thread adds and flushes.
    """

    def __init__(self) -> None:
        self._pending: dict[Counter, int] = {}

    def inc(self, counter: Counter) -> None:
        self._pending[counter] = self._pending.get(counter, 0) + 1

    def flush(self) -> None:
        for counter, amount in self._pending.items():
            counter.inc(amount)
        self._pending.clear()


class AdapterMetrics:
    """All of the adapter's metrics, on a registry of their own (tests run several adapters)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        device_ttl_s: float = 86400,
        max_devices: int = 10_000,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_received = Counter("adapter_messages_received", "MQTT messages received", registry=r)
        self.messages_rejected = Counter(
            "adapter_messages_rejected",
            "Messages (or backlog elements) not stored at all, by reason",
            ["reason"],
            registry=r,
        )
        self.values_ignored = Counter(
            "adapter_values_ignored",
            "Keys of valid messages that were not stored (non-numeric, non-finite, bad name)",
            ["reason"],
            registry=r,
        )
        self.points_written = Counter("adapter_points_written", "Points accepted by InfluxDB", registry=r)
        self.points_dropped = Counter(
            "adapter_points_dropped",
            "Valid points not stored, by reason: a series budget, or InfluxDB refused them for good",
            ["reason"],
            registry=r,
        )
        self.write_errors = Counter(
            "adapter_write_errors",
            "Failed InfluxDB batch writes, by kind (transient, permanent)",
            ["kind"],
            registry=r,
        )
        self.write_retries = Counter(
            "adapter_write_retries", "InfluxDB batch writes retried after a failure", registry=r
        )
        self.batch_write_seconds = Histogram(
            "adapter_batch_write_seconds",
            "Duration of one successful InfluxDB batch write",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.batch_latency_seconds = Histogram(
            "adapter_batch_latency_seconds",
            "From receiving a batch's oldest message to its points being stored and acked",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.batch_points = Histogram(
            "adapter_batch_points",
            "Points per InfluxDB write",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000),
            registry=r,
        )
        self.unacked = Gauge(
            "adapter_unacked_messages", "Messages received but not yet acked (backlog)", registry=r
        )
        self.unacked_limit = Gauge(
            "adapter_unacked_limit", "Bound of the unacked backlog (MQTT Receive Maximum)", registry=r
        )
        self.mqtt_connected = Gauge("adapter_mqtt_connected", "1 while connected to the broker", registry=r)
        self.influxdb_up = Gauge(
            "adapter_influxdb_up", "1 while the last InfluxDB write succeeded", registry=r
        )
        self.series = Gauge("adapter_series", "Series known to exist (stored or being stored)", registry=r)
        self.series_limit = Gauge("adapter_series_limit", "Series budget (MAX_SERIES)", registry=r)
        self.retained_cleared = Counter(
            "adapter_retained_cleared",
            "Retained messages the adapter cleared from the broker (once handled, or by a sweep)",
            registry=r,
        )
        self.retained_sweeps = Counter(
            "adapter_retained_sweeps",
            "Sweeps for retained messages the adapter did not see arrive",
            registry=r,
        )
        self.device_last_seen = DeviceLastSeen(device_ttl_s, max_devices)
        r.register(self.device_last_seen)
