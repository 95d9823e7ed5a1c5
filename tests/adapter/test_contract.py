"""The message contract as pure functions: timestamps, numbers, names, line protocol."""

from __future__ import annotations

import pytest

from adapter.contract import (
    Ignore,
    Limits,
    ParsedMessage,
    Point,
    Reject,
    TimestampError,
    line_protocol,
    parse_message,
    parse_timestamp,
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
