"""Prometheus metrics of the adapter (served on METRICS_PORT at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AdapterMetrics:
    """All of the adapter's metrics, on a registry of their own (tests run several adapters)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
            "adapter_points_dropped", "Points InfluxDB refused for good (HTTP 400)", registry=r
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
        self.device_last_seen = Gauge(
            "adapter_device_last_seen_timestamp_seconds",
            "Unix time of the last stored message per device",
            ["location", "station"],
            registry=r,
        )
