"""Login throttling: failed logins make later attempts wait, with delays that double.

Three counters judge an attempt of username U from client address A:

- `pair`     U from A: the attempt's own failures;
- `address`  any username from A: one client trying many names;
- `username` U from any address: many clients trying one name.

A pair that logged in successfully within LOGIN_KNOWN_CLIENT_DAYS is judged by its own failures
only, and its failures count nowhere else: so a device keeps logging in from where it always
does, whatever strangers try elsewhere against its name or from behind the same NAT, and one
device with a wrong password slows only itself. Beyond a counter's free failures, each failure
blocks the next attempt for 1 s, 2 s, 4 s ... up to LOGIN_MAX_DELAY_SECONDS; a blocked attempt is
refused (429) without its password being checked, so it is no guess at all.

The counters live in MySQL (table login_throttle), so every worker and replica sees the same
ones. An attempt is counted as a failure before its password is checked, inside one short
transaction that holds the counters' rows, and handed back if the password was right: so
concurrent attempts cannot slip past a limit together.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import pymysql

from auth_server.config import LoginLimits
from auth_server.db import Connection
from auth_server.metrics import AuthMetrics

log = logging.getLogger(__name__)

# InnoDB may pick this transaction as a deadlock victim (1213) under heavy concurrent logins;
# it is rolled back whole, so running it again is safe.
DEADLOCK = 1213
ATTEMPTS_ON_DEADLOCK = 3
# Expired rows are deleted at most this often per process, a bounded number at a time.
PRUNE_INTERVAL_S = 60.0
PRUNE_BATCH = 1000
# An IPv6 client usually holds a whole /64: counting its addresses one by one would give it
# 2^64 fresh budgets.
IPV6_CLIENT_PREFIX = 64

T = TypeVar("T")


class Scope(StrEnum):
    PAIR = "pair"
    ADDRESS = "address"
    USERNAME = "username"


# The order rows are locked in, the same for every attempt, so two attempts never wait for
# each other in a cycle.
LOCK_ORDER = (Scope.ADDRESS, Scope.USERNAME, Scope.PAIR)


class LoginThrottledError(Exception):
    """The attempt is refused unchecked; `retry_after_s` says when the next one will be heard."""

    def __init__(self, scope: Scope, retry_after_s: int) -> None:
        super().__init__(f"login attempts blocked ({scope}) for {retry_after_s} s")
        self.scope = scope
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Attempt:
    """An admitted attempt, counted as a failure until `LoginThrottle.succeeded` hands it back."""

    address: str
    subjects: dict[Scope, bytes]
    # The counters this attempt was added to, and those it took past their free failures.
    charged: tuple[Scope, ...]
    delayed: tuple[tuple[Scope, int, int], ...]  # (scope, failures, seconds to wait)


def client_key(address: str) -> str:
    """The client an address stands for: an IPv4 address, or an IPv6 /64 network."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a Unix socket): counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


def _utc(moment: float) -> datetime:
    # DATETIME columns hold naive UTC.
    return datetime.fromtimestamp(moment, UTC).replace(tzinfo=None)


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.replace(tzinfo=UTC).timestamp()


def _again_on_deadlock(conn: Connection, transaction: Callable[[], T]) -> T:
    """Run `transaction` (which commits), again when InnoDB chose it as a deadlock victim."""
    for attempt_no in range(1, ATTEMPTS_ON_DEADLOCK + 1):
        try:
            return transaction()
        except pymysql.err.OperationalError as exc:
            conn.rollback()
            if exc.args[0] != DEADLOCK or attempt_no == ATTEMPTS_ON_DEADLOCK:
                raise
    raise AssertionError("unreachable: the last attempt returns or raises")


class LoginThrottle:
    """Admits, counts and hands back login attempts. `clock` is replaceable for tests."""

    def __init__(self, limits: LoginLimits, secret: str, metrics: AuthMetrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.clock: Callable[[], float] = time.time
        # Subjects are keyed hashes: without the key, nobody can tell from the table which
        # usernames (or passwords typed as usernames) were tried.
        self._key = hmac.new(secret.encode(), b"iot-auth-server login throttle", hashlib.sha256).digest()
        self._free = {
            Scope.PAIR: limits.free_failures,
            Scope.ADDRESS: limits.address_free_failures,
            Scope.USERNAME: limits.username_free_failures,
        }
        self._last_prune = 0.0
        # Every scope is exported from the start, so rate() works before its first event.
        for scope in Scope:
            metrics.login_throttled.labels(scope=str(scope))
            metrics.login_delays.labels(scope=str(scope))

    def _subject(self, *parts: str) -> bytes:
        message = b"\0".join(p.encode("utf-8", "surrogatepass") for p in parts)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def delay_s(self, failures: int, scope: Scope) -> int:
        """Seconds the next attempt waits after `failures` failures in `scope`."""
        excess = failures - self._free[scope]
        if excess <= 0:
            return 0
        return min(self.limits.max_delay_s, 2 ** min(excess - 1, 30))

    def admit(self, conn: Connection, username: str, address: str) -> Attempt:
        """Count the attempt as a failure and return it, or raise LoginThrottledError."""
        client = client_key(address)
        subjects = {
            Scope.PAIR: self._subject("pair", username, client),
            Scope.ADDRESS: self._subject("address", client),
            Scope.USERNAME: self._subject("username", username),
        }
        attempt = _again_on_deadlock(conn, lambda: self._admit(conn, client, subjects))
        self._prune(conn)
        return attempt

    def _admit(self, conn: Connection, client: str, subjects: dict[Scope, bytes]) -> Attempt:
        now = self.clock()
        with conn.cursor() as cur:
            # Make sure each row exists, then lock all three (in LOCK_ORDER) before reading them.
            cur.execute(
                "INSERT INTO login_throttle (scope, subject, expires_at) VALUES (%s, %s, %s), (%s, %s, %s), "
                "(%s, %s, %s) ON DUPLICATE KEY UPDATE subject = subject",
                [v for s in LOCK_ORDER for v in (str(s), subjects[s], _utc(now + self.limits.memory_s))],
            )
            cur.execute(
                "SELECT scope, failures, last_failure_at, blocked_until, last_success_at FROM login_throttle "
                "WHERE (scope, subject) IN ((%s, %s), (%s, %s), (%s, %s)) FOR UPDATE",
                [v for s in LOCK_ORDER for v in (str(s), subjects[s])],
            )
            rows = {Scope(r["scope"]): r for r in cur.fetchall()}
            last_success = _epoch(rows[Scope.PAIR]["last_success_at"])
            known = last_success is not None and now - last_success <= self.limits.known_client_days * 86400
            judged = (Scope.PAIR,) if known else (Scope.PAIR, Scope.ADDRESS, Scope.USERNAME)
            blocks = [
                (scope, until)
                for scope in judged
                if (until := _epoch(rows[scope]["blocked_until"])) is not None and until > now
            ]
            if blocks:
                conn.commit()
                scope, until = max(blocks, key=lambda b: b[1])
                self.metrics.login_throttled.labels(scope=str(scope)).inc()
                raise LoginThrottledError(scope, max(1, math.ceil(until - now)))
            delayed = []
            for scope in judged:
                failures = self._charge(cur, scope, subjects[scope], rows[scope], now)
                if wait := self.delay_s(failures, scope):
                    delayed.append((scope, failures, wait))
        conn.commit()
        return Attempt(client, subjects, judged, tuple(delayed))

    def _charge(self, cur: Any, scope: Scope, subject: bytes, row: dict[str, Any], now: float) -> int:
        last_failure = _epoch(row["last_failure_at"])
        recent = last_failure is not None and now - last_failure <= self.limits.memory_s
        failures = (row["failures"] if recent else 0) + 1
        wait = self.delay_s(failures, scope)
        blocked_until = now + wait if wait else None
        last_success = _epoch(row["last_success_at"])
        expires = max(
            now + self.limits.memory_s,
            blocked_until or 0.0,
            (last_success or 0.0) + self.limits.known_client_days * 86400,
        )
        cur.execute(
            "UPDATE login_throttle SET failures = %s, last_failure_at = %s, blocked_until = %s, "
            "expires_at = %s WHERE scope = %s AND subject = %s",
            (failures, _utc(now), None if blocked_until is None else _utc(blocked_until), _utc(expires),
             str(scope), subject),
        )  # fmt: skip
        return failures

    def failed(self, attempt: Attempt) -> None:
        """The password was wrong: the attempt stays counted."""
        for scope, failures, wait in attempt.delayed:
            self.metrics.login_delays.labels(scope=str(scope)).inc()
            # The address, never the username: people type passwords into that field.
            log.info(
                "login throttled: %d failed attempts (%s) from %s; the next is heard in %d s",
                failures,
                scope,
                attempt.address,
                wait,
            )

    def succeeded(self, conn: Connection, attempt: Attempt) -> None:
        """The password was right: clear the pair's failures, remember it as a known client,
        and hand the attempt back to the other counters it was added to."""
        _again_on_deadlock(conn, lambda: self._hand_back(conn, attempt))

    def _hand_back(self, conn: Connection, attempt: Attempt) -> None:
        now, known_s = self.clock(), self.limits.known_client_days * 86400
        with conn.cursor() as cur:
            # Rows in LOCK_ORDER, as _admit locks them: concurrent logins that share the address
            # row (a fleet behind one address) would otherwise deadlock with each other.
            for scope in LOCK_ORDER:
                if scope is Scope.PAIR:
                    cur.execute(
                        "UPDATE login_throttle SET failures = 0, blocked_until = NULL, last_success_at = %s, "
                        "expires_at = GREATEST(expires_at, %s) WHERE scope = 'pair' AND subject = %s",
                        (_utc(now), _utc(now + known_s), attempt.subjects[scope]),
                    )
                elif scope in attempt.charged:
                    # MySQL assigns left to right: blocked_until is decided on the count before
                    # the hand-back. A block this attempt started by itself is lifted with it.
                    cur.execute(
                        "UPDATE login_throttle SET blocked_until = IF(failures <= %s, NULL, blocked_until), "
                        "failures = IF(failures > 0, failures - 1, 0) WHERE scope = %s AND subject = %s",
                        (self._free[scope] + 1, str(scope), attempt.subjects[scope]),
                    )
        conn.commit()

    def _prune(self, conn: Connection) -> None:
        now = self.clock()
        if now - self._last_prune < PRUNE_INTERVAL_S:
            return
        self._last_prune = now
        with conn.cursor() as cur:
            cur.execute("DELETE FROM login_throttle WHERE expires_at < %s LIMIT %s", (_utc(now), PRUNE_BATCH))
        conn.commit()
