"""Which `$SYS` topics of Mosquitto 2.0 become which metrics, and how their payloads are read.

Mosquitto publishes its statistics as retained messages under `$SYS/broker/` every
`sys_interval` (10 s by default), each one only when its value changed, and with a message
expiry of 60 s: a counter that has not moved for a minute is no longer retained, so an
exporter that connects later learns it only at its next change. Names follow Prometheus'
conventions (`_total` for Mosquitto's cumulative counters, which restart at 0 with the broker).
Verified against Debian's Mosquitto 2.0.11 (tests/broker_exporter/).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True, slots=True)
class SysMetric:
    name: str  # without the `_total` suffix prometheus_client adds to counters
    kind: Kind
    help: str


PREFIX = "$SYS/broker/"

# `$SYS/broker/<key>` → metric. Deprecated duplicates (clients/active, clients/inactive,
# messages/stored) and the broker's own load averages (Prometheus computes rates) are left out.
SYS_METRICS: dict[str, SysMetric] = {
    "clients/connected": SysMetric("mosquitto_clients_connected", Kind.GAUGE, "Clients connected now"),
    "clients/disconnected": SysMetric(
        "mosquitto_clients_disconnected",
        Kind.GAUGE,
        "Persistent sessions whose client is not connected (their messages are queued)",
    ),
    "clients/total": SysMetric(
        "mosquitto_clients_total_sessions",
        Kind.GAUGE,
        "Connected clients plus disconnected persistent sessions",
    ),
    "clients/maximum": SysMetric(
        "mosquitto_clients_maximum", Kind.GAUGE, "Most clients connected at once since the broker started"
    ),
    "clients/expired": SysMetric(
        "mosquitto_clients_expired",
        Kind.COUNTER,
        "Persistent sessions removed because they expired (persistent_client_expiration)",
    ),
    "messages/received": SysMetric(
        "mosquitto_messages_received", Kind.COUNTER, "MQTT packets of every type received"
    ),
    "messages/sent": SysMetric("mosquitto_messages_sent", Kind.COUNTER, "MQTT packets of every type sent"),
    "publish/messages/received": SysMetric(
        "mosquitto_publish_messages_received",
        Kind.COUNTER,
        # Mosquitto 2.0.11 (Debian's) masks the packet type wrongly and leaves out retained
        # and QoS 2 PUBLISH packets; 2.0.20 (the stack's image) counts them all.
        "PUBLISH packets received from clients",
    ),
    "publish/messages/sent": SysMetric(
        "mosquitto_publish_messages_sent", Kind.COUNTER, "PUBLISH packets sent to subscribers"
    ),
    "publish/messages/dropped": SysMetric(
        "mosquitto_publish_messages_dropped",
        Kind.COUNTER,
        "Messages for a subscriber dropped because its queue was full "
        "(max_queued_messages / max_queued_bytes), or QoS 0 messages for an offline one",
    ),
    "bytes/received": SysMetric("mosquitto_bytes_received", Kind.COUNTER, "Bytes received on every socket"),
    "bytes/sent": SysMetric("mosquitto_bytes_sent", Kind.COUNTER, "Bytes sent on every socket"),
    "publish/bytes/received": SysMetric(
        "mosquitto_publish_bytes_received", Kind.COUNTER, "Payload bytes of the PUBLISH packets received"
    ),
    "publish/bytes/sent": SysMetric(
        "mosquitto_publish_bytes_sent", Kind.COUNTER, "Payload bytes of the PUBLISH packets sent"
    ),
    "store/messages/count": SysMetric(
        "mosquitto_store_messages",
        Kind.GAUGE,
        "Messages the broker holds: retained, queued for sessions and in flight (each stored once)",
    ),
    "store/messages/bytes": SysMetric(
        "mosquitto_store_messages_bytes", Kind.GAUGE, "Payload bytes of the messages the broker holds"
    ),
    "retained messages/count": SysMetric(
        "mosquitto_retained_messages", Kind.GAUGE, "Retained messages (one per topic at most)"
    ),
    "subscriptions/count": SysMetric("mosquitto_subscriptions", Kind.GAUGE, "Subscriptions of all sessions"),
    "shared_subscriptions/count": SysMetric(
        "mosquitto_shared_subscriptions", Kind.GAUGE, "Shared subscriptions ($share/...)"
    ),
    "heap/current": SysMetric(
        "mosquitto_heap_bytes", Kind.GAUGE, "Memory the broker has allocated (its own accounting)"
    ),
    "heap/maximum": SysMetric(
        "mosquitto_heap_max_bytes", Kind.GAUGE, "Most memory allocated at once since the broker started"
    ),
    "uptime": SysMetric("mosquitto_uptime_seconds", Kind.GAUGE, "Seconds since the broker started"),
}

VERSION_KEY = "version"
# `$SYS/broker/version` is "mosquitto version 2.0.11"; `$SYS/broker/uptime` is "88 seconds".
_VERSION_RE = re.compile(r"^mosquitto version (\S{1,40})$")
_NUMBER_RE = re.compile(r"^(-?\d+(?:\.\d+)?)(?: seconds)?$")
# A payload longer than this is no statistic of Mosquitto's: not even looked at.
MAX_PAYLOAD = 64


def key_of(topic: str) -> str | None:
    return topic[len(PREFIX) :] if topic.startswith(PREFIX) else None


def parse_number(payload: bytes) -> float | None:
    """The number a `$SYS` statistic carries; None when the payload is not one."""
    if len(payload) > MAX_PAYLOAD:
        return None
    match = _NUMBER_RE.match(payload.decode("ascii", errors="replace").strip())
    if match is None:
        return None
    value = float(match.group(1))
    return value if math.isfinite(value) else None


def parse_version(payload: bytes) -> str | None:
    if len(payload) > MAX_PAYLOAD:
        return None
    match = _VERSION_RE.match(payload.decode("ascii", errors="replace").strip())
    return match.group(1) if match else None
