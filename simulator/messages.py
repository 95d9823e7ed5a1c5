"""What the simulated devices send: readings, backlog arrays and deliberately invalid messages.

`MessageStream` decides, slot after slot, which device speaks and what it says. It does no
I/O and reads no clock: the runner hands it the reading time, so the same seed and the same
times give the same messages byte for byte.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from simulator.config import MalformedKind, SimulatorConfig, TimestampFormat
from simulator.signals import Battery, Climate

US_PER_S = 1_000_000
SECONDS_PER_HOUR = 3600.0
# Non-numeric keys real devices send along (the design's example carries both); the platform
# ignores them, so they are counted apart from the numeric values.
PROJECT = "SPRC"
STATUS_CHANCE = 0.25
PROJECT_CHANCE = 0.10
HUMIDITY_SENSOR_CHANCE = 0.75


class Kind(StrEnum):
    """What one MQTT message is; malformed ones use the MalformedKind values."""

    READING = "reading"
    BACKLOG = "backlog"


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of a device: numeric values, extra non-numeric keys, and when it was taken."""

    time_us: int
    values: dict[str, int | float]
    extras: dict[str, str]


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT publish, with what the platform should make of it."""

    topic: str
    payload: bytes
    kind: str  # a Kind or a MalformedKind value
    location: str
    station: str
    readings: int = 0  # valid JSON objects inside (0 for malformed messages)
    metric_counts: dict[str, int] = field(default_factory=dict)  # numeric values per metric
    ignored: int = 0  # non-numeric keys, which the platform skips

    @property
    def values(self) -> int:
        return sum(self.metric_counts.values())

    @property
    def malformed(self) -> bool:
        return self.kind not in (Kind.READING, Kind.BACKLOG)


def iso_timestamp(time_us: int) -> str:
    """`2024-03-22T14:05:01.123456+02:00`: ISO 8601 in local time with its UTC offset."""
    seconds, micros = divmod(time_us, US_PER_S)
    local = datetime.fromtimestamp(seconds).astimezone()
    return local.replace(microsecond=micros).isoformat(timespec="microseconds")


def format_timestamp(time_us: int, fmt: TimestampFormat) -> str | float:
    """A reading time as the device writes it: ISO 8601 string or epoch seconds (a JSON number)."""
    if fmt is TimestampFormat.EPOCH:
        seconds, micros = divmod(time_us, US_PER_S)
        # Six decimals survive the JSON float round trip at today's epoch (ulp ≈ 0.24 µs).
        return float(f"{seconds}.{micros:06d}")
    return iso_timestamp(time_us)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class Device:
    """One simulated sensor box with its own signals, random generator and offline buffer."""

    def __init__(self, location: str, station: str, seed: int) -> None:
        self.location = location
        self.station = station
        self.topic = f"{location}/{station}"
        # One generator per device, seeded by name: a device's signals do not change when
        # other devices are added or the schedule changes.
        self.rng = random.Random(f"{seed}:{location}/{station}")
        self.battery = Battery.random(self.rng)
        self.climate = Climate.random(self.rng)
        self.has_humidity = self.rng.random() < HUMIDITY_SENSOR_CHANCE
        self.last_us: int | None = None
        # While offline: the readings not sent yet, and how many to collect before coming back.
        self.buffer: list[Reading] = []
        self.backlog_target = 0

    @property
    def offline(self) -> bool:
        return self.backlog_target > 0

    def read(self, time_us: int, sim_clock: SimClock) -> Reading:
        """Take a sample at `time_us` (moved 1 µs past the previous one if needed)."""
        if self.last_us is not None:
            # Two readings of one series at one instant would overwrite each other in InfluxDB.
            time_us = max(time_us, self.last_us + 1)
            hours = sim_clock.hours_between(self.last_us, time_us)
        else:
            hours = 0.0
        self.last_us = time_us
        rng = self.rng
        self.battery.advance(hours, rng)
        self.climate.advance(rng)
        temperature = self.climate.temperature(sim_clock.hour_of_day(time_us), rng)
        humidity = self.climate.humidity(temperature, rng)
        with_status = rng.random() < STATUS_CHANCE
        with_project = rng.random() < PROJECT_CHANCE

        values: dict[str, int | float] = {"BAT": self.battery.percent}
        if self.has_humidity:
            values["HUMID"] = humidity
        values["TEMP"] = temperature
        extras: dict[str, str] = {}
        if with_project:
            extras["PRJ"] = PROJECT
        if with_status:
            extras["status"] = self.status()
        return Reading(time_us, values, extras)

    def status(self) -> str:
        if self.battery.charging:
            return "CHARGING"
        return "LOW_BATTERY" if self.battery.percent < 20 else "OK"


class SimClock:
    """Simulated time for the signals: it runs `scale` times faster than the readings' clock."""

    def __init__(self, start_us: int, scale: float) -> None:
        self.start_us = start_us
        self.scale = scale

    def hours_between(self, earlier_us: int, later_us: int) -> float:
        return (later_us - earlier_us) / US_PER_S * self.scale / SECONDS_PER_HOUR

    def hour_of_day(self, time_us: int) -> float:
        """Local hour of day (fractional) of the simulated instant; real time when scale is 1."""
        simulated_s = self.start_us / US_PER_S + (time_us - self.start_us) / US_PER_S * self.scale
        t = time.localtime(simulated_s)
        return t.tm_hour + t.tm_min / 60 + t.tm_sec / 3600


def make_devices(config: SimulatorConfig) -> list[Device]:
    """RPi_1 .. RPi_N, spread over the locations in turn."""
    locations = config.locations
    return [
        Device(locations[i % len(locations)], f"{config.station_prefix}{i + 1}", config.seed)
        for i in range(config.devices)
    ]


class MessageStream:
    """Slot by slot, the message a device sends (or None while it is offline and buffering)."""

    def __init__(self, config: SimulatorConfig, start_us: int) -> None:
        self.config = config
        self.devices = make_devices(config)
        self.clock = SimClock(start_us, config.time_scale)
        # Schedule decisions (malformed variants, going offline) have their own generator so
        # they never shift the devices' signals.
        self.rng = random.Random(f"{config.seed}:schedule")
        self.messages = 0
        self.malformed = 0
        # Backlog elements always carry a timestamp: without one they would all get the
        # same receive time and overwrite one another.
        self.backlog_format = (
            config.timestamps if config.timestamps is not TimestampFormat.NONE else TimestampFormat.ISO
        )

    def unsent_readings(self) -> int:
        """Readings still buffered by offline devices (lost when the run stops)."""
        return sum(len(d.buffer) for d in self.devices)

    def next(self, slot: int, time_us: int) -> Message | None:
        device = self.devices[slot % len(self.devices)]
        reading = device.read(time_us, self.clock)
        if device.offline:
            device.buffer.append(reading)
            if len(device.buffer) < device.backlog_target:
                return None
            return self._count(self._backlog(device))
        if self._malformed_due():
            kinds = self.config.malformed_kinds
            kind = kinds[self.malformed % len(kinds)]
            self.malformed += 1
            return self._count(self._malformed(kind, device, reading))
        if self.config.backlog and self.rng.random() < self.config.backlog_chance:
            device.backlog_target = self.rng.randint(2, self.config.backlog_max)
            device.buffer = [reading]
            return None
        return self._count(self._reading(device, reading))

    def _count(self, message: Message) -> Message:
        self.messages += 1
        return message

    def _malformed_due(self) -> bool:
        # Exact share: after n messages, floor(n * share) of them were malformed. The epsilon
        # keeps 0.1 * 10 from landing just below 1 in floating point.
        share = self.config.malformed_share
        return share > 0 and int((self.messages + 1) * share + 1e-9) > self.malformed

    # --- valid messages -----------------------------------------------------------------

    def _object(self, reading: Reading, fmt: TimestampFormat) -> dict[str, object]:
        obj: dict[str, object] = {**reading.values, **reading.extras}
        if fmt is not TimestampFormat.NONE:
            obj["timestamp"] = format_timestamp(reading.time_us, fmt)
        return obj

    def _reading(self, device: Device, reading: Reading) -> Message:
        return Message(
            topic=device.topic,
            payload=_dumps(self._object(reading, self.config.timestamps)),
            kind=Kind.READING,
            location=device.location,
            station=device.station,
            readings=1,
            metric_counts=dict.fromkeys(reading.values, 1),
            ignored=len(reading.extras),
        )

    def _backlog(self, device: Device) -> Message:
        readings, device.buffer, device.backlog_target = device.buffer, [], 0
        counts: Counter[str] = Counter()
        for r in readings:
            counts.update(r.values.keys())
        return Message(
            topic=device.topic,
            payload=_dumps([self._object(r, self.backlog_format) for r in readings]),
            kind=Kind.BACKLOG,
            location=device.location,
            station=device.station,
            readings=len(readings),
            metric_counts=dict(counts),
            ignored=sum(len(r.extras) for r in readings),
        )

    # --- invalid messages: each is rejected as a whole for exactly one reason ----------------

    def _malformed(self, kind: MalformedKind, device: Device, reading: Reading) -> Message:
        rng = self.rng
        topic = device.topic
        valid = self._object(reading, self.config.timestamps)
        bat = reading.values["BAT"]
        if kind is MalformedKind.BAD_TOPIC:
            loc, st = device.location, device.station
            topic = rng.choice([f"{loc}/{st}/data", loc, f"/{st}", f"{loc}/", f"{loc}//{st}"])
            payload = _dumps(valid)
        elif kind is MalformedKind.NOT_JSON:
            text = _dumps(valid)
            payload = rng.choice(
                [
                    text[: len(text) // 2],  # cut short
                    f'{{"BAT":{bat},"TEMP":NaN}}'.encode(),  # NaN is not JSON (RFC 8259)
                    f"BAT={bat};TEMP={reading.values['TEMP']}".encode(),
                    b"\xff\xfe" + text,  # not UTF-8
                    b"",
                ]
            )
        elif kind is MalformedKind.NOT_OBJECT:
            # Scalars only: an array would be read as a backlog, one rejection per element.
            payload = rng.choice(
                [str(bat).encode(), b'"OK"', b"null", b"true", json.dumps(_dumps(valid).decode()).encode()]
            )
        elif kind is MalformedKind.BAD_TIMESTAMP:
            iso = iso_timestamp(reading.time_us)
            stamp = rng.choice(
                [
                    iso[:-6] + "\u221202:00",  # a minus sign copied from a document, not '-'
                    "yesterday",
                    "2019-02-30T10:00:00+02:00",  # no such date
                    "2262-04-12T00:00:00Z",  # after InfluxDB's last instant
                    "26/11/2019 03:54:20",
                    True,
                    None,
                ]
            )
            payload = _dumps({**reading.values, **reading.extras, "timestamp": stamp})
        else:  # MalformedKind.TOO_LARGE
            obj = {**reading.values, "note": ""}
            padding = self.config.too_large_bytes - len(_dumps(obj))
            obj["note"] = "x" * max(0, padding)
            payload = _dumps(obj)
        return Message(topic, payload, kind.value, device.location, device.station)
