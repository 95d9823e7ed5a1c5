"""The message contract as pure functions: timestamps, numbers, names, line protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from adapter.contract import (
    Drop,
    Ignore,
    Limits,
    LineEncoder,
    ParsedMessage,
    Point,
    Reject,
    SeriesBudget,
    SeriesId,
    TimestampError,
    line_protocol,
    parse_message,
    parse_timestamp,
    series_of,
    split_topic,
)

S = 1_000_000_000


@pytest.mark.parametrize(
    ("raw", "expected_ns"),
    [
        ("2019-11-26T03:54:20+03:00", 1574729660 * S),
        ("2019-11-26T00:54:20Z", 1574729660 * S),
        ("2019-11-26T00:54:20z", 1574729660 * S),
        ("2019-11-26 00:54:20", 1574729660 * S),  # naive means UTC
        ("2019-11-26T00:54", 1574729640 * S),
        ("2019-11-26T00:54:20.5Z", 1574729660 * S + 500_000_000),
        ("2019-11-26T00:54:20.123456789Z", 1574729660 * S + 123_456_789),
        ("2019-11-26T00:54:20,25Z", 1574729660 * S + 250_000_000),
        ("2019-11-26t00:54:20.000Z", 1574729660 * S),
        ("2019-11-26T00:54:59.999Z", 1574729699 * S + 999_000_000),
        ("2019-11-26T06:24:20+0530", 1574729660 * S),
        ("2019-11-25T21:54:20-03", 1574729660 * S),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59Z", -S),
        ("2020-02-29T00:00:00Z", 1582934400 * S),
        (1574729660, 1574729660 * S),
        (1574729660.25, 1574729660 * S + 250_000_000),
        (1574729660123, 1574729660 * S + 123_000_000),  # ≥ 1e11: milliseconds
        (9_000_000_000, 9_000_000_000 * S),  # below the threshold: seconds (year 2255)
        (100_000_000_000, 100_000_000 * S),
        (0, 0),
        (-86400, -86400 * S),
    ],
)
def test_timestamp_forms(raw: object, expected_ns: int) -> None:
    assert parse_timestamp(raw) == expected_ns


@pytest.mark.parametrize(
    "raw",
    [
        "2019-11-26T03:54:20\u221203:00",  # U+2212 MINUS SIGN, as copied from a PDF
        "2019-11-26",  # a date is not an instant
        "2019-02-29T00:00:00Z",  # not a leap year
        "2019-11-26T24:00:00Z",
        "2019-11-26T23:59:60Z",
        "2019-11-26T23:60:00.000Z",
        "2019-02-29T12:00:00.500Z",
        "2019-11-26T00:54:20.1234567890Z",  # beyond nanoseconds
        "2019-11-26T00:54:20.Z",
        "2019-13-01T00:00:00Z",
        "2019-11-26T03:54:20+24:00",
        "26/11/2019 03:54",
        "1574729660",  # a number in a string is neither form
        "\u0662\u0660\u0661\u0669-11-26T00:00:00Z",  # Arabic-Indic digits
        "",
        "2300-01-01T00:00:00Z",  # after InfluxDB's last instant
        "1600-01-01T00:00:00Z",  # before its first
        99_999_999_999,  # seconds, in the year 5138
        10**21,
        True,
        None,
        [],
        {},
    ],
)
def test_timestamp_rejects(raw: object) -> None:
    with pytest.raises(TimestampError):
        parse_timestamp(raw)
    with pytest.raises(TimestampError):  # the date and minute caches remember refusals too
        parse_timestamp(raw)


def test_timestamps_of_one_minute_share_its_conversion_exactly() -> None:
    minute = parse_timestamp("2026-12-01T03:04:00Z")
    for second in range(60):
        assert parse_timestamp(f"2026-12-01T03:04:{second:02d}.5Z") == minute + second * S + S // 2


@pytest.mark.parametrize(
    ("topic", "parts"),
    [
        ("UPB/RPi_1", ("UPB", "RPi_1")),
        ('Loc one,x=y/St "2"', ("Loc one,x=y", 'St "2"')),
        ("Bucureşti/Stație", ("Bucureşti", "Stație")),
        ("UPB", None),
        ("UPB/RPi_1/x", None),
        ("/RPi_1", None),
        ("UPB/", None),
        ("/", None),
        ("", None),
        ("UP\nB/RPi", None),
        ("UPB\\/RPi", None),
        ("UPB/a\\b", ("UPB", "a\\b")),  # a backslash before an ordinary letter is kept
        ("UPB/a\\ b", ("UPB", "a\\ b")),
        ('UPB/st\\"x', None),  # InfluxDB would read `\"`, `\,` and `\=` as escapes
        ("UPB/st\\,x", None),
        ("UP\\=B/st", None),
    ],
)
def test_split_topic(topic: str, parts: tuple[str, str] | None) -> None:
    assert split_topic(topic) == parts


def test_numbers_are_floats_and_non_numbers_are_ignored() -> None:
    msg = parse_message(
        "L/S",
        b'{"i": 25, "f": 25.3, "b": true, "s": "OK", "n": null, "o": {"x": 1}, "a": [1],'
        b' "huge": 1e400, "bigint": ' + b"9" * 400 + b', "neg": -1e-7, "bad\\\\": 1, "": 2}',
        7,
    )
    assert isinstance(msg, ParsedMessage)
    (record,) = msg.records
    assert [(p.metric, p.value) for p in record.points] == [("i", 25.0), ("f", 25.3), ("neg", -1e-7)]
    assert all(type(p.value) is float and p.time_ns == 7 for p in record.points)
    assert dict(record.ignored) == {
        "b": Ignore.NOT_NUMERIC,
        "s": Ignore.NOT_NUMERIC,
        "n": Ignore.NOT_NUMERIC,
        "o": Ignore.NOT_NUMERIC,
        "a": Ignore.NOT_NUMERIC,
        "huge": Ignore.NOT_FINITE,
        "bigint": Ignore.NOT_FINITE,
        "bad\\": Ignore.BAD_NAME,
        "": Ignore.BAD_NAME,
    }


@pytest.mark.parametrize(
    ("payload", "reject"),
    [
        (b"", Reject.NOT_JSON),
        (b"hello", Reject.NOT_JSON),
        (b'{"a": NaN}', Reject.NOT_JSON),
        (b'{"a": Infinity}', Reject.NOT_JSON),
        (b'{"a": -Infinity}', Reject.NOT_JSON),
        (b"\xff\xfe{}", Reject.NOT_JSON),
        (b'{"a": 1', Reject.NOT_JSON),
        (b"[" * 100_000 + b"]" * 100_000, Reject.NOT_JSON),  # too deep for the parser
    ],
)
def test_whole_message_rejects(payload: bytes, reject: Reject) -> None:
    assert parse_message("L/S", payload, 0) is reject


def test_size_limit_counts_bytes() -> None:
    assert parse_message("L/S", b'{"a": 1}', 0, Limits(max_message_bytes=7)) is Reject.TOO_LARGE
    assert isinstance(parse_message("L/S", b'{"a": 1}', 0, Limits(max_message_bytes=8)), ParsedMessage)


def test_backlog_array_elements_are_separate_messages() -> None:
    msg = parse_message(
        "L/S", b'[{"v": 1, "timestamp": 10}, {"v": 2, "timestamp": "x"}, 3, {"v": 4}]', 99 * S
    )
    assert isinstance(msg, ParsedMessage)
    assert [r.reject for r in msg.records] == [None, Reject.BAD_TIMESTAMP, Reject.NOT_OBJECT, None]
    assert [(p.value, p.time_ns) for p in msg.points] == [(1.0, 10 * S), (4.0, 99 * S)]


@pytest.mark.parametrize(
    ("point", "line"),
    [
        (Point("UPB", "RPi_1", "BAT", 99.0, 1), "RPi_1.BAT,location=UPB,station=RPi_1 value=99.0 1"),
        (
            Point("a b", "c,d", "e=f g", 1e-07, -5),
            r"c\,d.e=f\ g,location=a\ b,station=c\,d value=1e-07 -5",
        ),
        (Point("x=y", 'q"t', "m", 1e20, 0), r'q"t.m,location=x\=y,station=q"t value=1e+20 0'),
    ],
)
def test_line_protocol_escaping(point: Point, line: str) -> None:
    assert line_protocol(point) == line
    encoder = LineEncoder(max_series=10)
    # The second time from the series' cached prefix.
    assert encoder.lines(point.location, point.station, [point, point]) == [line, line]


def test_line_encoder_keeps_at_most_max_series_prefixes_and_stays_exact() -> None:
    encoder = LineEncoder(max_series=3)
    for round_ in range(3):
        for device in range(4):
            points = [Point("L", f"S{device}", metric, float(round_), round_) for metric in ("a", "b")]
            assert encoder.lines("L", f"S{device}", points) == [line_protocol(p) for p in points]
            assert len(encoder) <= 3


# --- limits: every bound refuses what exceeds it, and only that -------------------------

SMALL = Limits(
    max_message_bytes=4096,
    max_location_length=8,
    max_station_length=10,
    max_key_length=6,
    max_keys_per_object=4,
    max_backlog_elements=3,
    max_points_per_message=7,
)


def _obj(keys: int, prefix: str = "k") -> dict[str, object]:
    return {f"{prefix}{i}": i for i in range(keys)}


@pytest.mark.parametrize(
    ("topic", "payload", "outcome"),
    [
        ("L" * 8 + "/S", {"v": 1}, 1),
        ("L" * 9 + "/S", {"v": 1}, Reject.LOCATION_TOO_LONG),
        ("L/" + "S" * 10, {"v": 1}, 1),
        ("L/" + "S" * 11, {"v": 1}, Reject.STATION_TOO_LONG),
        ("L/" + "Ş" * 11, {"v": 1}, Reject.STATION_TOO_LONG),  # characters, not bytes
        ("L" * 20_000 + "/S", _obj(10), Reject.LOCATION_TOO_LONG),  # before the payload is parsed
        ("L/S", _obj(4), 4),
        ("L/S", {**_obj(4), "timestamp": 1}, 4),  # the timestamp is not a key of data
        ("L/S", [_obj(3), _obj(2)], 5),
        ("L/S", [{"v": 1}] * 3, 3),
        ("L/S", [{"v": 1}] * 4, Reject.TOO_MANY_ELEMENTS),
        ("L/S", [_obj(4), _obj(3)], 7),
        ("L/S", [_obj(4), _obj(4)], Reject.TOO_MANY_POINTS),  # counted over the whole message
        ("L/S", [_obj(4), {"s": "x", "t": "y"}, _obj(3)], 7),  # only numbers are points
    ],
)
def test_message_limits(topic: str, payload: object, outcome: int | Reject) -> None:
    result = parse_message(topic, json.dumps(payload).encode(), 0, SMALL)
    if isinstance(outcome, Reject):
        assert result is outcome
    else:
        assert isinstance(result, ParsedMessage)
        assert len(result.points) == outcome
        assert not result.rejected


def test_too_many_keys_rejects_only_that_element() -> None:
    msg = parse_message("L/S", json.dumps([_obj(5), {"v": 1}]).encode(), 0, SMALL)
    assert isinstance(msg, ParsedMessage)
    assert [r.reject for r in msg.records] == [Reject.TOO_MANY_KEYS, None]
    assert "5 keys" in msg.records[0].reject_detail
    assert [p.metric for p in msg.points] == ["v"]


def test_key_length_is_a_per_key_limit() -> None:
    msg = parse_message("L/S", json.dumps({"abcdef": 1, "abcdefg": 2, "Ţ" * 7: 3}).encode(), 0, SMALL)
    assert isinstance(msg, ParsedMessage)
    assert [p.metric for p in msg.points] == ["abcdef"]
    assert msg.records[0].ignored == [("abcdefg", Ignore.KEY_TOO_LONG), ("Ţ" * 7, Ignore.KEY_TOO_LONG)]


# U+2028/U+2029 would start a new line where names are shown; bidirectional controls make a
# stranger's name look like another device's; C1 controls (NEL U+0085) end lines too.
DISGUISING = ["\u2028", "\u2029", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067"]
DISGUISING += ["\u2068", "\u2069", "\u200e", "\u200f", "\u061c", "\u0085", "\u009b"]


@pytest.mark.parametrize("char", DISGUISING, ids=[f"U+{ord(c):04X}" for c in DISGUISING])
def test_separators_and_bidi_controls_are_refused_in_every_name(char: str) -> None:
    assert split_topic(f"UPB{char}/RPi_1") is None
    assert split_topic(f"UPB/RPi{char}_1") is None
    msg = parse_message("UPB/RPi_1", json.dumps({f"BAT{char}": 1, "ok": 2}).encode(), 0)
    assert isinstance(msg, ParsedMessage)
    assert [p.metric for p in msg.points] == ["ok"]
    assert msg.records[0].ignored == [(f"BAT{char}", Ignore.BAD_NAME)]


@pytest.mark.parametrize("name", ["Stație", "温度", "Ω-meter", "a\u200db", "emoji😀"])
def test_ordinary_letters_and_joiners_are_names(name: str) -> None:
    assert split_topic(f"Loc/{name}") == ("Loc", name)


# --- series budget ----------------------------------------------------------------------


def _msg(station: str, *metrics: str, location: str = "L") -> ParsedMessage:
    parsed = parse_message(f"{location}/{station}", json.dumps(dict.fromkeys(metrics, 1)).encode(), 0)
    assert isinstance(parsed, ParsedMessage)
    return parsed


def test_device_over_its_budget_keeps_its_known_series() -> None:
    budget = SeriesBudget(per_device=3, total=100)
    assert budget.admit(_msg("S", "a", "b")) == []
    first = _msg("S", "a", "c", "d", "e")
    assert budget.admit(first) == [("d", Drop.DEVICE_SERIES_BUDGET), ("e", Drop.DEVICE_SERIES_BUDGET)]
    assert [p.metric for p in first.points] == ["a", "c"]
    known = _msg("S", "c", "b", "a", "z")
    assert budget.admit(known) == [("z", Drop.DEVICE_SERIES_BUDGET)]
    assert [p.metric for p in known.points] == ["c", "b", "a"]
    # Another device, or the same station elsewhere, has a budget of its own.
    assert budget.admit(_msg("T", "x", "y", "z")) == []
    assert budget.admit(_msg("S", "p", "q", "r", location="M")) == []
    assert budget.count == 9


def test_total_budget_refuses_new_series_of_every_device() -> None:
    budget = SeriesBudget(per_device=10, total=4)
    assert budget.admit(_msg("A", "a", "b", "c")) == []
    late = _msg("B", "x", "y")
    assert budget.admit(late) == [("y", Drop.SERIES_BUDGET)]
    assert [p.metric for p in late.points] == ["x"]
    again = _msg("A", "a", "new")
    assert budget.admit(again) == [("new", Drop.SERIES_BUDGET)]
    assert [p.metric for p in again.points] == ["a"]
    assert budget.count == 4


def test_all_or_nothing_admits_nothing_when_one_point_is_refused() -> None:
    budget = SeriesBudget(per_device=2, total=100)
    budget.admit(_msg("S", "a"))
    msg = _msg("S", "a", "b", "c")
    assert budget.admit(msg, all_or_nothing=True) == [("c", Drop.DEVICE_SERIES_BUDGET)]
    assert [p.metric for p in msg.points] == ["a", "b", "c"]  # left as it was
    assert not budget.knows("L", "S", "b")
    assert budget.admit(_msg("S", "b"), all_or_nothing=True) == []
    assert budget.knows("L", "S", "b") and budget.count == 2


def test_reload_replaces_the_known_series_and_keeps_those_admitted_meanwhile() -> None:
    budget = SeriesBudget(per_device=5, total=100)
    budget.admit(_msg("Old", "gone"))

    def stored() -> Iterator[SeriesId]:
        yield ("L", "S", "a")
        yield (None, None, "someone_elses_measurement")
        # A message handled while InfluxDB's series are being read.
        budget.admit(_msg("S", "b"))
        yield ("L", "S", "c")

    budget.reload(stored())
    assert budget.count == 4
    assert budget.knows("L", "S", "a") and budget.knows("L", "S", "b") and budget.knows("L", "S", "c")
    assert not budget.knows("L", "Old", "gone")


def test_failed_reload_changes_nothing() -> None:
    budget = SeriesBudget(per_device=5, total=100)
    budget.admit(_msg("S", "a"))

    def broken() -> Iterator[SeriesId]:
        yield ("L", "S", "x")
        raise ConnectionError("InfluxDB went away")

    with pytest.raises(ConnectionError):
        budget.reload(broken())
    assert budget.count == 1 and budget.knows("L", "S", "a") and not budget.knows("L", "S", "x")
    budget.admit(_msg("S", "b"))
    budget.reload(iter([("L", "S", "a")]))
    assert budget.count == 1  # nothing recorded from the failed reload leaks into this one


@pytest.mark.parametrize(
    ("measurement", "tags", "series"),
    [
        ("RPi_1.BAT", {"location": "UPB", "station": "RPi_1"}, ("UPB", "RPi_1", "BAT")),
        ("a.b.c", {"location": "L", "station": "a.b"}, ("L", "a.b", "c")),
        ("a.b.c", {"location": "L", "station": "a"}, ("L", "a", "b.c")),
        ("cpu", {"host": "x"}, (None, None, "cpu")),
        ("Other.x", {"location": "L", "station": "S"}, (None, None, "Other.x")),
    ],
)
def test_series_of(measurement: str, tags: dict[str, str], series: SeriesId) -> None:
    assert series_of(measurement, tags) == series
