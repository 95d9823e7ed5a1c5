"""InfluxDB 1.x for the data API: grouped writes on kept-alive connections, parameterized queries."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from adapter.influx import (
    DatabaseMissingError,
    InfluxWriter,
    TransientWriteError,
    WriteResult,
    quote_identifier,
    refused_write,
)
from auth_server.group import GroupCommit, Pending
from auth_server.influx_http import WriteConnection

__all__ = ["InfluxClient", "InfluxRejectedError", "InfluxUnavailableError", "quote_identifier"]


class InfluxUnavailableError(RuntimeError):
    """InfluxDB did not answer, or failed (5xx): the same request may succeed later."""


class InfluxRejectedError(RuntimeError):
    """InfluxDB refused the write for good (HTTP 4xx); some points of it may have been stored."""


# A group is one write request to InfluxDB: about the batch size InfluxDB's documentation
# recommends; a single request with more lines than this is written alone.
GROUP_MAX_LINES = 5000


class GroupWriter(GroupCommit[Sequence[str], None]):
    """Concurrent requests' lines written to InfluxDB in one request per group (group commit,
    auth_server.group): InfluxDB's write is the largest share of a request's cost. Each request
    still gets its own answer: when InfluxDB refuses a group of several, each request's lines
    are written again on their own (rewriting a stored point is harmless: same series and
    time), so one request's bad point fails only that request.
    """

    def __init__(
        self, write: Callable[[Sequence[str]], None], wait_s: float, max_lines: int = GROUP_MAX_LINES
    ) -> None:
        super().__init__(wait_s, max_lines)
        self._write = write

    def write(self, lines: Sequence[str]) -> None:
        """Write `lines`; raises what writing them alone would have raised."""
        self.submit(lines, len(lines))

    def _too_slow(self) -> BaseException:
        waited = f"{self._wait_s:g}s"
        return InfluxUnavailableError(f"InfluxDB did not take this write within {waited} (writes queued)")

    def _failed(self, exc: BaseException) -> BaseException:
        return InfluxUnavailableError(f"the write did not complete: {exc!r}")

    def _run(self, group: list[Pending[Sequence[str], None]]) -> None:
        try:
            self._write([line for pending in group for line in pending.item])
        except InfluxRejectedError as exc:
            if len(group) == 1:
                group[0].error = exc
                return
            for pending in group:
                try:
                    self._write(pending.item)
                except (InfluxRejectedError, InfluxUnavailableError) as own:
                    pending.error = own
        except InfluxUnavailableError as exc:
            for pending in group:
                pending.error = exc


class InfluxClient:
    """The data API's InfluxDB access. Connections are kept open and reused (writes on
    connections of their own, auth_server.influx_http, grouped by GroupWriter; queries through
    a requests session); at most `max_connections` requests of one worker are with InfluxDB at
    once, the others wait up to `timeout_s`."""

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
        self._group = GroupWriter(self._write_now, wait_s=timeout_s)
        # Writes go over connections of their own, kept open: a write through requests and the
        # influxdb client cost 1.2 ms of CPU, through http.client 0.29 ms, this way 0.10 ms; under
        # a steady trickle of device writes (small groups) the first was a third of the server's work.
        path = f"/write?db={quote(database, safe='')}&precision=n"
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        head = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/octet-stream\r\n"
        if username is not None and password is not None:
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            head += f"Authorization: Basic {token}\r\n"
        self._write_head = head.encode()
        self._idle_writers: list[WriteConnection] = []

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
        """Write every line, together with other requests' lines written at the same time
        (GroupWriter); creates the database once if it is missing."""
        self._group.write(lines)

    def _write_now(self, lines: Sequence[str]) -> None:
        with self._slot():
            self._write(lines)

    def _write(self, lines: Sequence[str]) -> None:
        """One write of `lines`, InfluxDB's answer judged as for the adapter (refused_write);
        a missing database is created once."""
        body = "\n".join(lines).encode("utf-8")
        try:
            try:
                result = self._judge(self._post_write(body), lines)
            except DatabaseMissingError:
                self._writer.ensure_database()
                result = self._judge(self._post_write(body), lines)
        except TransientWriteError as exc:
            raise InfluxUnavailableError(str(exc)) from exc
        if result.refused:
            raise InfluxRejectedError(result.error)

    def _judge(self, answer: tuple[int, bytes], lines: Sequence[str]) -> WriteResult:
        status, content = answer
        if status == 204:
            return WriteResult(len(lines))
        if status >= 500:
            text = content[:300].decode("utf-8", "replace").strip()
            raise InfluxUnavailableError(f"InfluxDB server error {status}: {text}")
        return refused_write(status, content, len(lines), self.database)

    def _post_write(self, body: bytes) -> tuple[int, bytes]:
        """POST /write on a kept-alive connection: (status, body). A connection that fails
        before an answer is replaced by a new one once, when it had served before (InfluxDB
        restarted or closed it meanwhile; writing the same points again is harmless)."""
        reused = bool(self._idle_writers)
        conn = self._idle_writers.pop() if reused else self._new_writer()
        while True:
            try:
                status, content = conn.post(body)
            except OSError as exc:  # the connection is closed
                if reused:
                    reused, conn = False, self._new_writer()
                    continue
                raise InfluxUnavailableError(f"InfluxDB unreachable: {exc.__class__.__name__}") from exc
            if conn.open:
                self._idle_writers.append(conn)
            else:
                conn.close()
            return status, content

    def _new_writer(self) -> WriteConnection:
        host, port = self._server
        try:
            return WriteConnection(host, port, self.timeout_s, self._write_head)
        except OSError as exc:
            raise InfluxUnavailableError(f"InfluxDB unreachable: {exc.__class__.__name__}") from exc

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
