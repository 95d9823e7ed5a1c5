"""The device message contract: MQTT topic + JSON payload → InfluxDB points.

This is the one implementation of CONTRACT.md section 1-2. The adapter (MQTT) and the
auth server (HTTP data API) both call `parse_message` with the same `Limits`, and both
keep a `SeriesBudget`; nothing here does I/O.
"""

from __future__ import annotations

import calendar
import functools
import json
import math
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, NamedTuple

# A topic is exactly `<location>/<station>`, neither part empty nor containing `/`.
TOPIC_RE = re.compile(r"^[^/]+/[^/]+$")

# InfluxDB 1.x line protocol cannot carry control characters in identifiers or tag values,
# and has no escape for a backslash: one at the end of a name, or before `"`, `,` or `=`,
# is read as an escape and changes the name (checked against a real influxd). Topics or
# keys like these could never be stored faithfully, so they are refused. So are characters
# that would let a name forge or disguise lines where names are shown (logs, Grafana
# legends, the HTTP API): C1 controls, the line and paragraph separators U+2028/U+2029, and
# the bidirectional marks, embeddings, overrides and isolates (U+061C, U+200E/U+200F,
# U+202A-U+202E, U+2066-U+2069), with which `UPB/RPi_1` and a stranger's name look alike.
_UNREPRESENTABLE = re.compile(r'[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]|\\$|\\[",=]')

# ISO 8601 extended format as devices send it: date, `T` or a space, time with optional
# fractional seconds (up to nanoseconds, kept), optional `Z` or ±hh:mm / ±hhmm / ±hh offset.
# ASCII digits only: `\d` would accept other scripts' digits.
_ISO_RE = re.compile(
    r"^(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})[Tt ]"
    r"(?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:[.,](?P<frac>[0-9]{1,9}))?)?"
    r"(?P<tz>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?$"
)

# The shape almost every device sends (UTC, seconds, optional fraction): a subset of _ISO_RE
# whose date, hour and minute are converted once per minute (_minute_seconds).
_ISO_UTC_RE = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}):([0-9]{2})(?:[.,]([0-9]{1,9}))?[Zz]?"
)

# InfluxDB 1.x stores int64 nanoseconds; these are the bounds it accepts (1677-09-21 .. 2262-04-11).
INFLUX_MIN_NS = -9_223_372_036_854_775_806
INFLUX_MAX_NS = 9_223_372_036_854_775_806

# Numeric timestamps at or above this are epoch milliseconds, below it epoch seconds
# (1e11 s is the year 5138; 1e11 ms is 1973-03-03).
EPOCH_MS_THRESHOLD = 100_000_000_000

TIMESTAMP_KEY = "timestamp"
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Limits:
    """What one message may hold, and how many series may exist: the same for MQTT and HTTP.

    Every bound is a documented setting (docs/adapter.md, Configuration); lengths count
    characters. The defaults leave room for any real device while keeping a hostile
    message's cost small: at most `max_points_per_message` lines of bounded length.
    """

    max_message_bytes: int = 256 * 1024
    max_location_length: int = 128
    max_station_length: int = 128
    max_key_length: int = 128
    max_keys_per_object: int = 1000
    max_backlog_elements: int = 1000
    max_points_per_message: int = 10_000
    max_series_per_device: int = 1000
    max_series: int = 200_000


DEFAULT_LIMITS = Limits()


class Reject(StrEnum):
    """Why a message (or one element of a backlog array) was not stored at all."""

    BAD_TOPIC = "bad_topic"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    BAD_TIMESTAMP = "bad_timestamp"
    TOO_LARGE = "too_large"
    LOCATION_TOO_LONG = "location_too_long"
    STATION_TOO_LONG = "station_too_long"
    TOO_MANY_ELEMENTS = "too_many_elements"
    TOO_MANY_POINTS = "too_many_points"
    TOO_MANY_KEYS = "too_many_keys"


class Ignore(StrEnum):
    """Why one key of an otherwise valid message was not stored (never an error)."""

    NOT_NUMERIC = "not_numeric"
    NOT_FINITE = "not_finite"
    BAD_NAME = "bad_name"
    KEY_TOO_LONG = "key_too_long"


class Drop(StrEnum):
    """Why a valid point was not stored: a series budget, or InfluxDB refused it for good."""

    DEVICE_SERIES_BUDGET = "device_series_budget"
    SERIES_BUDGET = "series_budget"
    TYPE_CONFLICT = "type_conflict"
    UNPARSABLE = "unparsable"
    MAX_VALUES_PER_TAG = "max_values_per_tag"
    MAX_SERIES_PER_DATABASE = "max_series_per_database"
    BODY_TOO_LARGE = "body_too_large"
    REFUSED = "refused"


class Point(NamedTuple):
    """One stored value: measurement `<station>.<metric>`, tags location/station.

    A named tuple rather than a frozen dataclass: as immutable, and built several times faster
    (a message makes one per value)."""

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


# Names and topics up to this many characters have their verdicts cached (a fleet sends the
# same few over and over); the caches hold at most NAME_CACHE_SIZE of each, so a stranger
# inventing names only cycles them.
CACHED_NAME_CHARS = 300
NAME_CACHE_SIZE = 8192


def valid_name(name: str) -> bool:
    """Whether `name` may be a location, a station or a metric key: not empty, storable as it
    is in InfluxDB, and shown as it is. The HTTP API applies the same rule to its names."""
    if len(name) <= CACHED_NAME_CHARS:
        return _valid_name_cached(name)
    return _valid_name(name)


def _valid_name(name: str) -> bool:
    return bool(name) and not _UNREPRESENTABLE.search(name)


_valid_name_cached = functools.lru_cache(maxsize=NAME_CACHE_SIZE)(_valid_name)


def split_topic(topic: str) -> tuple[str, str] | None:
    """`UPB/RPi_1` → ("UPB", "RPi_1"); None for any topic outside the contract."""
    if len(topic) <= CACHED_NAME_CHARS:
        return _split_topic_cached(topic)
    return _split_topic(topic)


def _split_topic(topic: str) -> tuple[str, str] | None:
    if not TOPIC_RE.match(topic):
        return None
    location, station = topic.split("/")
    if not valid_name(location) or not valid_name(station):
        return None
    return location, station


_split_topic_cached = functools.lru_cache(maxsize=NAME_CACHE_SIZE)(_split_topic)


def _reject_constant(token: str) -> Any:
    # Python's json accepts NaN/Infinity/-Infinity; RFC 8259 does not.
    raise ValueError(f"{token} is not valid JSON")


# One decoder for every message: `json.loads(..., parse_constant=...)` would build a new one
# per call, a tenth of a small message's cost.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode_json(payload: bytes | str) -> Any:
    """`json.loads(payload, parse_constant=_reject_constant)`, step for step: the same
    encodings (UTF-8/16/32 detected as json does), the same errors (all ValueErrors)."""
    if isinstance(payload, str):
        if payload.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", payload, 0)
        return _DECODER.decode(payload)
    return _DECODER.decode(payload.decode(json.detect_encoding(payload), "surrogatepass"))


def _epoch_ns_from_parts(m: re.Match[str]) -> int:
    y, mo, d, h, mi, s, frac, tz = m.groups()
    hour, minute, second = int(h), int(mi), int(s or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise TimestampError("no such time of day")
    seconds = _date_seconds(y, mo, d) + hour * 3600 + minute * 60 + second
    if tz and tz not in ("Z", "z"):
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        off_h, off_m = int(digits[:2]), int(digits[2:] or 0)
        if off_h > 23 or off_m > 59:
            raise TimestampError("no such UTC offset")
        seconds -= sign * (off_h * 3600 + off_m * 60)
    return seconds * NS_PER_S + (int(frac.ljust(9, "0")) if frac else 0)


# A fleet's timestamps share a few dates: each is checked and converted once (a hostile
# device's invented dates only cycle the bounded cache).
@functools.lru_cache(maxsize=1024)
def _date_seconds(y: str, mo: str, d: str) -> int:
    """An ISO date's digits → seconds from 1970-01-01 to its midnight, or TimestampError."""
    year, month, day = int(y), int(mo), int(d)
    if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year or 1, month)[1]):
        raise TimestampError("no such date")
    return _days_from_civil(year, month, day) * 86_400


@functools.lru_cache(maxsize=4096)
def _minute_seconds(minute: str) -> int | None:
    """`2026-12-01T03:04` → seconds from the epoch to that UTC minute; None if no such minute."""
    hour, mins = int(minute[11:13]), int(minute[14:16])
    if hour > 23 or mins > 59:
        return None
    try:
        return _date_seconds(minute[:4], minute[5:7], minute[8:10]) + hour * 3600 + mins * 60
    except TimestampError:
        return None


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
        fast = _ISO_UTC_RE.fullmatch(raw)
        minute = None if fast is None else _minute_seconds(fast[1])
        if minute is not None and (second := int(fast[2])) <= 59:  # type: ignore[index]
            frac = fast[3]  # type: ignore[index]
            ns = (minute + second) * NS_PER_S + (int(frac.ljust(9, "0")) if frac else 0)
        else:  # any other shape, and every error (its message comes from here)
            m = _ISO_RE.match(raw)
            if m is None:
                raise TimestampError(f"not an ISO 8601 date-time: {raw!r}")
            ns = _epoch_ns_from_parts(m)
    elif type(raw) is int:
        ns = raw * (1_000_000 if raw >= EPOCH_MS_THRESHOLD else NS_PER_S)
    elif type(raw) is float:
        # repr() is the shortest text that round-trips, i.e. the digits the device sent,
        # so Decimal keeps sub-microsecond precision that float arithmetic would lose.
        try:
            exact = Decimal(repr(raw))
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


def parse_record(
    location: str, station: str, obj: Any, received_ns: int, limits: Limits = DEFAULT_LIMITS
) -> Record:
    """One JSON value that should be a flat object → its points (or why not)."""
    record = Record()
    if not isinstance(obj, dict):
        record.reject = Reject.NOT_OBJECT
        record.reject_detail = f"payload is a JSON {type(obj).__name__}, not an object"
        return record
    keys = len(obj) - (TIMESTAMP_KEY in obj)
    if keys > limits.max_keys_per_object:
        record.reject = Reject.TOO_MANY_KEYS
        record.reject_detail = f"{keys} keys, at most {limits.max_keys_per_object} (MAX_KEYS_PER_OBJECT)"
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
    max_key = limits.max_key_length
    # Keys are short: straight to the cached verdict (valid_name's length test is this one).
    valid_key = _valid_name_cached if max_key <= CACHED_NAME_CHARS else valid_name
    for key, raw_value in obj.items():
        if key == TIMESTAMP_KEY:
            continue
        value = _numeric(raw_value)
        if isinstance(value, Ignore):
            record.ignored.append((key, value))
        elif len(key) > max_key:
            record.ignored.append((key, Ignore.KEY_TOO_LONG))
        elif not valid_key(key):
            record.ignored.append((key, Ignore.BAD_NAME))
        else:
            points.append(Point(location, station, key, value, time_ns))
    return record


def check_topic(topic: str, limits: Limits = DEFAULT_LIMITS) -> tuple[str, str] | Reject:
    """A topic → (location, station), or why the contract refuses it."""
    parts = split_topic(topic)
    if parts is None:
        return Reject.BAD_TOPIC
    location, station = parts
    if len(location) > limits.max_location_length:
        return Reject.LOCATION_TOO_LONG
    if len(station) > limits.max_station_length:
        return Reject.STATION_TOO_LONG
    return parts


def parse_message(
    topic: str, payload: bytes, received_ns: int, limits: Limits = DEFAULT_LIMITS
) -> ParsedMessage | Reject:
    """A whole message → the records it holds, or the reason it is rejected outright.

    A top-level JSON array is a backlog: each element is handled as one message. The cheap
    checks (topic, sizes) come first, so a hostile message costs little before it is refused.
    """
    parts = check_topic(topic, limits)
    if isinstance(parts, Reject):
        return parts
    if len(payload) > limits.max_message_bytes:
        return Reject.TOO_LARGE
    try:
        doc = decode_json(payload)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return Reject.NOT_JSON
    location, station = parts
    elements: Iterable[Any] = doc if isinstance(doc, list) else (doc,)
    if isinstance(doc, list) and len(doc) > limits.max_backlog_elements:
        return Reject.TOO_MANY_ELEMENTS
    records = []
    points = 0
    for element in elements:
        record = parse_record(location, station, element, received_ns, limits)
        points += len(record.points)
        if points > limits.max_points_per_message:
            return Reject.TOO_MANY_POINTS
        records.append(record)
    return ParsedMessage(location, station, records)


# --- Series budget ----------------------------------------------------------------------

# A stored series is one (location, station, metric): measurement `<station>.<metric>` with
# its two tags. Series InfluxDB holds that this platform did not write have no device.
SeriesId = tuple[str | None, str | None, str]


class SeriesBudget:
    """Which series exist, and whether a point may create a new one.

    A device (location, station) may have at most `per_device` series and the database at
    most `total`; a point of a known series is always admitted, so a device past its budget
    keeps its known series flowing and only its new metrics are refused. Thread-safe: the
    message path admits while `reload` (fed from InfluxDB) replaces what is known.
    """

    def __init__(self, per_device: int, total: int) -> None:
        self.per_device = per_device
        self.total = total
        self._devices: dict[tuple[str, str], set[str]] = {}
        self._count = 0
        self._lock = threading.Lock()
        # Series admitted while a reload reads InfluxDB: they may not be in what it reads.
        self._admitted_meanwhile: list[tuple[tuple[str, str], str]] | None = None

    @property
    def count(self) -> int:
        """Series known (stored, or admitted and about to be)."""
        return self._count

    def admit(self, parsed: ParsedMessage, all_or_nothing: bool = False) -> list[tuple[str, Drop]]:
        """Admit `parsed`'s points; those that would create a series past a budget are removed
        from it and returned with the budget that refused them (usually none).

        With `all_or_nothing` (the HTTP API's rule), a message with any refused point is
        left as it is and admits no new series.
        """
        device = (parsed.location, parsed.station)
        with self._lock:
            known = self._devices.get(device, ())
            new: set[str] = set()
            refused: list[tuple[str, Drop]] = []
            for record in parsed.records:
                # The usual case, a device sending the metrics it always sends: one set
                # lookup per point and nothing else.
                for point in record.points:
                    if point.metric not in known:
                        break
                else:
                    continue
                for point in record.points:
                    metric = point.metric
                    if metric in known or metric in new:
                        continue
                    if len(known) + len(new) >= self.per_device:
                        refused.append((metric, Drop.DEVICE_SERIES_BUDGET))
                    elif self._count + len(new) >= self.total:
                        refused.append((metric, Drop.SERIES_BUDGET))
                    else:
                        new.add(metric)
            if refused and all_or_nothing:
                return refused
            if refused:
                for record in parsed.records:
                    record.points = [p for p in record.points if p.metric in known or p.metric in new]
            if new:
                self._devices.setdefault(device, set()).update(new)
                self._count += len(new)
                if self._admitted_meanwhile is not None:
                    self._admitted_meanwhile.extend((device, metric) for metric in new)
        return refused

    def knows(self, location: str, station: str, metric: str) -> bool:
        with self._lock:
            return metric in self._devices.get((location, station), ())

    def reload(self, series: Iterable[SeriesId]) -> None:
        """Replace what is known with `series` (what InfluxDB holds), keeping every series
        admitted while they were being read. An error from `series` leaves everything as it was."""
        with self._lock:
            self._admitted_meanwhile = []
        devices: dict[tuple[str, str], set[str]] = {}
        foreign = 0
        try:
            for location, station, metric in series:
                if location is None or station is None:
                    foreign += 1
                else:
                    devices.setdefault((location, station), set()).add(metric)
        except BaseException:
            with self._lock:
                self._admitted_meanwhile = None
            raise
        with self._lock:
            for device, metric in self._admitted_meanwhile or ():
                devices.setdefault(device, set()).add(metric)
            self._admitted_meanwhile = None
            self._devices = devices
            self._count = foreign + sum(len(metrics) for metrics in devices.values())


def series_of(measurement: str, tags: dict[str, str]) -> SeriesId:
    """An InfluxDB series (measurement, tags) → the device and metric it stores."""
    location, station = tags.get("location"), tags.get("station")
    if location is None or station is None or not measurement.startswith(f"{station}."):
        return None, None, measurement
    return location, station, measurement[len(station) + 1 :]


# --- InfluxDB line protocol -------------------------------------------------------------

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_TAG_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\="})


def series_prefix(location: str, station: str, metric: str) -> str:
    """A series' line up to its value: escaped measurement and tags, and `value=`."""
    measurement = f"{station}.{metric}".translate(_MEASUREMENT_ESCAPES)
    return (
        f"{measurement},location={location.translate(_TAG_ESCAPES)},"
        f"station={station.translate(_TAG_ESCAPES)} value="
    )


def line_protocol(point: Point) -> str:
    """One point as an InfluxDB line; `value` is always written as a float field."""
    # repr(float) round-trips exactly and is a valid line-protocol float (e.g. 99.0, 1e-07).
    return f"{series_prefix(point.location, point.station, point.metric)}{point.value!r} {point.time_ns}"


class LineEncoder:
    """`line_protocol` for a stream of points, each series' prefix formatted once.

    Escaping and formatting the measurement and tags is most of a line's cost and the same
    for every point of a series. At most `max_series` prefixes are kept (the series budget
    bounds how many series are written; past it, the memory starts again from empty).
    Not thread-safe: one message path uses one encoder.
    """

    def __init__(self, max_series: int) -> None:
        self._max_series = max_series
        self._devices: dict[tuple[str, str], dict[str, str]] = {}
        self._count = 0

    def __len__(self) -> int:
        """Prefixes held."""
        return self._count

    def lines(self, location: str, station: str, points: list[Point]) -> list[str]:
        """The lines of `points`, all of device (location, station)."""
        prefixes = self._devices.get((location, station))
        if prefixes is None:
            if self._count >= self._max_series:
                self._devices.clear()
                self._count = 0
            prefixes = self._devices[location, station] = {}
        out = []
        for point in points:
            prefix = prefixes.get(point.metric)
            if prefix is None:
                if self._count >= self._max_series:
                    prefixes.clear()
                    self._devices = {(location, station): prefixes}
                    self._count = 0
                prefix = prefixes[point.metric] = series_prefix(location, station, point.metric)
                self._count += 1
            out.append(f"{prefix}{point.value!r} {point.time_ns}")
        return out
