"""The account check of every request (auth_server.store.AccountReader) on a real MariaDB:
requests in flight at once read their accounts in one query, each gets its own account, and
none gets a row read before it arrived (an account disabled a moment before is refused)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from auth_server.policy import Account
from auth_server.store import AccountReader
from tests.auth_server.conftest import Api, Sql


class HeldReader(AccountReader):
    """The real reader, its groups recorded; the first group's round trip can be held, either
    before its query goes to MySQL or after its answer came back (`hold_after_query`)."""

    def __init__(self, app: Flask, hold_after_query: bool = False) -> None:
        super().__init__(app.extensions["mysql_pool"])
        self.groups: list[list[int]] = []
        self.held = threading.Event()
        self.release = threading.Event()
        self._after = hold_after_query

    def _run(self, group: list) -> None:  # type: ignore[type-arg]
        first = not self.groups
        self.groups.append(sorted(pending.item for pending in group))
        if first and not self._after:
            self.held.set()
            self.release.wait(30)
        super()._run(group)
        if first and self._after:
            self.held.set()
            self.release.wait(30)


def ids(sql: Sql, *usernames: str) -> list[int]:
    rows = sql("SELECT id, username FROM accounts")
    by_name = {r["username"]: int(r["id"]) for r in rows}
    return [by_name[name] for name in usernames]


@pytest.fixture
def devices(api: Api, sql: Sql) -> list[int]:
    for n in range(6):
        api.device(f"r-dev{n}", ("L", f"S{n}", True, n % 2 == 0))
    return ids(sql, *(f"r-dev{n}" for n in range(6)))


class Gets:
    """reader.get(id) in threads, results by thread."""

    def __init__(self, reader: AccountReader) -> None:
        self.reader = reader
        self.results: dict[int, Account | None] = {}
        self.threads: list[threading.Thread] = []

    def start(self, account_id: int) -> int:
        index = len(self.threads)
        thread = threading.Thread(target=lambda: self.results.__setitem__(index, self.reader.get(account_id)))
        thread.start()
        self.threads.append(thread)
        return index

    def join(self) -> None:
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive()


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def held(app: Flask) -> Iterator[Callable[..., HeldReader]]:
    readers: list[HeldReader] = []

    def make(**kwargs: bool) -> HeldReader:
        readers.append(HeldReader(app, **kwargs))
        return readers[-1]

    yield make
    for reader in readers:
        reader.release.set()


def test_requests_in_flight_share_one_query_and_each_gets_its_own_account(
    held: Callable[..., HeldReader], devices: list[int], sql: Sql
) -> None:
    reader = held()
    gets = Gets(reader)
    first = gets.start(devices[0])
    assert reader.held.wait(10)
    # Arriving while the first query is in flight: they queue, and go as one query next.
    queued = [gets.start(account_id) for account_id in [*devices[1:], devices[1], 10**9]]
    wait_for(lambda: len(reader._queue) == len(queued))
    reader.release.set()
    gets.join()
    assert reader.groups == [[devices[0]], sorted([*devices[1:], devices[1], 10**9])]
    account = gets.results[first]
    assert account is not None and account.username == "r-dev0"
    for index, account_id in zip(queued, [*devices[1:], devices[1]], strict=False):
        account = gets.results[index]
        assert account is not None and account.id == account_id
        n = devices.index(account_id)
        assert account.username == f"r-dev{n}"
        assert [(p.location, p.station, p.read, p.write) for p in account.permissions] == [
            ("L", f"S{n}", True, n % 2 == 0)
        ]
    assert gets.results[queued[-1]] is None  # no such account
    assert not reader._queue and not reader._writing


def test_a_request_arriving_after_a_change_never_takes_an_older_read(
    held: Callable[..., HeldReader], devices: list[int], sql: Sql
) -> None:
    reader = held(hold_after_query=True)
    gets = Gets(reader)
    before = gets.start(devices[2])
    assert reader.held.wait(10)  # its query answered: the account enabled, not yet handed out
    sql("UPDATE accounts SET enabled = FALSE WHERE id = %s", (devices[2],))
    after = gets.start(devices[2])
    wait_for(lambda: len(reader._queue) == 1)
    reader.release.set()
    gets.join()
    first, second = gets.results[before], gets.results[after]
    assert first is not None and first.enabled  # read before the change: it arrived before it
    assert second is not None and not second.enabled
    assert reader.groups == [[devices[2]], [devices[2]]]
