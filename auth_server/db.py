"""MySQL connections: one per request (PyMySQL), the schema applied at start, readiness waits."""

from __future__ import annotations

import logging
import threading
import time
from importlib import resources

import pymysql
import pymysql.cursors
from flask import Flask, current_app, g

from auth_server.config import AuthConfig

log = logging.getLogger(__name__)

Connection = pymysql.connections.Connection


class DatabaseUnavailableError(RuntimeError):
    """MySQL could not be reached (within the start-up timeout, or for this request)."""


def connect(config: AuthConfig) -> Connection:
    """A new connection: explicit transactions, dict rows, UTC timestamps, bounded waits."""
    return pymysql.connect(
        host=config.mysql_host,
        port=config.mysql_port,
        user=config.mysql_user,
        password=config.mysql_password,
        database=config.mysql_database,
        charset="utf8mb4",
        autocommit=False,
        cursorclass=pymysql.cursors.DictCursor,
        init_command="SET time_zone = '+00:00'",
        connect_timeout=5,
        read_timeout=30,
        write_timeout=30,
    )


# How long a request waits for one of the MYSQL_MAX_CONNECTIONS connections before it is
# answered 503: the server holds far more requests at once (AUTH_MAX_CONNECTIONS) than
# MySQL accepts connections (151 by default, shared with phpMyAdmin and other replicas).
CONNECTION_WAIT_S = 10.0


def get_db() -> Connection:
    """The connection of the current request, opened on first use."""
    if "db" not in g:
        config: AuthConfig = current_app.config["AUTH"]
        slots: threading.BoundedSemaphore = current_app.extensions["mysql_slots"]
        if not slots.acquire(timeout=CONNECTION_WAIT_S):
            raise DatabaseUnavailableError(f"all {config.mysql_max_connections} MySQL connections are busy")
        try:
            g.db = connect(config)
        except pymysql.err.OperationalError as exc:
            slots.release()
            raise DatabaseUnavailableError(f"cannot connect to MySQL: {exc.args[-1]}") from exc
    return g.db


def close_db(_error: BaseException | None = None) -> None:
    """Give the request's connection back (get_db opens another if it needs one again)."""
    db = g.pop("db", None)
    if db is not None:
        # Closing without COMMIT rolls back whatever a failed request left open.
        db.close()
        current_app.extensions["mysql_slots"].release()


def init_app(app: Flask) -> None:
    config: AuthConfig = app.config["AUTH"]
    # A threading semaphore: under gevent (python -m auth_server) it is gevent's, cooperative.
    app.extensions["mysql_slots"] = threading.BoundedSemaphore(config.mysql_max_connections)
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
