"""InfluxDB 1.x access: database creation, line-protocol batch writes, the series it holds.

Used by the adapter and by the auth server's HTTP data API (one write path for both).

Errors are sorted into the two kinds the adapter treats differently: transient ones
(retry, keep messages unacked) and permanent ones (count the refused points, go on).
InfluxDB's refusals are read from its answer, whose texts were checked against a real
influxd (1.6 and the 1.8 source): see `refusals`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import requests
from influxdb import InfluxDBClient
from influxdb.exceptions import InfluxDBClientError, InfluxDBServerError

from adapter.contract import Drop, SeriesBudget, SeriesId, series_of

log = logging.getLogger(__name__)

# "partial write: <reason> dropped=<n>" — InfluxDB appends the count last, so a name inside
# the reason cannot fake it.
_DROPPED_RE = re.compile(r" dropped=(\d+)$")
_PARSE_FAILURE = "unable to parse '"
_PARTIAL = "partial write: "
# The first reason InfluxDB names for the points it refused (it names only the first).
_REASONS = (
    ("field type conflict", Drop.TYPE_CONFLICT),
    ("max-values-per-tag limit exceeded", Drop.MAX_VALUES_PER_TAG),
    ("max-series-per-database limit exceeded", Drop.MAX_SERIES_PER_DATABASE),
    (_PARSE_FAILURE, Drop.UNPARSABLE),
)
# 4xx answers that say nothing about the data: a wrong or missing InfluxDB login (401, 403)
# or a proxy's "try later" (408, 429). Dropping the points would throw away every reading
# until someone fixes the deployment; retrying keeps them in the broker instead.
_RETRIED_4XX = frozenset({401, 403, 408, 429})


class TransientWriteError(Exception):
    """InfluxDB is unreachable or failing (5xx, timeout): the same write may succeed later."""


class DatabaseMissingError(TransientWriteError):
    """The target database does not exist (yet, or any more): create it, then retry."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What InfluxDB did with one write: `refused` lines, by reason, were refused for good.

    `too_large` (HTTP 413) means nothing was written: the body is over InfluxDB's
    max-body-size, and smaller writes may succeed.
    """

    written: int
    refused: tuple[tuple[Drop, int], ...] = ()
    error: str = ""
    too_large: bool = False

    @property
    def refused_count(self) -> int:
        return sum(n for _, n in self.refused)


def refusals(error: str, lines: int) -> tuple[tuple[Drop, int], ...]:
    """InfluxDB's HTTP 400 `error` text for a write of `lines` lines → the lines it refused.

    - `partial write: <reason> dropped=N`: N points refused (type conflict, a max-values-per-tag
      or max-series-per-database limit); the rest is stored;
    - `partial write: unable to parse '<line>': ...` (one such part per line, separated by
      newlines) `dropped=0`: those lines are refused, the others stored;
    - `unable to parse ...` alone: no line could be parsed, nothing was stored.
    When a write has both, InfluxDB reports only the refused points; bisecting the write (the
    adapter does) separates the two.
    """
    partial = error.startswith(_PARTIAL)
    text = error[len(_PARTIAL) :] if partial else error
    dropped = 0
    match = _DROPPED_RE.search(text)
    if partial and match:
        dropped = int(match.group(1))
        text = text[: match.start()]
    # Lines never contain a newline (the contract refuses control characters in names), so
    # each parse failure starts a line of the answer.
    unparsable = sum(1 for part in text.split("\n") if part.startswith(_PARSE_FAILURE))
    if not partial:
        # Nothing was written: every line is refused, for the reason given.
        return ((_reason(text), lines),)
    # InfluxDB reports either the lines it could not parse (with dropped=0) or the points it
    # refused, never both.
    if unparsable:
        return ((Drop.UNPARSABLE, min(unparsable, lines)),)
    if dropped:
        return ((_reason(text), min(dropped, lines)),)
    return ()


def _reason(text: str) -> Drop:
    for marker, reason in _REASONS:
        if marker in text:
            return reason
    return Drop.REFUSED


def quote_identifier(name: str) -> str:
    """An InfluxQL double-quoted identifier; backslash and quote are the escapes it knows."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


_KEY_SPLIT = re.compile(r"(?<!\\),")
_TAG_SPLIT = re.compile(r"(?<!\\)=")
_UNESCAPE = re.compile(r"\\([,= ])")


def parse_series_key(key: str) -> tuple[str, dict[str, str]]:
    """A series key as SHOW SERIES prints it (`RPi_1.BAT,location=UPB,station=RPi_1`) →
    (measurement, tags). The contract never lets a name hold the backslash sequences that
    would make this ambiguous."""
    measurement, *pairs = _KEY_SPLIT.split(key)
    tags = {}
    for pair in pairs:
        name, *value = _TAG_SPLIT.split(pair, maxsplit=1)
        tags[_UNESCAPE.sub(r"\1", name)] = _UNESCAPE.sub(r"\1", value[0] if value else "")
    return _UNESCAPE.sub(r"\1", measurement), tags


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
        pool_size: int = 10,
    ) -> None:
        self.database = database
        # retries=1: one attempt per call; the caller owns the retry policy (backoff, metrics).
        # Credentials go as HTTP basic auth; None sends none (the client's own default would
        # send root/root). pool_size: connections kept open for reuse, one per concurrent
        # writer (the auth server writes from many requests at once; the adapter from one thread).
        session = requests.Session()
        # No proxy or .netrc from the environment applies to InfluxDB inside the stack, and
        # requests would look them up again for every write (a tenth of an HTTP write's time).
        session.trust_env = False
        self._client = InfluxDBClient(
            host=host,
            port=port,
            username=username,
            password=password,
            database=database,
            timeout=timeout_s,
            retries=1,
            pool_size=pool_size,
            session=session,
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
        """Write one batch in one request. Raises TransientWriteError; returns InfluxDB's
        permanent refusals (400, 413, other 4xx) as a result.

        On HTTP 400 InfluxDB 1.x has already stored every point of the batch it could, so
        writing the same lines again only rewrites the same points (same series and time).
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
            return refused_write(exc.code, exc.content, len(lines), self.database)
        return WriteResult(len(lines))

    def series(self, limit: int) -> Iterator[SeriesId]:
        """The series the database holds, at most `limit` of them, read in chunks (bounded
        memory). A missing database holds none. Raises TransientWriteError."""
        try:
            response = self._client.request(
                "query",
                method="POST",
                params={"db": self.database, "q": f"SHOW SERIES LIMIT {int(limit)}", "chunked": "true"},
                stream=True,
                expected_response_code=200,
                # JSON lines, one per chunk (the client library would ask for MessagePack).
                headers={"Accept": "application/json"},
            )
        except (requests.RequestException, InfluxDBServerError, InfluxDBClientError) as exc:
            raise TransientWriteError(f"cannot read InfluxDB's series: {exc}") from exc
        try:
            for chunk in response.iter_lines():
                if not chunk:
                    continue
                for result in json.loads(chunk).get("results", []):
                    if "error" in result:
                        if str(result["error"]).startswith("database not found"):
                            return
                        raise TransientWriteError(f"SHOW SERIES failed: {result['error']}")
                    for block in result.get("series", []):
                        for (key,) in block.get("values", []):
                            yield series_of(*parse_series_key(key))
        except (requests.RequestException, ValueError) as exc:
            raise TransientWriteError(f"cannot read InfluxDB's series: {exc}") from exc
        finally:
            response.close()


class SeriesBudgetKeeper:
    """Keeps a SeriesBudget in step with the series InfluxDB holds (read at most every
    `refresh_s` seconds; 0: once). Reading costs about one second per 100,000 series, and
    at most MAX_SERIES are read."""

    def __init__(self, budget: SeriesBudget, reader: InfluxWriter, refresh_s: float) -> None:
        self.budget = budget
        self._reader = reader
        self._refresh_s = refresh_s
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Read InfluxDB's series now. Raises TransientWriteError."""
        with self._lock:
            self._load()

    def ensure_fresh(self) -> None:
        """Read the series unless they were read recently: the first time every caller waits
        for it (raises TransientWriteError); later a refresh starts in a thread of its own (a
        greenlet under gevent) and every caller goes on with the budget last read. No request
        waits for a refresh: with 10,000 series one took 0.9 s in a loaded worker."""
        loaded_at = self._loaded_at
        if loaded_at is None:
            with self._lock:
                if self._loaded_at is None:
                    self._load()
            return
        if not self._refresh_s or time.monotonic() - loaded_at < self._refresh_s:
            return
        if self._lock.acquire(blocking=False):
            threading.Thread(target=self._refresh, name="series-budget-refresh", daemon=True).start()

    def _refresh(self) -> None:
        """A refresh started by ensure_fresh, which took the lock for it."""
        try:
            self._load()
        except TransientWriteError as exc:
            log.warning("cannot refresh the series budget from InfluxDB: %s", exc)
        finally:
            self._lock.release()

    def _load(self) -> None:
        started = time.monotonic()
        self.budget.reload(self._reader.series(self.budget.total))
        self._loaded_at = time.monotonic()
        log.info(
            "Series budget: %d of %d series in use (read from InfluxDB in %.1fs)",
            self.budget.count,
            self.budget.total,
            self._loaded_at - started,
        )


def refused_write(code: int, content: object, lines: int, database: str) -> WriteResult:
    """What InfluxDB's 4xx answer `content` to a write of `lines` lines into `database` means,
    for every writer of the platform: the refusal, or DatabaseMissingError, or (401, 403, 408,
    429: nothing wrong with the data) TransientWriteError."""
    error = _error_text(content)
    if code == 404 and error.startswith("database not found"):
        raise DatabaseMissingError(f"database {database!r} not found")
    if code in _RETRIED_4XX:
        raise TransientWriteError(f"HTTP {code} (check InfluxDB's login): {error[:300]}")
    if code == 413:
        return WriteResult(0, ((Drop.BODY_TOO_LARGE, lines),), error[:300], too_large=True)
    found = refusals(error, lines) if code == 400 else ((Drop.REFUSED, lines),)
    refused = sum(n for _, n in found)
    return WriteResult(lines - refused, found, f"HTTP {code}: {error[:300]}")


def _error_text(content: object) -> str:
    """The `error` of InfluxDB's JSON answer, or the raw text."""
    raw = content if isinstance(content, bytes) else str(content).encode()
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()
    return str(body.get("error", text)) if isinstance(body, dict) else text.strip()


def _text(content: object) -> str:
    raw = content if isinstance(content, bytes) else str(content).encode()
    return raw[:300].decode("utf-8", "replace").strip()
