"""The device message contract: MQTT topic + JSON payload → InfluxDB points.

This is the one implementation of CONTRACT.md section 1-2. The adapter (MQTT) and the
auth server (HTTP data API) both call `parse_message`; nothing here does I/O.
"""

from __future__ import annotations

import calendar
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

# A topic is exactly `<location>/<station>`, neither part empty nor containing `/`.
TOPIC_RE = re.compile(r"^[^/]+/[^/]+$")

# InfluxDB 1.x line protocol cannot carry control characters in identifiers or tag values,
# and has no escape for a backslash: one at the end of a name, or before `"`, `,` or `=`,
# is read as an escape and changes the name (checked against a real influxd). Topics or
# keys like these could never be stored faithfully, so they are refused.
_UNREPRESENTABLE = re.compile(r'[\x00-\x1f\x7f]|\\$|\\[",=]')

# Characters that make a name look like something else wherever it is shown (Grafana legends,
# logs, phpMyAdmin): C1 controls, among them NEL (U+0085), and the line and paragraph
# separators (U+2028, U+2029) break lines; bidirectional controls (U+061C, U+200E, U+200F,
# U+202A-U+202E, U+2066-U+2069) reorder the text around them (U+202E shows `1ipR` as `Rpi1`).
_MISLEADING = re.compile("[\x80-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")

# ISO 8601 extended format as devices send it: date, `T` or a space, time with optional
# fractional seconds (up to nanoseconds, kept), optional `Z` or ±hh:mm / ±hhmm / ±hh offset.
# ASCII digits only: `\d` would accept other scripts' digits.
_ISO_RE = re.compile(
    r"^(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})[Tt ]"
    r"(?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:[.,](?P<frac>[0-9]{1,9}))?)?"
    r"(?P<tz>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?$"
)

# InfluxDB 1.x stores int64 nanoseconds; these are the bounds it accepts (1677-09-21 .. 2262-04-11).
INFLUX_MIN_NS = -9_223_372_036_854_775_806
INFLUX_MAX_NS = 9_223_372_036_854_775_806

# Numeric timestamps at or above this are epoch milliseconds, below it epoch seconds
# (1e11 s is the year 5138; 1e11 ms is 1973-03-03).
EPOCH_MS_THRESHOLD = 100_000_000_000

TIMESTAMP_KEY = "timestamp"
NS_PER_S = 1_000_000_000


class Reject(StrEnum):
    """Why a message (or one element of a backlog array) was not stored at all."""

    BAD_TOPIC = "bad_topic"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_LARGE = "too_large"


class Ignore(StrEnum):
    """Why one key of an otherwise valid message was not stored (never an error)."""

    NOT_NUMERIC = "not_numeric"
    NOT_FINITE = "not_finite"
    BAD_NAME = "bad_name"


@dataclass(frozen=True, slots=True)
class Point:
    """One stored value: measurement `<station>.<metric>`, tags location/station."""

    location: str
    station: str
    metric: str
    value: float
    time_ns: int

    @property
    def measurement(self) -> str:
        return f"{self.station}.{self.metric}"


@dataclass(slots=True)
class Record:
    """The outcome of one JSON object (a whole message, or one backlog element)."""

    points: list[Point] = field(default_factory=list)
    # The device's own `timestamp` value as sent; None when the receive time was used.
    device_time: Any = None
    reject: Reject | None = None
    reject_detail: str = ""
    ignored: list[tuple[str, Ignore]] = field(default_factory=list)


@dataclass(slots=True)
class ParsedMessage:
    """Everything one MQTT message (or one HTTP body) turned into."""

    location: str
    station: str
    records: list[Record]

    @property
    def points(self) -> list[Point]:
        return [p for r in self.records for p in r.points]

    @property
    def rejected(self) -> list[Record]:
        return [r for r in self.records if r.reject is not None]


class TimestampError(ValueError):
    """A `timestamp` value the contract does not accept."""


def valid_name(name: str) -> bool:
    """Whether `name` may be a location, a station or a metric key: not empty, storable as it
    is in InfluxDB, and shown as it is. The HTTP API applies the same rule to its names."""
    return bool(name) and not _UNREPRESENTABLE.search(name) and not _MISLEADING.search(name)


def split_topic(topic: str) -> tuple[str, str] | None:
    """`UPB/RPi_1` → ("UPB", "RPi_1"); None for any topic outside the contract."""
    if not TOPIC_RE.match(topic):
        return None
    location, station = topic.split("/")
    if not valid_name(location) or not valid_name(station):
        return None
    return location, station


def _reject_constant(token: str) -> Any:
    # Python's json accepts NaN/Infinity/-Infinity; RFC 8259 does not.
    raise ValueError(f"{token} is not valid JSON")


def _epoch_ns_from_parts(m: re.Match[str]) -> int:
    year, month, day = int(m["y"]), int(m["mo"]), int(m["d"])
    hour, minute, second = int(m["h"]), int(m["mi"]), int(m["s"] or 0)
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year or 1, month)[1]):
        raise TimestampError("no such date")
    if hour > 23 or minute > 59 or second > 59:
        raise TimestampError("no such time of day")
    days = _days_from_civil(year, month, day)
    seconds = days * 86_400 + hour * 3600 + minute * 60 + second
    tz = m["tz"]
    if tz and tz not in ("Z", "z"):
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        off_h, off_m = int(digits[:2]), int(digits[2:] or 0)
        if off_h > 23 or off_m > 59:
            raise TimestampError("no such UTC offset")
        seconds -= sign * (off_h * 3600 + off_m * 60)
    frac = m["frac"] or ""
    return seconds * NS_PER_S + int(frac.ljust(9, "0") or 0)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (no datetime range limits)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def parse_timestamp(raw: Any) -> int:
    """A payload's `timestamp` value → epoch nanoseconds, or TimestampError.

    Strings are ISO 8601 (no offset means UTC); numbers are epoch seconds, or epoch
    milliseconds when ≥ 1e11. Sub-second digits are kept as sent.
    """
    if isinstance(raw, str):
        m = _ISO_RE.match(raw)
        if m is None:
            raise TimestampError(f"not an ISO 8601 date-time: {raw!r}")
        ns = _epoch_ns_from_parts(m)
    elif type(raw) is int or type(raw) is float:
        # repr() is the shortest text that round-trips, i.e. the digits the device sent,
        # so Decimal keeps sub-microsecond precision that float arithmetic would lose.
        try:
            exact = Decimal(repr(raw)) if type(raw) is float else Decimal(raw)
        except InvalidOperation as exc:  # pragma: no cover - repr of a float always parses
            raise TimestampError(f"not a number: {raw!r}") from exc
        if not exact.is_finite():
            raise TimestampError("timestamp is not finite")
        scale = 1_000_000 if exact >= EPOCH_MS_THRESHOLD else NS_PER_S
        ns = int(exact * scale)
    else:
        raise TimestampError(f"timestamp must be a string or a number, not {type(raw).__name__}")
    if not INFLUX_MIN_NS <= ns <= INFLUX_MAX_NS:
        raise TimestampError("timestamp outside InfluxDB's range (1677-09-21 .. 2262-04-11)")
    return ns


def _numeric(value: Any) -> float | Ignore:
    # `type(...) is` rather than isinstance: bool is a subclass of int and must not count.
    if type(value) is float:
        return value if math.isfinite(value) else Ignore.NOT_FINITE
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            return Ignore.NOT_FINITE
    return Ignore.NOT_NUMERIC


def parse_record(location: str, station: str, obj: Any, received_ns: int) -> Record:
    """One JSON value that should be a flat object → its points (or why not)."""
    record = Record()
    if not isinstance(obj, dict):
        record.reject = Reject.NOT_OBJECT
        record.reject_detail = f"payload is a JSON {type(obj).__name__}, not an object"
        return record
    time_ns = received_ns
    if TIMESTAMP_KEY in obj:
        raw = obj[TIMESTAMP_KEY]
        try:
            time_ns = parse_timestamp(raw)
        except TimestampError as exc:
            record.reject = Reject.BAD_TIMESTAMP
            record.reject_detail = str(exc)
            return record
        record.device_time = raw
    points = record.points
    for key, raw_value in obj.items():
        if key == TIMESTAMP_KEY:
            continue
        value = _numeric(raw_value)
        if isinstance(value, Ignore):
            record.ignored.append((key, value))
        elif not valid_name(key):
            record.ignored.append((key, Ignore.BAD_NAME))
        else:
            points.append(Point(location, station, key, value, time_ns))
    return record


def parse_message(
    topic: str, payload: bytes, received_ns: int, max_bytes: int | None = None
) -> ParsedMessage | Reject:
    """A whole message → the records it holds, or the reason it is rejected outright.

    A top-level JSON array is a backlog: each element is handled as one message.
    """
    parts = split_topic(topic)
    if parts is None:
        return Reject.BAD_TOPIC
    if max_bytes is not None and len(payload) > max_bytes:
        return Reject.TOO_LARGE
    try:
        doc = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return Reject.NOT_JSON
    location, station = parts
    elements: Iterable[Any] = doc if isinstance(doc, list) else (doc,)
    return ParsedMessage(
        location, station, [parse_record(location, station, e, received_ns) for e in elements]
    )


# --- InfluxDB line protocol -------------------------------------------------------------

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_TAG_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\="})


def line_protocol(point: Point) -> str:
    """One point as an InfluxDB line; `value` is always written as a float field."""
    measurement = point.measurement.translate(_MEASUREMENT_ESCAPES)
    # repr(float) round-trips exactly and is a valid line-protocol float (e.g. 99.0, 1e-07).
    return (
        f"{measurement},location={point.location.translate(_TAG_ESCAPES)},"
        f"station={point.station.translate(_TAG_ESCAPES)} value={point.value!r} {point.time_ns}"
    )
