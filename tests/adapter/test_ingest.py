"""The real adapter between a real Mosquitto and a real InfluxDB: what gets stored, exactly."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.mqtt_client import Publisher
from tests.servers import AdapterProcess, InfluxServer, MosquittoServer, wait_for

S = 1_000_000_000
T0 = 1_574_729_660  # 2019-11-26T00:54:20Z
SIZE_LIMIT = 4096


def test_spec_examples(
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
    publisher: Publisher,
) -> None:
    make_adapter(broker, influx, database)
    before = time.time_ns()
    publisher.publish(
        "UPB/RPi_1",
        '{"BAT": 99, "HUMID": 40, "PRJ": "SPRC", "TMP": 25.3, "status": "OK",'
        ' "timestamp": "2019-11-26T03:54:20+03:00"}',
    )
    publisher.publish("Dorinel/Zeus", '{"Alarm": 0, "AQI": 12, "RSSI": 1500}')
    publisher.wait()
    wait_for(lambda: influx.count_points(database) >= 6, 10, "6 points stored")
    after = time.time_ns()

    rows = {
        s["name"]: s["values"] for s in influx.series('SELECT "value", location, station FROM /.*/', database)
    }
    assert rows.keys() == {"RPi_1.BAT", "RPi_1.HUMID", "RPi_1.TMP", "Zeus.Alarm", "Zeus.AQI", "Zeus.RSSI"}
    assert rows["RPi_1.BAT"] == [[T0 * S, 99.0, "UPB", "RPi_1"]]
    assert rows["RPi_1.HUMID"] == [[T0 * S, 40.0, "UPB", "RPi_1"]]
    assert rows["RPi_1.TMP"] == [[T0 * S, 25.3, "UPB", "RPi_1"]]
    zeus = [rows[f"Zeus.{m}"][0] for m in ("Alarm", "AQI", "RSSI")]
    assert [(v, loc, st) for _, v, loc, st in zeus] == [
        (0.0, "Dorinel", "Zeus"),
        (12.0, "Dorinel", "Zeus"),
        (1500.0, "Dorinel", "Zeus"),
    ]
    # Receive time: the same instant for the three values, within the test's window.
    assert len({t for t, *_ in zeus}) == 1 and before <= zeus[0][0] <= after
    # Every stored value is a float field, so `25` after `25.3` can never conflict.
    types = influx.series("SHOW FIELD KEYS", database)
    assert {s["values"][0][1] for s in types} == {"float"}


# --- a table of bad and tricky inputs, all through one adapter --------------------------

NOW = object()  # marker: stored at the adapter's receive time


@dataclass
class Case:
    id: str
    topic: str
    payload: bytes
    # measurement → [(value, time_ns or NOW)], location/station tags checked when given.
    stored: dict[str, list[tuple[float, object]]] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    tags: tuple[str, str] | None = None


def _j(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


CASES = [
    Case("topic-one-level", "UPB", b'{"v": 1}', rejected={"bad_topic": 1}),
    Case("topic-three-levels", "UPB/RPi_1/x", b'{"v": 1}', rejected={"bad_topic": 1}),
    Case("topic-empty-location", "/RPi_1", b'{"v": 1}', rejected={"bad_topic": 1}),
    Case("topic-empty-station", "UPB/", b'{"v": 1}', rejected={"bad_topic": 1}),
    Case("topic-double-slash", "UPB//RPi_1", b'{"v": 1}', rejected={"bad_topic": 1}),
    Case("topic-trailing-backslash", "T/c06\\", b'{"v": 1}', rejected={"bad_topic": 1}),
    Case("not-json", "T/c07", b"BAT=99", rejected={"not_json": 1}),
    Case("empty-payload", "T/c08", b"", rejected={"not_json": 1}),
    Case("invalid-utf8", "T/c09", b'{"v": 1, "\xff": 2}', rejected={"not_json": 1}),
    Case("nan-token", "T/c10", b'{"v": NaN, "w": 1}', rejected={"not_json": 1}),
    Case("infinity-token", "T/c11", b'{"v": Infinity, "w": 1}', rejected={"not_json": 1}),
    Case("minus-infinity-token", "T/c12", b'{"v": -Infinity, "w": 1}', rejected={"not_json": 1}),
    Case("json-string", "T/c13", b'"99"', rejected={"not_object": 1}),
    Case("json-number", "T/c14", b"99", rejected={"not_object": 1}),
    Case("json-null", "T/c15", b"null", rejected={"not_object": 1}),
    Case("array-of-numbers", "T/c16", b"[1, 2]", rejected={"not_object": 2}),
    Case(
        "non-numeric-values-ignored",
        "T/c17",
        _j({"s": "25", "b": True, "f": False, "n": None, "v": 5, "timestamp": T0}),
        stored={"c17.v": [(5.0, T0 * S)]},
    ),
    Case(
        "nested-values-ignored",
        "T/c18",
        _j({"o": {"x": 1}, "l": [1, 2], "v": 1.5, "timestamp": T0}),
        stored={"c18.v": [(1.5, T0 * S)]},
    ),
    Case(
        "unicode-minus-timestamp",
        "T/c19",
        _j({"v": 1, "timestamp": "2019-11-26T03:54:20\u221203:00"}),
        rejected={"bad_timestamp": 1},
    ),
    Case("bool-timestamp", "T/c20", _j({"v": 1, "timestamp": True}), rejected={"bad_timestamp": 1}),
    Case(
        "timestamp-out-of-range",
        "T/c21",
        _j({"v": 1, "timestamp": "2300-01-01T00:00:00Z"}),
        rejected={"bad_timestamp": 1},
    ),
    Case(
        "timestamp-no-such-day",
        "T/c22",
        _j({"v": 1, "timestamp": "2019-02-30T00:00:00Z"}),
        rejected={"bad_timestamp": 1},
    ),
    Case("epoch-seconds", "T/c23", _j({"v": 1, "timestamp": T0}), stored={"c23.v": [(1.0, T0 * S)]}),
    Case(
        "epoch-milliseconds",
        "T/c24",
        _j({"v": 1, "timestamp": T0 * 1000 + 123}),
        stored={"c24.v": [(1.0, T0 * S + 123_000_000)]},
    ),
    Case(
        "epoch-fractional-seconds",
        "T/c25",
        b'{"v": 1, "timestamp": 1574729660.000001}',
        stored={"c25.v": [(1.0, T0 * S + 1000)]},
    ),
    Case(
        "naive-iso-is-utc",
        "T/c26",
        _j({"v": 1, "timestamp": "2019-11-26T00:54:20"}),
        stored={"c26.v": [(1.0, T0 * S)]},
    ),
    Case(
        "zulu-iso",
        "T/c27",
        _j({"v": 1, "timestamp": "2019-11-26T00:54:20Z"}),
        stored={"c27.v": [(1.0, T0 * S)]},
    ),
    Case(
        "space-separator-nanoseconds",
        "T/c28",
        _j({"v": 1, "timestamp": "2019-11-26 02:54:20.123456789+02:00"}),
        stored={"c28.v": [(1.0, T0 * S + 123_456_789)]},
    ),
    Case(
        "int-after-float-same-series",
        "T/c29",
        b'[{"x": 25.3, "timestamp": 1574729660}, {"x": 25, "timestamp": 1574729661}]',
        stored={"c29.x": [(25.3, T0 * S), (25.0, (T0 + 1) * S)]},
    ),
    Case(
        "keys-with-special-characters",
        "T/c30",
        _j({"a b": 1, "c,d": 2, "e=f": 3, 'g"h': 4, "i'j": 5, "timestamp": T0}),
        stored={
            "c30.a b": [(1.0, T0 * S)],
            "c30.c,d": [(2.0, T0 * S)],
            "c30.e=f": [(3.0, T0 * S)],
            'c30.g"h': [(4.0, T0 * S)],
            "c30.i'j": [(5.0, T0 * S)],
        },
    ),
    Case(
        "topic-with-special-characters",
        'Loc one,x=y/St "31"',
        _j({"v": 1, "timestamp": T0}),
        stored={'St "31".v': [(1.0, T0 * S)]},
        tags=("Loc one,x=y", 'St "31"'),
    ),
    Case(
        "non-ascii-letters",
        "Bucureşti/Stație32",
        _j({"Temperatură": 21.5, "timestamp": T0}),
        stored={"Stație32.Temperatură": [(21.5, T0 * S)]},
        tags=("Bucureşti", "Stație32"),
    ),
    Case("over-size-limit", "T/c33", _j({"v": 1, "pad": "x" * SIZE_LIMIT}), rejected={"too_large": 1}),
    Case(
        "backlog-array",
        "T/c34",
        _j([{"v": 1, "timestamp": T0}, {"v": 2, "timestamp": T0 + 60}]),
        stored={"c34.v": [(1.0, T0 * S), (2.0, (T0 + 60) * S)]},
    ),
    Case(
        "backlog-with-bad-elements",
        "T/c35",
        _j([{"v": 1, "timestamp": T0}, {"v": 2, "timestamp": "yesterday"}, 7, {"v": 3, "timestamp": T0 + 1}]),
        stored={"c35.v": [(1.0, T0 * S), (3.0, (T0 + 1) * S)]},
        rejected={"bad_timestamp": 1, "not_object": 1},
    ),
    Case(
        "no-timestamp-is-receive-time",
        "T/c36",
        _j({"v": -3.5}),
        stored={"c36.v": [(-3.5, NOW)]},
    ),
    Case(
        "huge-numbers-ignored",
        "T/c37",
        b'{"inf": 1e400, "big": ' + b"9" * 400 + b', "ok": 1e20, "tiny": -1e-7, "timestamp": 1574729660}',
        stored={"c37.ok": [(1e20, T0 * S)], "c37.tiny": [(-1e-7, T0 * S)]},
    ),
    Case(
        "unrepresentable-key-ignored",
        "T/c38",
        _j({"bad\\": 1, "new\nline": 2, "": 3, "ok": 4, 'q\\"r': 5, "e\\=f": 6, "a\\b": 7, "timestamp": T0}),
        stored={"c38.ok": [(4.0, T0 * S)], "c38.a\\b": [(7.0, T0 * S)]},
    ),
    Case("only-timestamp", "T/c39", _j({"timestamp": T0})),
    Case("empty-object", "T/c40", b"{}"),
    Case(
        "numeric-string-timestamp", "T/c41", _j({"v": 1, "timestamp": str(T0)}), rejected={"bad_timestamp": 1}
    ),
]


@dataclass
class Ingested:
    influx: InfluxServer
    database: str
    adapter: AdapterProcess
    window: tuple[int, int]
    sentinels: int
    rows: dict[str, list[list]]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, influx: InfluxServer) -> Iterator[Ingested]:
    """Publish every case, each followed by a valid sentinel message, through one adapter."""
    root: Path = tmp_path_factory.mktemp("table")
    broker = MosquittoServer(root / "mosquitto")
    broker.start()
    database = "t_table"
    adapter = AdapterProcess(root / "adapter", broker, influx, database, MAX_MESSAGE_BYTES=str(SIZE_LIMIT))
    adapter.start()
    publisher = Publisher(broker.port)
    before = time.time_ns()
    for i, case in enumerate(CASES):
        publisher.publish(case.topic, case.payload)
        publisher.publish("Sentinel/S", _j({"n": i, "timestamp": T0 + i}))
    publisher.wait()
    try:
        wait_for(
            lambda: (
                adapter.metric("adapter_messages_received_total") >= 2 * len(CASES)
                and adapter.metric("adapter_unacked_messages") == 0
            ),
            30,
            "the adapter to take every message",
        )
        rows = {
            s["name"]: s["values"]
            for s in influx.series('SELECT "value", location, station FROM /.*/', database)
        }
        yield Ingested(influx, database, adapter, (before, time.time_ns()), len(CASES), rows)
    finally:
        publisher.close()
        adapter.stop()
        broker.stop()


def test_adapter_survived_and_stored_every_sentinel(ingested: Ingested) -> None:
    assert ingested.adapter.proc is not None and ingested.adapter.proc.poll() is None
    rows = ingested.influx.series('SELECT "value" FROM "S.n"', ingested.database)
    assert [v for _, v in rows[0]["values"]] == [float(i) for i in range(ingested.sentinels)]


def test_rejections_are_counted_by_reason(ingested: Ingested) -> None:
    expected: dict[str, int] = {}
    for case in CASES:
        for reason, n in case.rejected.items():
            expected[reason] = expected.get(reason, 0) + n
    for reason, n in expected.items():
        assert ingested.adapter.metric("adapter_messages_rejected_total", reason=reason) == n, reason


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_outcome(ingested: Ingested, case: Case) -> None:
    station = case.topic.split("/")[-1]
    stored = {name: rows for name, rows in ingested.rows.items() if name.startswith(f"{station}.")}
    assert stored.keys() == case.stored.keys()
    lo, hi = ingested.window
    for name, expected in case.stored.items():
        rows = stored[name]
        assert [v for _, v, _, _ in rows] == [v for v, _ in expected]
        for (t, _, location, station_tag), (_, want_t) in zip(rows, expected, strict=True):
            if want_t is NOW:
                assert lo <= t <= hi
            else:
                assert t == want_t
            if case.tags:
                assert (location, station_tag) == case.tags


def test_no_type_conflicts(ingested: Ingested) -> None:
    fields = ingested.influx.series("SHOW FIELD KEYS", ingested.database)
    assert {row[1] for s in fields for row in s["values"]} == {"float"}
