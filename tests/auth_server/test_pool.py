"""The MySQL connection pool (auth_server.db.ConnectionPool) against a real MariaDB: both kinds of
connection (transactions, autocommit reads) count against one bound, and none goes back to the
pool with a transaction open."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Gauge

from auth_server.config import AuthConfig
from auth_server.db import Connection, ConnectionPool
from tests.auth_server.conftest import Sql

SIZE = 3


@pytest.fixture
def pool(settings: dict[str, str]) -> Iterator[ConnectionPool]:
    gauge = Gauge("pool_connections", "test", ["state"], registry=CollectorRegistry())
    pool = ConnectionPool(
        AuthConfig.from_env(settings), SIZE, gauge.labels(state="in_use"), gauge.labels(state="idle")
    )
    yield pool
    pool.close()


def server_connections(sql: Sql, database: str) -> int:
    rows = sql("SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE DB = %s", (database,))
    return int(rows[0]["n"]) - 1  # less the test's own


def connection_id(conn: Connection) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID() AS id")
        return int(cur.fetchone()["id"])


def test_both_kinds_share_one_bound(pool: ConnectionPool, sql: Sql, mysql_database: str) -> None:
    readers = [pool.acquire(autocommit=True) for _ in range(SIZE)]
    for conn in readers:
        assert conn.get_autocommit()
        pool.release(conn)
    assert server_connections(sql, mysql_database) == SIZE
    # The pool is full of idle readers: a transaction connection replaces one of them.
    writers = [pool.acquire() for _ in range(2)]
    assert not any(conn.get_autocommit() for conn in writers)
    assert server_connections(sql, mysql_database) == SIZE
    for conn in writers:
        pool.release(conn)
    again = pool.acquire(autocommit=True)
    assert again.get_autocommit()
    pool.release(again)
    assert server_connections(sql, mysql_database) == SIZE


def test_connections_are_reused_by_kind(pool: ConnectionPool) -> None:
    reader = pool.acquire(autocommit=True)
    reader_id = connection_id(reader)
    pool.release(reader)
    writer = pool.acquire()
    writer_id = connection_id(writer)
    pool.release(writer)
    assert writer_id != reader_id
    reader = pool.acquire(autocommit=True)
    writer = pool.acquire()
    assert (connection_id(reader), connection_id(writer)) == (reader_id, writer_id)
    pool.release(reader)
    pool.release(writer)


@pytest.mark.parametrize("autocommit", [False, True])
def test_no_transaction_outlives_its_request(pool: ConnectionPool, sql: Sql, autocommit: bool) -> None:
    sql("CREATE TABLE pool_probe (n INT)")
    conn = pool.acquire(autocommit=autocommit)
    conn.begin()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO pool_probe VALUES (1)")
    pool.release(conn)  # given back mid-transaction, as a failed request does
    again = pool.acquire(autocommit=autocommit)
    with again.cursor() as cur:
        cur.execute("SELECT COUNT(*) AS n FROM pool_probe")
        assert cur.fetchone()["n"] == 0
    pool.release(again)
    assert sql("SELECT COUNT(*) AS n FROM pool_probe")[0]["n"] == 0
