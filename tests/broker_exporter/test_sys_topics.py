"""broker_exporter/sys_topics.py: reading the payloads of Mosquitto's `$SYS` topics."""

from __future__ import annotations

import pytest

from broker_exporter.sys_topics import SYS_METRICS, Kind, key_of, parse_number, parse_version


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"0", 0.0),
        (b"123456789012", 123456789012.0),
        (b"49624", 49624.0),
        (b"88 seconds", 88.0),  # $SYS/broker/uptime
        (b"3.25", 3.25),
        (b" 7\n", 7.0),
        (b"", None),
        (b"seven", None),
        (b"88 minutes", None),
        (b"1e309", None),
        (b"nan", None),
        (b"1" * 65, None),  # longer than any statistic: not even parsed
        (b"\xff\xfe", None),
    ],
)
def test_parse_number(payload: bytes, expected: float | None) -> None:
    assert parse_number(payload) == expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"mosquitto version 2.0.11", "2.0.11"),
        (b"mosquitto version 2.0.20", "2.0.20"),
        (b"mosquitto 2.0.11", None),
        (b"mosquitto version " + b"x" * 60, None),
        (b"", None),
    ],
)
def test_parse_version(payload: bytes, expected: str | None) -> None:
    assert parse_version(payload) == expected


@pytest.mark.parametrize(
    ("topic", "key"),
    [
        ("$SYS/broker/clients/connected", "clients/connected"),
        ("$SYS/broker/retained messages/count", "retained messages/count"),
        ("$SYS/other/thing", None),
        ("UPB/RPi_1", None),
    ],
)
def test_key_of(topic: str, key: str | None) -> None:
    assert key_of(topic) == key


def test_metric_names_follow_prometheus_conventions() -> None:
    names = [m.name for m in SYS_METRICS.values()]
    assert len(names) == len(set(names))
    for metric in SYS_METRICS.values():
        assert metric.name.startswith("mosquitto_")
        # prometheus_client adds _total to counters; a gauge must not look like a counter.
        assert not metric.name.endswith("_total"), metric.name
        assert metric.help.strip()
    assert {k for k, m in SYS_METRICS.items() if m.kind is Kind.COUNTER} >= {
        "publish/messages/dropped",
        "messages/received",
        "bytes/sent",
    }
