"""The simulator's messages, checked against the platform's own contract (adapter/contract.py)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import time
from collections import Counter

import pytest

from adapter.contract import Ignore, Limits, ParsedMessage, Reject, parse_message, parse_timestamp
from simulator.config import MalformedKind, SimulatorConfig, TimestampFormat
from simulator.messages import Kind, Message, MessageStream, iso_timestamp
from simulator.signals import Battery, Climate

START_US = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
STEP_US = 100_000  # ten readings a second across all devices


def stream_messages(config: SimulatorConfig, slots: int) -> list[Message]:
    stream = MessageStream(config, START_US)
    messages = [stream.next(slot, START_US + slot * STEP_US) for slot in range(slots)]
    return [m for m in messages if m is not None]


@pytest.mark.parametrize("fmt", list(TimestampFormat))
def test_valid_messages_store_exactly_the_values_they_declare(fmt: TimestampFormat) -> None:
    config = SimulatorConfig(devices=5, seed=11, timestamps=fmt, backlog=True, backlog_chance=0.2)
    messages = stream_messages(config, 400)
    received_ns = time.time_ns()
    stored: Counter[tuple[str, int]] = Counter()
    for message in messages:
        parsed = parse_message(message.topic, message.payload, received_ns)
        assert isinstance(parsed, ParsedMessage), (message.topic, message.payload)
        assert (parsed.location, parsed.station) == (message.location, message.station)
        assert not parsed.rejected
        assert len(parsed.records) == message.readings
        assert Counter(p.metric for p in parsed.points) == Counter(message.metric_counts)
        ignored = [why for r in parsed.records for _, why in r.ignored]
        assert ignored == [Ignore.NOT_NUMERIC] * message.ignored
        is_array = isinstance(json.loads(message.payload), list)
        assert is_array == (message.kind == Kind.BACKLOG)
        for record in parsed.records:
            # Backlog elements always carry their own time, even with --no-timestamps.
            has_time = fmt is not TimestampFormat.NONE or is_array
            assert (record.device_time is not None) == has_time
        for point in parsed.points:
            stored[(f"{point.station}.{point.metric}", point.time_ns)] += 1

    kinds = Counter(m.kind for m in messages)
    assert kinds[Kind.READING] > 100 and kinds[Kind.BACKLOG] > 5
    assert sum(m.ignored for m in messages) > 0
    # No two values of one series share an instant: InfluxDB would keep only one of them.
    if fmt is not TimestampFormat.NONE:
        assert max(stored.values()) == 1


@pytest.mark.parametrize("fmt", [TimestampFormat.ISO, TimestampFormat.EPOCH])
def test_timestamps_are_the_reading_times_to_the_microsecond(fmt: TimestampFormat) -> None:
    config = SimulatorConfig(devices=2, seed=3, timestamps=fmt)
    stream = MessageStream(config, START_US)
    times = [START_US + slot * 123_457 for slot in range(20)]
    for slot, time_us in enumerate(times):
        message = stream.next(slot, time_us)
        assert message is not None
        parsed = parse_message(message.topic, message.payload, 0)
        assert isinstance(parsed, ParsedMessage)
        assert {p.time_ns for p in parsed.points} == {time_us * 1000}


def test_iso_timestamps_carry_a_utc_offset() -> None:
    stamp = iso_timestamp(START_US + 654_321)
    assert stamp[-6] in "+-" and stamp[-3] == ":"
    assert stamp[19:26] == ".654321"
    assert parse_timestamp(stamp) == (START_US + 654_321) * 1000


def test_a_device_never_repeats_an_instant() -> None:
    # Two slots of one device at the same time (as when unthrottled on a coarse clock).
    stream = MessageStream(SimulatorConfig(devices=1, seed=5), START_US)
    first, second = stream.next(0, START_US), stream.next(1, START_US)
    assert first is not None and second is not None
    times = [json.loads(m.payload)["timestamp"] for m in (first, second)]
    assert [parse_timestamp(t) for t in times] == [START_US * 1000, (START_US + 1) * 1000]


def test_devices_topics_and_names() -> None:
    config = SimulatorConfig(devices=5, locations=("UPB", "Dorinel", "Lab"), seed=1)
    messages = stream_messages(config, 5)
    assert [m.topic for m in messages] == [
        "UPB/RPi_1",
        "Dorinel/RPi_2",
        "Lab/RPi_3",
        "UPB/RPi_4",
        "Dorinel/RPi_5",
    ]


@pytest.mark.parametrize("kind", list(MalformedKind))
def test_each_malformed_kind_is_rejected_for_that_reason(kind: MalformedKind) -> None:
    limit = 500
    config = SimulatorConfig(
        devices=3, seed=2, malformed_share=1.0, malformed_kinds=(kind,), too_large_bytes=limit + 1
    )
    messages = stream_messages(config, 60)
    assert len(messages) == 60 and all(m.kind == kind for m in messages)
    for message in messages:
        result = parse_message(message.topic, message.payload, 0, Limits(max_message_bytes=limit))
        if isinstance(result, Reject):
            assert result == Reject(kind)
        else:
            # not_object and bad_timestamp are decided per record: exactly one, rejected.
            assert [r.reject for r in result.records] == [Reject(kind)], message.payload
            assert not result.points
        assert message.values == 0 and message.readings == 0
    # Several variants of each kind are used, not one canned message.
    assert len({(m.topic, m.payload) for m in messages}) >= 4
    if kind is MalformedKind.TOO_LARGE:
        assert {len(m.payload) for m in messages} == {limit + 1}


@pytest.mark.parametrize(
    ("share", "messages", "malformed"),
    [(0.0, 50, 0), (0.1, 100, 10), (0.25, 40, 10), (1 / 3, 30, 10), (0.5, 7, 3), (1.0, 20, 20)],
)
def test_malformed_share_is_exact(share: float, messages: int, malformed: int) -> None:
    config = SimulatorConfig(devices=4, seed=9, malformed_share=share)
    sent = stream_messages(config, messages)
    kinds = Counter(m.kind for m in sent)
    assert sum(n for k, n in kinds.items() if k != Kind.READING) == malformed
    # Kinds are taken in turn, so every reason is covered once there are four.
    if malformed >= 4:
        assert {k for k in kinds if k != Kind.READING} == {k.value for k in config.malformed_kinds}


def test_same_seed_same_messages_other_seed_other_messages() -> None:
    config = SimulatorConfig(devices=4, seed=42, backlog=True, backlog_chance=0.1, malformed_share=0.1)
    first = stream_messages(config, 200)
    again = stream_messages(config, 200)
    other = stream_messages(dataclasses.replace(config, seed=43), 200)
    assert [(m.topic, m.payload) for m in first] == [(m.topic, m.payload) for m in again]
    assert [m.payload for m in first] != [m.payload for m in other]


def test_battery_drains_recharges_and_stays_within_bounds() -> None:
    rng = random.Random(1)
    battery = Battery(level=60.0, drain_per_hour=8.0, charge_per_hour=50.0, low_mark=15.0)
    levels = []
    for _ in range(48 * 60):  # two days, one reading a minute
        battery.advance(1 / 60, rng)
        levels.append(battery.percent)
    assert min(levels) >= 0 and max(levels) <= 100
    assert min(levels) <= 16 and max(levels) == 100
    # Full cycles: it reaches full and runs low again more than once.
    falls = sum(1 for a, b in itertools.pairwise(levels) if a > 15 >= b)
    rises = sum(1 for a, b in itertools.pairwise(levels) if a < 100 == b)
    assert falls >= 2 and rises >= 2


def test_temperature_follows_a_daily_cycle_and_humidity_moves_against_it() -> None:
    rng = random.Random(2)
    climate = Climate(temp_base=20.0, temp_amplitude=4.0, humid_base=50.0)
    afternoon = [climate.temperature(15.0, rng) for _ in range(200)]
    night = [climate.temperature(3.0, rng) for _ in range(200)]
    assert sum(afternoon) / 200 > sum(night) / 200 + 7  # twice the amplitude, less the noise
    assert len(set(afternoon)) > 10  # noisy, not a constant
    assert climate.humidity(max(afternoon), rng) < climate.humidity(min(night), rng)
    assert all(5.0 <= climate.humidity(t, rng) <= 99.0 for t in (-40.0, 20.0, 80.0))
