"""InfluxWriter against a real influxd with small limits: each kind of refusal, as InfluxDB words it.

Every case checks the count the writer reports against what InfluxDB really stored, so a
misread answer (the `dropped=0` of a partial write with unparsable lines) cannot pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapter.contract import Drop, SeriesBudget
from adapter.influx import DatabaseMissingError, InfluxWriter, SeriesBudgetKeeper, TransientWriteError
from tests.servers import InfluxServer

MAX_VALUES_PER_TAG = 5
MAX_SERIES_PER_DATABASE = 30
MAX_BODY_SIZE = 200_000


@pytest.fixture(scope="module")
def strict_influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    server = InfluxServer(
        tmp_path_factory.mktemp("strict-influxd"),
        data_options=(
            f"  max-values-per-tag = {MAX_VALUES_PER_TAG}\n"
            f"  max-series-per-database = {MAX_SERIES_PER_DATABASE}"
        ),
        http_options=f"  max-body-size = {MAX_BODY_SIZE}",
    )
    server.start()
    yield server
    server.stop()


def line(station: str, metric: str = "v", value: str = "1.0", t: int = 1, location: str = "L") -> str:
    return f"{station}.{metric},location={location},station={station} value={value} {t}"


@dataclass
class Case:
    id: str
    lines: list[str]
    written: int
    refused: tuple[tuple[Drop, int], ...] = ()
    # Written first, so that the case's lines meet an existing state.
    setup: list[str] = field(default_factory=list)
    too_large: bool = False
    # What InfluxDB really stored, when its answer does not say (default: `written`).
    stored: int | None = None


CASES = [
    Case("all-stored", [line("a", t=i) for i in range(10)], 10),
    Case(
        "type-conflict",
        [line("c", t=2), line("ok", t=2), line("c", t=3)],
        1,
        ((Drop.TYPE_CONFLICT, 2),),
        setup=[line("c", value='"text"', t=1)],
    ),
    Case(
        "some-lines-unparsable",
        [line("ok", t=5), "bad line here", line("ok", t=6), "another bad"],
        2,
        ((Drop.UNPARSABLE, 2),),
    ),
    Case("no-line-parsable", ["bad line", "worse"], 0, ((Drop.UNPARSABLE, 2),)),
    Case(
        "key-over-64-KiB",
        [line("ok", t=1), line("k", metric="x" * 70_000), line("ok", t=2)],
        2,
        ((Drop.UNPARSABLE, 1),),
    ),
    Case(
        "max-values-per-tag",
        [line("m", t=1, location=f"new{i}") for i in range(2)] + [line("ok")],
        1,
        ((Drop.MAX_VALUES_PER_TAG, 2),),
        setup=[line("m", location=f"old{i}") for i in range(MAX_VALUES_PER_TAG)],
    ),
    # Past the limit InfluxDB refuses every new series of the write, even those that would fit.
    Case(
        "max-series-per-database",
        [line(f"n{i}") for i in range(4)] + [line("s0", t=2)],
        1,
        ((Drop.MAX_SERIES_PER_DATABASE, 4),),
        setup=[line(f"s{i}") for i in range(MAX_SERIES_PER_DATABASE - 1)],
    ),
    Case(
        "body-too-large",
        [line("big", t=i) for i in range(MAX_BODY_SIZE // 30)],
        0,
        ((Drop.BODY_TOO_LARGE, MAX_BODY_SIZE // 30),),
        too_large=True,
    ),
    # InfluxDB reports only the refused points when a write also has unparsable lines: the
    # writer counts what the answer says, and the adapter bisects to count each line.
    Case(
        "unparsable-and-conflict",
        ["bad line", line("c", t=9), line("ok", t=9), line("ok", t=10)],
        3,
        ((Drop.TYPE_CONFLICT, 1),),
        setup=[line("c", value='"text"', t=1)],
        stored=2,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_write_outcome(strict_influx: InfluxServer, case: Case) -> None:
    database = f"w_{case.id.replace('-', '_')}"
    strict_influx.query(f'DROP DATABASE "{database}"')
    strict_influx.query(f'CREATE DATABASE "{database}"')
    if case.setup:
        for i in range(0, len(case.setup), 10):
            assert strict_influx.write(database, "\n".join(case.setup[i : i + 10])).status_code == 204
    measurements = sorted({x.split(",")[0] for x in case.lines if "," in x and len(x) < 1000})

    def stored() -> int:
        # One measurement at a time: over /.*/ InfluxDB skips a measurement whose `value` has
        # another type than the others'.
        return sum(
            int(row[1])
            for m in measurements
            for s in strict_influx.series(f'SELECT count("value") FROM "{m}"', database)
            for row in s["values"]
        )

    before = stored()
    writer = InfluxWriter("127.0.0.1", strict_influx.port, database)
    try:
        result = writer.write_lines(case.lines)
    finally:
        writer.close()
    assert result.refused == case.refused, result.error
    assert result.written == case.written
    assert result.too_large is case.too_large
    if case.refused:
        assert result.error  # what InfluxDB said, for the log
    assert stored() - before == (case.written if case.stored is None else case.stored)


def test_missing_database_is_its_own_error(strict_influx: InfluxServer) -> None:
    writer = InfluxWriter("127.0.0.1", strict_influx.port, "no_such_database")
    with pytest.raises(DatabaseMissingError):
        writer.write_lines([line("a")])


def test_unreachable_influxdb_is_transient(tmp_path: Path) -> None:
    server = InfluxServer(tmp_path / "gone")  # a free port nobody listens on
    writer = InfluxWriter("127.0.0.1", server.port, "x", timeout_s=2)
    with pytest.raises(TransientWriteError):
        writer.write_lines([line("a")])
    with pytest.raises(TransientWriteError):
        list(writer.series(10))


def test_series_are_read_back_as_devices_and_metrics(strict_influx: InfluxServer) -> None:
    database = "w_series"
    strict_influx.query(f'DROP DATABASE "{database}"')
    strict_influx.query(f'CREATE DATABASE "{database}"')
    lines = [
        r"St\ x\,y.a\ b=c,location=L\ 1\,\=z,station=St\ x\,y value=1",
        "RPi_1.BAT,location=UPB,station=RPi_1 value=1",
        "RPi_1.TEMP,location=UPB,station=RPi_1 value=1",
        "cpu,host=h value=1",
    ]
    assert strict_influx.write(database, "\n".join(lines)).status_code == 204
    writer = InfluxWriter("127.0.0.1", strict_influx.port, database)
    expected = [("L 1,=z", "St x,y", "a b=c"), ("UPB", "RPi_1", "BAT"), ("UPB", "RPi_1", "TEMP")]
    assert sorted(writer.series(100), key=str) == sorted([*expected, (None, None, "cpu")], key=str)
    assert len(list(writer.series(2))) == 2  # bounded work: at most what the budget allows
    assert list(InfluxWriter("127.0.0.1", strict_influx.port, "w_missing").series(10)) == []

    keeper = SeriesBudgetKeeper(SeriesBudget(per_device=2, total=100), writer, refresh_s=0)
    keeper.ensure_fresh()
    assert keeper.budget.count == 4
    assert keeper.budget.knows("UPB", "RPi_1", "TEMP")


class HeldReader(InfluxWriter):
    """The real reader, its series read held at a gate when asked to."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.gate.set()
        self.reads = 0

    def series(self, limit: int) -> Iterator[tuple[str | None, str | None, str]]:
        self.reads += 1
        assert self.gate.wait(30)
        return super().series(limit)


def test_a_refresh_of_the_series_budget_keeps_no_caller_waiting(strict_influx: InfluxServer) -> None:
    database = "w_refresh"
    strict_influx.query(f'DROP DATABASE "{database}"')
    strict_influx.query(f'CREATE DATABASE "{database}"')
    assert strict_influx.write(database, "RPi_1.BAT,location=UPB,station=RPi_1 value=1").status_code == 204
    reader = HeldReader("127.0.0.1", strict_influx.port, database)
    keeper = SeriesBudgetKeeper(SeriesBudget(per_device=5, total=100), reader, refresh_s=0.05)
    keeper.ensure_fresh()  # the first read: the caller waits for it
    assert keeper.budget.count == 1

    assert strict_influx.write(database, "RPi_1.TEMP,location=UPB,station=RPi_1 value=1").status_code == 204
    reader.gate.clear()
    time.sleep(0.1)  # stale now
    keeper.ensure_fresh()  # returns with the refresh held at InfluxDB
    keeper.ensure_fresh()  # one refresh at a time
    deadline = time.monotonic() + 10
    while reader.reads < 2:
        assert time.monotonic() < deadline, "no refresh started"
        time.sleep(0.01)
    assert reader.reads == 2 and keeper.budget.count == 1  # the callers went on with the old budget
    reader.gate.set()
    while keeper.budget.count < 2:
        assert time.monotonic() < deadline, "the refresh never finished"
        time.sleep(0.01)
    assert keeper.budget.knows("UPB", "RPi_1", "TEMP")
