"""InfluxDB 1.x for the data API: writes through the adapter's InfluxWriter, parameterized queries."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from adapter.influx import DatabaseMissingError, InfluxWriter, TransientWriteError, quote_identifier

__all__ = ["InfluxClient", "InfluxRejectedError", "InfluxUnavailableError", "quote_identifier"]


class InfluxUnavailableError(RuntimeError):
    """InfluxDB did not answer, or failed (5xx): the same request may succeed later."""


class InfluxRejectedError(RuntimeError):
    """InfluxDB refused the write for good (HTTP 4xx); some points of it may have been stored."""


class InfluxClient:
    """The data API's InfluxDB access. Connections are kept open and reused (writes through the
    adapter's InfluxWriter, queries through a session of their own); at most `max_connections`
    requests of one worker are with InfluxDB at once, the others wait up to `timeout_s`."""

    def __init__(
        self,
        host: str,
        port: int,
        database: str,
        timeout_s: float = 10.0,
        *,
        username: str | None = None,
        password: str | None = None,
        max_connections: int = 10,
    ) -> None:
        self.url = f"http://{host}:{port}"
        self.database = database
        self.timeout_s = timeout_s
        self._server = (host, port)
        self._credentials = (username, password)
        self._writer = InfluxWriter(
            host, port, database, timeout_s, username=username, password=password, pool_size=max_connections
        )
        self._session = requests.Session()
        # HTTP basic auth when InfluxDB requires it (the secure profile); never in the URL.
        self._session.auth = (username, password) if username is not None and password is not None else None
        # Nothing from the environment (proxies, .netrc) applies to a service inside the stack,
        # and requests would look it up again for every query.
        self._session.trust_env = False
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max_connections)
        self._session.mount("http://", adapter)
        # A threading semaphore: under gevent (python -m auth_server) it is gevent's, cooperative.
        self._slots = threading.BoundedSemaphore(max_connections)

    def series_reader(self, timeout_s: float = 60.0) -> InfluxWriter:
        """A connection of its own for reading the series budget (a long read must not hold one
        of the writers' slots), with this client's server and credentials."""
        (host, port), (username, password) = self._server, self._credentials
        return InfluxWriter(host, port, self.database, timeout_s, username=username, password=password)

    @contextmanager
    def _slot(self) -> Iterator[None]:
        if not self._slots.acquire(timeout=self.timeout_s):
            raise InfluxUnavailableError("all InfluxDB connections of this worker are busy")
        try:
            yield
        finally:
            self._slots.release()

    def _post(self, path: str, **kwargs: Any) -> requests.Response:
        try:
            with self._slot():
                response = self._session.post(f"{self.url}{path}", timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise InfluxUnavailableError(f"InfluxDB unreachable: {exc.__class__.__name__}") from exc
        if response.status_code >= 500:
            raise InfluxUnavailableError(f"InfluxDB error {response.status_code}: {response.text[:200]}")
        return response

    def ping(self) -> bool:
        try:
            with self._slot():
                return self._session.get(f"{self.url}/ping", timeout=2).status_code == 204
        except (requests.RequestException, InfluxUnavailableError):
            return False

    def write_lines(self, lines: Sequence[str]) -> None:
        """Write every line in one request; creates the database once if it is missing."""
        with self._slot():
            self._write(lines)

    def _write(self, lines: Sequence[str]) -> None:
        try:
            try:
                result = self._writer.write_lines(lines)
            except DatabaseMissingError:
                self._writer.ensure_database()
                result = self._writer.write_lines(lines)
        except TransientWriteError as exc:
            raise InfluxUnavailableError(str(exc)) from exc
        if result.refused:
            raise InfluxRejectedError(result.error)

    def query(self, q: str, bind: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The series of a one-statement query; values are passed as bound `$name` parameters,
        never spliced into the query text. A missing database reads as no data."""
        response = self._post("/query", data={"db": self.database, "q": q, "params": json.dumps(dict(bind))})
        try:
            body = response.json()
        except ValueError as exc:
            raise InfluxUnavailableError(f"InfluxDB answered {response.status_code} without JSON") from exc
        if "error" in body:
            raise InfluxUnavailableError(f"InfluxDB query failed: {body['error']}")
        result = body.get("results", [{}])[0]
        if "error" in result:
            if str(result["error"]).startswith("database not found"):
                return []
            raise InfluxUnavailableError(f"InfluxDB query failed: {result['error']}")
        return list(result.get("series", []))
