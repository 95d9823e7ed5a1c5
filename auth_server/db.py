"""MySQL connections: a bounded pool per worker (PyMySQL), the schema applied at start, readiness waits."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from importlib import resources

import pymysql
import pymysql.cursors
from flask import Flask, current_app, g
from prometheus_client import Gauge
from pymysql.constants import SERVER_STATUS

from auth_server.config import AuthConfig
from auth_server.metrics import AuthMetrics

log = logging.getLogger(__name__)

Connection = pymysql.connections.Connection


class DatabaseUnavailableError(RuntimeError):
    """MySQL could not be reached (within the start-up timeout, or for this request)."""


def connect(config: AuthConfig, autocommit: bool = False) -> Connection:
    """A new connection: explicit transactions (unless `autocommit`), dict rows, UTC
    timestamps, bounded waits."""
    return pymysql.connect(
        host=config.mysql_host,
        port=config.mysql_port,
        user=config.mysql_user,
        password=config.mysql_password,
        database=config.mysql_database,
        charset="utf8mb4",
        autocommit=autocommit,
        cursorclass=pymysql.cursors.DictCursor,
        init_command="SET time_zone = '+00:00'",
        connect_timeout=5,
        read_timeout=30,
        write_timeout=30,
    )


# How long a request waits for one of the pool's connections before it is answered 503: the
# server holds far more requests at once (AUTH_MAX_CONNECTIONS) than MySQL accepts connections
# (151 by default, shared with phpMyAdmin and other replicas).
CONNECTION_WAIT_S = 10.0

# MySQL client errors that mean the connection is gone (server down, restarted, network cut).
CONNECTION_LOST_CODES = frozenset({2003, 2006, 2013, 2055})
# The accounts database or its tables are gone (dropped, or a restore under way): a pooled
# connection still opens, but nothing can be served until they are back.
DATABASE_MISSING_CODES = frozenset({1049, 1146})


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` says the MySQL connection (not the statement) failed."""
    if isinstance(exc, pymysql.err.InterfaceError):  # used after PyMySQL closed it
        return True
    return _code(exc) in CONNECTION_LOST_CODES


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the account database cannot serve now (rather than a bug)."""
    return connection_lost(exc) or _code(exc) in DATABASE_MISSING_CODES


def _code(exc: BaseException) -> int | None:
    if isinstance(exc, pymysql.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def _closed_by_server(conn: Connection) -> bool:
    """Whether an idle connection was closed by the server (restart, wait_timeout, a kill):
    its socket then reads as ready (EOF, or an error packet before it). One poll, no round trip."""
    sock = conn._sock  # PyMySQL has no liveness check without a round trip
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class ConnectionPool:
    """The MySQL connections of one process, reused from request to request (opening one costs
    tens of milliseconds: TCP, the login handshake, and PyMySQL's TLS context). At most `size`
    exist at once; a request that finds none free waits up to CONNECTION_WAIT_S for one.

    Two kinds are kept: connections with explicit transactions (the default), and autocommit
    ones for single statements that read (store.AccountReader). Both count against `size`: a new
    connection of one kind closes an idle one of the other when the pool is full.

    A connection goes back to the pool with no transaction open (a request's snapshot or locks
    never reach the next request), and is dropped instead when it failed, so a MySQL restart
    costs one new connection per pooled one, not a server restart. Gevent-safe: under
    `python -m auth_server` threading's semaphore is gevent's, and nothing here blocks outside
    PyMySQL's (patched) sockets.
    """

    def __init__(self, config: AuthConfig, size: int, in_use: Gauge, idle: Gauge) -> None:
        self.config = config
        self.size = size
        self._in_use, self._idle_gauge = in_use, idle
        self._reset()

    def _reset(self) -> None:
        # A forked worker starts with a pool of its own: the parent's sockets are not ours.
        self._pid = os.getpid()
        self._slots = threading.BoundedSemaphore(self.size)
        self._busy = 0
        self._idle: dict[bool, list[Connection]] = {False: [], True: []}  # by autocommit
        self._in_use.set(0)
        self._idle_gauge.set(0)

    def acquire(self, autocommit: bool = False) -> Connection:
        if self._pid != os.getpid():
            self._reset()
        if not self._slots.acquire(timeout=CONNECTION_WAIT_S):
            raise DatabaseUnavailableError(f"all {self.size} MySQL connections of this worker are busy")
        try:
            conn = self._take_idle(autocommit) or self._connect(autocommit)
        except pymysql.err.OperationalError as exc:
            self._slots.release()
            raise DatabaseUnavailableError(f"cannot connect to MySQL: {exc.args[-1]}") from exc
        except BaseException:
            self._slots.release()
            raise
        self._busy += 1
        self._in_use.inc()
        return conn

    def _take_idle(self, autocommit: bool) -> Connection | None:
        idle = self._idle[autocommit]
        while idle:
            conn = idle.pop()  # the most recently used: warm, least likely timed out
            self._idle_gauge.dec()
            if not _closed_by_server(conn):
                return conn
            log.info("MySQL closed an idle connection (restart or wait_timeout); opening another")
            _close_quietly(conn)
        return None

    def _connect(self, autocommit: bool) -> Connection:
        other = self._idle[not autocommit]
        if other and self._busy + len(other) >= self.size:
            self._idle_gauge.dec()
            _close_quietly(other.pop(0))  # the least recently used
        return connect(self.config, autocommit)

    def release(self, conn: Connection) -> None:
        self._busy -= 1
        self._in_use.dec()
        autocommit = bool(conn.autocommit_mode)
        try:
            # Without autocommit, always: PyMySQL does not track a transaction a SELECT opened,
            # and its snapshot and metadata locks must not outlive the request (a stale
            # snapshot would hide an account's revocation; the locks block DDL). With it, only
            # an explicit transaction left open needs ending: the server's status says so.
            in_transaction = conn.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS
            if conn.open and (not autocommit or in_transaction):
                conn.rollback()
        except pymysql.MySQLError:
            _close_quietly(conn)
        else:
            if conn.open and self._pid == os.getpid():
                self._idle[autocommit].append(conn)
                self._idle_gauge.inc()
            else:
                _close_quietly(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections (those in use are closed when they come back)."""
        for idle in self._idle.values():
            while idle:
                self._idle_gauge.dec()
                _close_quietly(idle.pop())


def _close_quietly(conn: Connection) -> None:
    with contextlib.suppress(pymysql.MySQLError):
        conn.close()


def get_db() -> Connection:
    """The connection of the current request, taken from the pool on first use."""
    if "db" not in g:
        pool: ConnectionPool = current_app.extensions["mysql_pool"]
        g.db = pool.acquire()
    return g.db


def close_db(_error: BaseException | None = None) -> None:
    """Give the request's connection back (get_db takes another if it needs one again)."""
    db = g.pop("db", None)
    if db is not None:
        current_app.extensions["mysql_pool"].release(db)


def init_app(app: Flask, metrics: AuthMetrics) -> None:
    config: AuthConfig = app.config["AUTH"]
    app.extensions["mysql_pool"] = ConnectionPool(
        config,
        config.mysql_connections_per_worker,
        metrics.mysql_connections.labels(state="in_use"),
        metrics.mysql_connections.labels(state="idle"),
    )
    app.teardown_appcontext(close_db)


def wait_until_ready(config: AuthConfig, timeout_s: float) -> Connection:
    """Connect, retrying while MySQL starts (in a stack it often comes up after us)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            return connect(config)
        except pymysql.err.OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailableError(
                    f"MySQL at {config.mysql_host}:{config.mysql_port} (database {config.mysql_database!r}, "
                    f"user {config.mysql_user!r}) not reachable within {timeout_s:g}s: {exc.args[-1]}"
                ) from exc
            log.info("waiting for MySQL at %s:%s: %s", config.mysql_host, config.mysql_port, exc.args[-1])
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def schema_statements() -> list[str]:
    """The statements of schema.sql, comments removed (PyMySQL runs one statement per call)."""
    text = resources.files("auth_server").joinpath("schema.sql").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


# Columns added to a table after its first release, as (table, column, definition); the
# definitions match schema.sql's CREATE TABLE. MySQL 8 has no ADD COLUMN IF NOT EXISTS
# (MariaDB has), so apply_schema looks each one up first.
ADDED_COLUMNS = (
    ("accounts", "token_key", "CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NULL AFTER enabled"),
)


def apply_schema(conn: Connection) -> None:
    """Create what is missing: the tables, and the columns an older version's tables lack."""
    with conn.cursor() as cur:
        for statement in schema_statements():
            cur.execute(statement)
        for table, column, definition in ADDED_COLUMNS:
            cur.execute(
                "SELECT COUNT(*) AS n FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = %s",
                (table, column),
            )
            if not cur.fetchone()["n"]:
                log.info("adding column %s.%s (the table was created by an older version)", table, column)
                # Names and definition are the constants above, never input.
                cur.execute(f"ALTER TABLE `{table}` ADD COLUMN `{column}` {definition}")
    conn.commit()
