"""InfluxDB 1.x access: database creation and line-protocol batch writes.

Used by the adapter and by the auth server's HTTP data API (one write path for both).

Errors are sorted into the two kinds the adapter treats differently: transient ones
(retry, keep messages unacked) and permanent ones (drop the bad points, count, go on).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import requests
from influxdb import InfluxDBClient
from influxdb.exceptions import InfluxDBClientError, InfluxDBServerError

_DROPPED_RE = re.compile(rb"dropped=(\d+)")


class TransientWriteError(Exception):
    """InfluxDB is unreachable or failing (5xx, timeout): the same write may succeed later."""


class DatabaseMissingError(TransientWriteError):
    """The target database does not exist (yet, or any more): create it, then retry."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What InfluxDB did with one batch. `dropped` points were refused for good (HTTP 400)."""

    written: int
    dropped: int = 0
    error: str = ""


def quote_identifier(name: str) -> str:
    """An InfluxQL double-quoted identifier; backslash and quote are the escapes it knows."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxWriter:
    """Writes batches of line-protocol lines to one InfluxDB 1.x database."""

    def __init__(
        self,
        host: str,
        port: int,
        database: str,
        timeout_s: float = 10.0,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.database = database
        # retries=1: one attempt per call; the caller owns the retry policy (backoff, metrics).
        # Credentials go as HTTP basic auth; None sends none (the client's own default would
        # send root/root).
        self._client = InfluxDBClient(
            host=host,
            port=port,
            username=username,
            password=password,
            database=database,
            timeout=timeout_s,
            retries=1,
        )

    def close(self) -> None:
        self._client.close()

    def ensure_database(self) -> bool:
        """Create the database with an infinite retention when it is missing; True if created."""
        try:
            existing = {d["name"] for d in self._client.get_list_database()}
            if self.database in existing:
                return False
            self._client.query(
                f"CREATE DATABASE {quote_identifier(self.database)} WITH DURATION INF", method="POST"
            )
        except (requests.RequestException, InfluxDBServerError) as exc:
            raise TransientWriteError(f"cannot reach InfluxDB to create the database: {exc}") from exc
        except InfluxDBClientError as exc:
            # 401/403: wrong credentials, or a user that may not create databases. A deployment
            # problem an operator can fix while we wait, as for writes (see write_lines).
            raise TransientWriteError(
                f"InfluxDB refused to list or create databases (HTTP {exc.code}): {_text(exc.content)}"
            ) from exc
        return True

    def write_lines(self, lines: Sequence[str]) -> WriteResult:
        """Write one batch. Raises TransientWriteError; returns the 400 outcome as a result.

        On HTTP 400 InfluxDB 1.x has already stored every point of the batch it could
        ("partial write ... dropped=N"), so nothing is resent.
        """
        if not lines:
            return WriteResult(0)
        body = "\n".join(lines).encode("utf-8")
        try:
            self._client.request(
                "write",
                method="POST",
                params={"db": self.database, "precision": "n"},
                data=body,
                expected_response_code=204,
                headers={"Content-Type": "application/octet-stream"},
            )
        except requests.RequestException as exc:
            raise TransientWriteError(f"InfluxDB unreachable: {exc.__class__.__name__}") from exc
        except InfluxDBServerError as exc:
            # Unlike InfluxDBClientError, it carries the response body only as its argument.
            body = exc.args[0] if exc.args else b""
            raise TransientWriteError(f"InfluxDB server error: {_text(body)}") from exc
        except InfluxDBClientError as exc:
            content = exc.content if isinstance(exc.content, bytes) else str(exc.content).encode()
            if exc.code == 404 and b"database not found" in content:
                raise DatabaseMissingError(f"database {self.database!r} not found") from exc
            if exc.code == 400:
                match = _DROPPED_RE.search(content)
                dropped = int(match.group(1)) if match else len(lines)
                dropped = min(dropped, len(lines))
                return WriteResult(len(lines) - dropped, dropped, _text(content))
            # Anything else (401 from an auth proxy, 413, 5xx-like 4xx) is a deployment
            # problem that may be fixed without restarting us: keep the data and retry.
            raise TransientWriteError(f"HTTP {exc.code}: {_text(content)}") from exc
        return WriteResult(len(lines))


def _text(content: object) -> str:
    raw = content if isinstance(content, bytes) else str(content).encode()
    return raw[:300].decode("utf-8", "replace").strip()
