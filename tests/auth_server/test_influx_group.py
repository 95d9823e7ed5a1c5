"""The data API's group commit (auth_server.influx.GroupWriter) over a real InfluxDB: requests
written together still get their own answers, and nothing is written twice or lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from auth_server.influx import GroupWriter, InfluxClient, InfluxRejectedError, InfluxUnavailableError
from tests.conftest import _track
from tests.servers import InfluxServer, free_port


def line(station: str, value: float | str, t: int) -> str:
    field = f'"{value}"' if isinstance(value, str) else repr(value)
    return f"{station}.temp,location=group,station={station} value={field} {t}"


class Recorder:
    """The client's own write, recording each group's size, held at a gate when asked to."""

    def __init__(self, client: InfluxClient) -> None:
        self.client = client
        self.groups: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, lines: Sequence[str]) -> None:
        self.groups.append(len(lines))
        self.gate.wait(30)
        self.client._write_now(lines)


def run_all(calls: list[Callable[[], None]]) -> list[Exception | None]:
    outcome: list[Exception | None] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            calls[index]()
        except Exception as exc:  # each call's own outcome is the point
            outcome[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a write never returned"
    return outcome


def wait_queued(writer: GroupWriter, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(writer._queue) < count:
        assert time.monotonic() < deadline, f"{len(writer._queue)} of {count} writes queued"
        time.sleep(0.01)


def hold(writer: GroupWriter, recorder: Recorder, lines: list[str]) -> threading.Thread:
    """A write started and held at the recorder's gate (the group in flight), as a thread."""
    recorder.gate.clear()
    leader = threading.Thread(target=writer.write, args=(lines,))
    leader.start()
    deadline = time.monotonic() + 30
    while not recorder.groups:
        assert time.monotonic() < deadline, "the first write never reached InfluxDB"
        time.sleep(0.01)
    return leader


def behind_a_held_write(
    writer: GroupWriter, recorder: Recorder, first: list[str], calls: list[Callable[[], None]]
) -> list[Exception | None]:
    """`calls` queued while a first write is held at InfluxDB, then released: their outcomes."""
    leader = hold(writer, recorder, first)
    done: list[list[Exception | None]] = []
    runner = threading.Thread(target=lambda: done.append(run_all(calls)))
    runner.start()
    wait_queued(writer, len(calls))
    recorder.gate.set()
    runner.join(60)
    leader.join(60)
    assert done, "the queued writes never returned"
    return done[0]


@pytest.fixture
def client(influx: InfluxServer, database: str) -> InfluxClient:
    influx.query(f'DROP DATABASE "{database}"')
    influx.query(f'CREATE DATABASE "{database}"')
    return InfluxClient("127.0.0.1", influx.port, database, timeout_s=5)


def test_concurrent_writes_go_in_groups_and_are_all_stored(
    influx: InfluxServer, database: str, client: InfluxClient
) -> None:
    recorder = Recorder(client)
    writer = GroupWriter(recorder, wait_s=30)
    # While the first write is held at InfluxDB, 40 requests of 1-3 lines each queue.
    calls = [
        (lambda i=i: writer.write([line(f"s{i}", float(n), 1000 + n) for n in range(1 + i % 3)]))
        for i in range(1, 41)
    ]
    assert behind_a_held_write(writer, recorder, [line("s0", 1.0, 1)], calls) == [None] * 40
    expected = 1 + sum(1 + i % 3 for i in range(1, 41))
    # Two requests to InfluxDB for 41 writes: the held one, then all that queued behind it.
    assert recorder.groups == [1, expected - 1]
    assert influx.count_points(database) == expected
    assert not writer._queue and not writer._writing


def test_a_group_is_bounded_by_lines(client: InfluxClient) -> None:
    recorder = Recorder(client)
    writer = GroupWriter(recorder, wait_s=30, max_lines=10)
    calls = [(lambda i=i: writer.write([line(f"b{i}", float(n), n) for n in range(4)])) for i in range(1, 7)]
    assert behind_a_held_write(writer, recorder, [line("b0", 1.0, 1)], calls) == [None] * 6
    # 6 writes of 4 lines with at most 10 lines per group: groups of 2 writes.
    assert recorder.groups == [1, 8, 8, 8]


def test_a_refused_write_fails_alone(influx: InfluxServer, database: str, client: InfluxClient) -> None:
    client.write_lines([line("typed", 1.0, 1)])  # the field is a float from now on
    recorder = Recorder(client)
    writer = GroupWriter(recorder, wait_s=30)
    good = [(lambda i=i: writer.write([line(f"r{i}", 2.0, 5), line(f"r{i}", 3.0, 6)])) for i in range(1, 6)]
    bad = lambda: writer.write([line("r9", 1.0, 7), line("typed", "text", 8)])  # noqa: E731
    outcome = behind_a_held_write(writer, recorder, [line("r0", 1.0, 1)], [*good[:3], bad, *good[3:]])
    assert outcome[:3] == [None] * 3 and outcome[4:] == [None] * 2
    assert isinstance(outcome[3], InfluxRejectedError)
    # The group, refused, was written again request by request.
    assert recorder.groups == [1, 12, 2, 2, 2, 2, 2, 2]
    counts = influx.series('SELECT count("value") FROM /.*/', database)
    stored = {s["name"]: s["values"][0][1] for s in counts}
    assert stored == {"r0.temp": 1, **{f"r{i}.temp": 2 for i in range(1, 6)}, "r9.temp": 1, "typed.temp": 1}


def test_influxdb_down_fails_every_waiting_write() -> None:
    client = InfluxClient("127.0.0.1", free_port(), "nowhere", timeout_s=2)
    outcome = run_all([(lambda i=i: client.write_lines([line(f"d{i}", 1.0, i)])) for i in range(20)])
    assert all(isinstance(exc, InfluxUnavailableError) for exc in outcome), outcome
    assert not client._group._queue and not client._group._writing


def test_a_write_not_taken_in_time_leaves_unwritten(
    influx: InfluxServer, database: str, client: InfluxClient
) -> None:
    recorder = Recorder(client)
    writer = GroupWriter(recorder, wait_s=0.5)
    first = hold(writer, recorder, [line("w0", 1.0, 1)])
    outcome = run_all([lambda: writer.write([line("late", 1.0, 2)])])
    recorder.gate.set()
    first.join(60)
    assert isinstance(outcome[0], InfluxUnavailableError)
    assert recorder.groups == [1]
    assert influx.count_points(database) == 1
    writer.write([line("after", 1.0, 3)])  # the writer is not stuck
    assert influx.count_points(database) == 2


def test_a_write_that_breaks_fails_the_whole_group(client: InfluxClient) -> None:
    """Not only InfluxDB's answers: whatever stops a group's write, none of its requests is
    answered as stored."""
    recorder = Recorder(client)

    def write(lines: Sequence[str]) -> None:
        recorder(lines)
        if len(lines) > 1:  # the group of four breaks; the first write, alone, does not
            raise RuntimeError("stopped mid-write")

    writer = GroupWriter(write, wait_s=30)
    calls = [(lambda i=i: writer.write([line(f"x{i}", 1.0, i)])) for i in range(1, 5)]
    outcome = behind_a_held_write(writer, recorder, [line("x0", 1.0, 1)], calls)
    assert recorder.groups == [1, 4]
    assert len(outcome) == 4
    # The leader of the broken group sees the error itself; the others are told it failed.
    assert all(isinstance(exc, (RuntimeError, InfluxUnavailableError)) for exc in outcome), outcome
    assert not writer._queue and not writer._writing


def test_writes_go_on_after_an_influxdb_restart(tmp_path: Path) -> None:
    """The kept-alive write connections die with InfluxDB: the first write after it is back
    goes through on a new connection instead of failing on the dead one."""
    own = InfluxServer(tmp_path / "influxd")  # restarted here: not the session's
    own.start()
    _track(own)
    client = InfluxClient("127.0.0.1", own.port, "restarted", timeout_s=5)
    writes = [(lambda i=i: client.write_lines([line(f"r{i}", 1.0, i)])) for i in range(8)]
    assert run_all(writes) == [None] * 8  # several connections opened and kept
    own.stop()
    with pytest.raises(InfluxUnavailableError):
        client.write_lines([line("down", 1.0, 1)])
    own.start()
    again = [(lambda i=i: client.write_lines([line(f"r{i}", 2.0, 100 + i)])) for i in range(8)]
    assert run_all(again) == [None] * 8
    counted = own.series('SELECT count("value") FROM /^r[0-9]\\.temp$/', "restarted")
    assert sum(int(s["values"][0][1]) for s in counted) == 16
    own.stop()
