"""HTTP API benchmark: the real auth server (`python -m auth_server`, gunicorn) on a real MariaDB
and InfluxDB started here, loaded by a lean asyncio HTTP/1.1 client written below, on uvloop's
event loop, in this process: one keep-alive connection per concurrent client, each request
written as one piece of bytes, each answer read by its framing and no more. Lean because it
shares the machine with what it measures: it takes about half the CPU per request that aiohttp
did, and uvloop takes a quarter off asyncio's own loop.

Measures, with many device accounts (one station each) posting payloads shaped like a real
device's (an ISO 8601 timestamp with offset and fraction, four numbers, a status string):
  1. logins/s (scrypt), sequential and concurrent, and token refreshes/s;
  2. device writes/s and latency percentiles at several concurrencies (closed loop: each
     client sends its next write when the last one is answered) and at several offered rates
     (open loop: writes are due on a fixed schedule, and a write's latency is counted from the
     moment it was due, so a server that falls behind is not flattered);
  3. every write checked as stored: each phase writes its own location, and InfluxDB must hold
     exactly four points per answered write;
  4. reads (`GET /api/data/...`) and `GET /api/auth/me`.
Beside every phase: the CPU each process used (auth server, MariaDB, InfluxDB, this client), in
% of one core, and the load average, so a saturated client or a busy machine shows.

    .venv/bin/python -m benchmarks.http_api                   # defaults: about 12 minutes
    .venv/bin/python -m benchmarks.http_api --duration 10 --workers 1
Results are printed and written as JSON to benchmarks/results/http_api.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import requests
import uvloop

from auth_server.influx_http import FRAMING_HEADERS, MAX_HEAD
from tests.servers import AuthServerProcess, InfluxServer, MariaDBServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ADMIN = "admin"
METRICS = ("temp", "hum", "bat", "pressure")  # stored; "status" (a string) is ignored
# Devices report in their own time zone, as many do.
DEVICE_TZ = timezone(timedelta(hours=2))
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CLK_TCK = os.sysconf("SC_CLK_TCK")
MISSED = "missed (behind schedule)"


# --- CPU of the processes involved ------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (gunicorn's master and its workers)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return found


def _cpu_s(pid: int) -> float:
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    return total


class CpuMeter:
    """CPU seconds of named processes (and of this one) over a phase, as % of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def _now(self) -> dict[str, float]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return {"client": own.ru_utime + own.ru_stime, **{n: _cpu_s(p) for n, p in self.pids.items()}}

    def start(self) -> None:
        self._t0, self._c0 = time.monotonic(), self._now()

    def stop(self) -> dict[str, float]:
        elapsed, now = time.monotonic() - self._t0, self._now()
        return {n: round(100 * (now[n] - self._c0[n]) / elapsed, 1) for n in now}


# --- Results ------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


@dataclass
class Phase:
    name: str
    concurrency: int
    offered_per_s: float | None  # None: closed loop, as fast as answers come
    duration_s: float
    requests: int | None = None  # stop after this many, if sooner
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    cpu_percent: dict[str, float] = field(default_factory=dict)
    load_average: float = 0.0
    stored: str = ""  # writes only: "points found / points expected"

    def summarize(self, latencies: list[float], elapsed_s: float) -> None:
        latencies.sort()
        self.per_s = round(self.ok / elapsed_s, 1)
        for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99), ("max_ms", 1.0)):
            setattr(self, name, round(1000 * percentile(latencies, q), 2))
        self.load_average = round(os.getloadavg()[0], 2)

    def line(self) -> str:
        offered = "max" if self.offered_per_s is None else f"{self.offered_per_s:g}/s"
        errors = f", errors {self.errors}" if self.errors else ""
        stored = f", stored {self.stored}" if self.stored else ""
        cpu = " ".join(f"{k} {v:g}%" for k, v in self.cpu_percent.items())
        return (
            f"{self.name:<8} c={self.concurrency:<3} offered {offered:<7} {self.per_s:>8.1f}/s  "
            f"p50 {self.p50_ms:6.2f} p95 {self.p95_ms:6.2f} p99 {self.p99_ms:6.2f} max {self.max_ms:7.1f} ms"
            f"{stored}{errors}  [cpu: {cpu}; load {self.load_average}]"
        )


# --- A lean HTTP/1.1 client ---------------------------------------------------------------------
# Only what the benchmark needs, so that its CPU is not taken from what it measures: one request
# at a time on a keep-alive connection, the request written as one piece of bytes, the answer read
# by its framing with no more parsing than that takes. On asyncio's Protocol, not its streams
# (asyncio.open_connection): measured against a trivial server, 52 against 89 µs of CPU per
# request flat out, 126 against 144 at 700 requests/s (aiohttp: 180 and 316).

TIMEOUT_S = 30.0  # per request, connecting included


class HttpError(Exception):
    """A request that got no usable answer; the class name is the error kind a phase counts."""


class ServerDisconnectedError(HttpError):
    """The server closed the connection before the first byte of the answer."""


class IncompleteResponseError(HttpError):
    """The server closed the connection in the middle of an answer."""


class BadResponseError(HttpError):
    """An answer that is not HTTP/1.x framed as this client reads it."""


class Response(NamedTuple):
    status: int
    body: bytes


class _HttpProtocol(asyncio.Protocol):
    """The reading side of one connection: the bytes that arrive are kept until they hold the
    whole answer to the request in flight, which then completes that request's future."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.will_close = False  # after the answer in hand: the server closes, or is out of step
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        # One timer per connection, not one per request (a timer costs more than a request's
        # parsing): it fires at the deadline it was armed with, and is armed again then for the
        # deadline of the request in flight, if that is later. Deadlines only grow.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # The answer being read: its head is read once body_start is set (>= 0); the body then
        # ends after `length` bytes, at the last chunk, or (neither) when the server closes.
        self._body_start = -1
        self._status = 0
        self._length: int | None = None
        self._chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    @property
    def usable(self) -> bool:
        # Bytes nobody asked for would be read as the next answer: such a connection is dropped.
        transport = self.transport
        return not (self.closed or self.will_close or self._buffer or not transport or transport.is_closing())

    def send(self, data: bytes, deadline: float) -> asyncio.Future[Response]:
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._body_start = -1
        self._deadline = deadline
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._check_deadline)
        self.transport.write(data)
        return waiter

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is None:
            return
        try:
            response = self._parse()
        except HttpError as exc:
            self._fail(exc)
            self._abort()
            return
        if response is not None:
            self._finish(response)

    def eof_received(self) -> None:
        return None  # the transport closes, and connection_lost settles the request in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiter is None:
            return
        if exc is not None:
            self._fail(exc)  # e.g. ConnectionResetError
        elif self._body_start >= 0 and self._length is None and not self._chunked:
            self._finish(Response(self._status, bytes(self._buffer[self._body_start :])))
        elif self._buffer:
            self._fail(IncompleteResponseError(f"closed after {len(self._buffer)} bytes of an answer"))
        else:
            self._fail(ServerDisconnectedError("closed with no answer"))

    def _check_deadline(self) -> None:
        self._timer = None
        if self._waiter is None:
            return  # idle: the next request arms the timer
        if self._deadline > (loop := asyncio.get_running_loop()).time():
            self._timer = loop.call_at(self._deadline, self._check_deadline)
            return
        self._fail(TimeoutError(f"no answer in {TIMEOUT_S:g} s"))
        self._abort()

    def _abort(self) -> None:
        self.will_close = True
        if self.transport is not None:
            self.transport.abort()

    def _finish(self, response: Response) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():  # done: the request was cancelled
            waiter.set_result(response)

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _parse(self) -> Response | None:
        """The answer, once the buffer holds all of it (None until then)."""
        buffer = self._buffer
        while self._body_start < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise BadResponseError(f"no end of the head in {len(buffer)} bytes")
                return None
            self._read_head(bytes(buffer[:end]))
            if 100 <= self._status < 200:  # an interim answer (100 Continue): the real one follows
                del buffer[: end + 4]
                continue
            self._body_start = end + 4
        if self._chunked:
            return self._chunked_answer()
        if self._length is None:
            return None  # the body ends when the server closes: connection_lost completes it
        stop = self._body_start + self._length
        if len(buffer) < stop:
            return None
        return self._answer(bytes(buffer[self._body_start : stop]), stop)

    def _answer(self, body: bytes, stop: int) -> Response:
        if len(self._buffer) > stop:
            self.will_close = True  # more than was asked for: the connection is out of step
        self._buffer.clear()
        return Response(self._status, body)

    def _read_head(self, head: bytes) -> None:
        status_line = head.partition(b"\r\n")[0]
        version, _, rest = status_line.partition(b" ")  # "HTTP/1.1", "200 OK"
        code = rest.partition(b" ")[0]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise BadResponseError(f"status line {status_line[:80]!r}")
        self._status = int(code)
        lengths: set[bytes] = set()
        codings: list[bytes] = []
        tokens: list[bytes] = []
        for name, raw in FRAMING_HEADERS.findall(head.lower()):
            value = raw.rstrip()
            if name == b"content-length":
                lengths.add(value)
            elif name == b"transfer-encoding":
                codings.append(value)
            else:
                tokens += [t.strip() for t in value.split(b",")]
        # HTTP/1.1 keeps the connection open unless the server says close; HTTP/1.0 the reverse.
        keep_alive = b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)
        self._length, self._chunked = None, False
        if self._status in (204, 304):
            self._length = 0  # no body, whatever the headers say
        elif codings:
            # Transfer-Encoding overrides Content-Length; a last coding other than chunked
            # leaves the end of the body to the server closing the connection.
            self._chunked = b",".join(codings).rstrip().endswith(b"chunked")
        elif lengths:
            length = lengths.pop()
            if lengths or not length.isdigit():
                raise BadResponseError(f"Content-Length {length[:80]!r}")
            self._length = int(length)
        self.will_close = not keep_alive or (self._length is None and not self._chunked)

    def _chunked_answer(self) -> Response | None:
        buffer, position, chunks = self._buffer, self._body_start, []
        while True:
            eol = buffer.find(b"\r\n", position)
            if eol < 0:
                return None
            size_text = bytes(buffer[position:eol]).partition(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                size = -1
            if size < 0:
                raise BadResponseError(f"chunk size {size_text[:80]!r}")
            if size == 0:
                break
            end = eol + 2 + size
            if len(buffer) < end + 2:
                return None
            if buffer[end : end + 2] != b"\r\n":
                raise BadResponseError("a chunk not ended by CRLF")
            chunks.append(bytes(buffer[eol + 2 : end]))
            position = end + 2
        # The last chunk is followed by trailer lines, if any, and an empty line.
        trailers_end = buffer.find(b"\r\n\r\n", eol)
        if trailers_end < 0:
            return None
        return self._answer(b"".join(chunks), trailers_end + 4)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to `base` (http://host:port), used by one client at a
    time: opened at its first request, and again after the server closed it or a request failed
    on it (that request fails; the next one gets a new connection)."""

    def __init__(self, base: str) -> None:
        url = urlsplit(base)
        if url.scheme != "http" or not url.hostname or not url.port:
            raise ValueError(f"not an http://host:port address: {base}")
        self._address = (url.hostname, url.port)
        self._host = f"Host: {url.netloc}\r\n".encode()
        self._protocol: _HttpProtocol | None = None

    async def request(
        self, method: str, target: str, headers: bytes = b"", body: bytes | None = None
    ) -> Response:
        """`headers` are complete header lines ("Name: value\\r\\n"); a body is JSON."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT_S
        protocol = self._protocol
        if protocol is None or not protocol.usable:
            self.close()
            async with asyncio.timeout_at(deadline):
                _, protocol = await loop.create_connection(_HttpProtocol, *self._address)
            self._protocol = protocol
        if body:
            framing = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        else:
            body = b""
            framing = b"" if method == "GET" else b"Content-Length: 0\r\n"
        line = f"{method} {target} HTTP/1.1\r\n".encode()
        data = b"".join((line, self._host, headers, framing, b"\r\n", body))
        try:
            response = await protocol.send(data, deadline)
        except BaseException:
            self.close()  # a request that failed or was cancelled leaves the connection unusable
            raise
        if protocol.will_close:
            self.close()
        return response

    def close(self) -> None:
        if self._protocol is not None:
            if self._protocol.transport is not None:
                self._protocol.transport.close()
            self._protocol = None


# --- The load ----------------------------------------------------------------------------------


@dataclass
class Device:
    username: str
    password: str
    station: str
    token: str = ""
    sent: int = 0  # writes sent, for unique timestamps

    def headers(self) -> bytes:
        return f"Authorization: Bearer {self.token}\r\n".encode()


def payload(device: Device, seq: int) -> bytes:
    moment = (T0 + timedelta(milliseconds=seq)).astimezone(DEVICE_TZ)
    return json.dumps(
        {
            "timestamp": moment.isoformat(timespec="milliseconds"),
            "temp": round(20 + (seq % 100) / 10, 2),
            "hum": 40 + seq % 37,
            "bat": 100 - seq % 50,
            "pressure": round(1013.25 - (seq % 200) / 100, 2),
            "status": "ok",
        }
    ).encode()


Request = Callable[[HttpConnection, int], Awaitable[str | None]]  # None: ok, else an error


async def run_phase(phase: Phase, request: Request, meter: CpuMeter, base: str) -> Phase:
    """`phase.concurrency` clients, each on its own connection, send `request(connection, k)`
    for k = 0, 1, ... until the phase's time is up; open loop when the phase has an offered rate."""
    latencies: list[float] = []
    connections = [HttpConnection(base) for _ in range(phase.concurrency)]
    counter = iter(range(sys.maxsize))
    start = time.perf_counter() + 0.05
    end = start + phase.duration_s

    async def client(connection: HttpConnection) -> None:
        while True:
            k = next(counter)
            if phase.requests is not None and k >= phase.requests:
                return
            due = start + k / phase.offered_per_s if phase.offered_per_s else time.perf_counter()
            if due >= end:
                return
            if phase.offered_per_s and time.perf_counter() > end:
                # The server fell behind the schedule: what is still due at the phase's end
                # is counted as missed, not sent late for as long as it takes.
                phase.errors[MISSED] = phase.errors.get(MISSED, 0) + 1
                continue
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            try:
                error = await request(connection, k)
            except (HttpError, OSError) as exc:  # OSError: ConnectionResetError, TimeoutError, ...
                error = exc.__class__.__name__
            if error is None:
                phase.ok += 1
                latencies.append(time.perf_counter() - due)
            else:
                phase.errors[error] = phase.errors.get(error, 0) + 1

    meter.start()
    try:
        await asyncio.gather(*(client(c) for c in connections))
        phase.cpu_percent = meter.stop()
    finally:
        for connection in connections:
            connection.close()
    phase.summarize(latencies, time.perf_counter() - start)
    return phase


def write_request(location: str, devices: list[Device]) -> Request:
    async def request(connection: HttpConnection, k: int) -> str | None:
        device = devices[k % len(devices)]
        device.sent += 1
        body = payload(device, device.sent)
        target = f"/api/data/{location}/{device.station}"
        response = await connection.request("POST", target, device.headers(), body)
        if response.status != 200:
            return f"HTTP {response.status}"
        if not response.body.startswith(b'{"stored":4,'):
            return "not stored"
        return None

    return request


def get_request(target_of: Callable[[Device], str], devices: list[Device]) -> Request:
    async def request(connection: HttpConnection, k: int) -> str | None:
        device = devices[k % len(devices)]
        response = await connection.request("GET", target_of(device), device.headers())
        return None if response.status == 200 else f"HTTP {response.status}"

    return request


def login_request(devices: list[Device], refresh: bool) -> Request:
    async def request(connection: HttpConnection, k: int) -> str | None:
        device = devices[k % len(devices)]
        if refresh:
            response = await connection.request("POST", "/api/auth/refresh", device.headers())
        else:
            body = json.dumps({"username": device.username, "password": device.password}).encode()
            response = await connection.request("POST", "/api/auth/login", body=body)
        if response.status != 200:
            return f"HTTP {response.status}"
        device.token = json.loads(response.body)["access_token"]
        return None

    return request


# --- Set-up and checks -------------------------------------------------------------------------


def stored_points(influx: InfluxServer, database: str, location: str) -> int:
    q = f'SELECT count("value") FROM /.*/ WHERE "location" = \'{location}\''
    return sum(int(s["values"][0][1]) for s in influx.series(q, database))


def create_devices(base: str, admin_password: str, count: int) -> list[Device]:
    admin = requests.post(
        f"{base}/api/auth/login", json={"username": ADMIN, "password": admin_password}, timeout=30
    )
    admin.raise_for_status()
    headers = {"Authorization": f"Bearer {admin.json()['access_token']}"}

    def create(i: int) -> Device:
        station = f"dev{i:05d}"
        body = {
            "username": f"bench-{station}",
            "permissions": [{"location": "*", "station": station, "read": True, "write": True}],
        }
        created = requests.post(f"{base}/api/accounts", json=body, headers=headers, timeout=60)
        created.raise_for_status()
        return Device(body["username"], created.json()["password"], station)

    # Each creation hashes a password: several at once use both cores.
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(create, range(count)))


def phases(args: argparse.Namespace) -> Iterator[tuple[Phase, str]]:
    """(phase, kind) in the order they run; kind is write, read, me, login or refresh."""
    d = args.duration
    # Every device logs in once (all of them need a token), then logins go on for a while.
    yield Phase("login", 16, None, 3600, requests=args.devices), "login"
    yield Phase("login", 1, None, min(d, 20)), "login"
    yield Phase("refresh", 16, None, d), "refresh"
    for c in args.concurrency:
        yield Phase("write", c, None, d), "write"
    for rate in args.rates:
        yield Phase("write", args.rate_concurrency, rate, d), "write"
    yield Phase("read", 16, None, d), "read"
    yield Phase("me", 1, None, d), "me"
    yield Phase("me", 16, None, d), "me"


@dataclass
class Target:
    """What the phases run against."""

    base: str
    devices: list[Device]
    meter: CpuMeter
    influx: InfluxServer
    database: str


def read_target(location: str) -> Callable[[Device], str]:
    return lambda d: f"/api/data/{location}/{d.station}?metric=temp&limit=100"


async def run_all(args: argparse.Namespace, target: Target) -> list[Phase]:
    results = []
    base, devices = target.base, target.devices
    last_written = ""
    for index, (phase, kind) in enumerate(phases(args)):
        location = f"bench{index}"
        if kind == "write":
            request = write_request(location, devices)
            last_written = location
        elif kind == "read":
            request = get_request(read_target(last_written), devices)
        elif kind == "me":
            request = get_request(lambda _d: "/api/auth/me", devices)
        else:
            request = login_request(devices, refresh=kind == "refresh")
        await run_phase(phase, request, target.meter, base)
        if kind == "write":
            expected = len(METRICS) * phase.ok
            phase.stored = f"{stored_points(target.influx, target.database, location)}/{expected}"
        print(phase.line(), flush=True)
        results.append(phase)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60, help="seconds per phase (default 60)")
    parser.add_argument("--devices", type=int, default=500, help="device accounts (default 500)")
    parser.add_argument("--workers", type=int, default=None, help="AUTH_WORKERS (default: the server's)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rates", type=float, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--rate-concurrency", type=int, default=64, help="clients of the rate phases")
    parser.add_argument("--output", type=Path, default=RESULTS / "http_api.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        work = Path(tmp)
        mariadb, influx = MariaDBServer(work / "mariadb"), InfluxServer(work / "influxd")
        mariadb.start()
        influx.start()
        database, admin_password = "http_bench", secrets.token_urlsafe(18)
        mariadb.create_database("http_bench")
        settings = {
            "MYSQL_HOST": "127.0.0.1",
            "MYSQL_PORT": str(mariadb.port),
            "MYSQL_USER": mariadb.user,
            "MYSQL_PASSWORD": mariadb.password,
            "MYSQL_DATABASE": "http_bench",
            "JWT_SECRET": secrets.token_hex(32),
            "ADMIN_USERNAME": ADMIN,
            "ADMIN_PASSWORD": admin_password,
            "INFLUXDB_HOST": "127.0.0.1",
            "INFLUXDB_PORT": str(influx.port),
            "INFLUXDB_DATABASE": database,
            # Every device logs in from 127.0.0.1; none fails, so the throttle only records.
        }
        if args.workers:
            settings["AUTH_WORKERS"] = str(args.workers)
        server = AuthServerProcess(work / "auth_server", settings)
        try:
            server.start(timeout_s=60)
            assert server.proc and mariadb.proc and influx.proc
            requests.post(
                f"http://127.0.0.1:{influx.port}/query", data={"q": f'CREATE DATABASE "{database}"'}
            )
            print(
                f"load average {os.getloadavg()[0]:.2f}; creating {args.devices} device accounts", flush=True
            )
            devices = create_devices(server.url, admin_password, args.devices)
            pids = {"auth_server": server.proc.pid, "mariadb": mariadb.proc.pid, "influxd": influx.proc.pid}
            target = Target(server.url, devices, CpuMeter(pids), influx, database)
            results = uvloop.run(run_all(args, target))
        finally:
            server.stop()
            influx.stop()
            mariadb.stop()
            log = server.log_text()
    workers = log.count("Booting worker with pid")
    errors = [line for line in log.splitlines() if " ERROR " in line or "Error" in line or "File " in line]
    if errors:
        print(f"the server logged {len(errors)} error line(s), the first ones:", *errors[:30], sep="\n  ")
    report = {
        "settings": {**vars(args), "output": str(args.output), "workers_booted": workers},
        "load_average_end": os.getloadavg(),
        "phases": [asdict(p) for p in results],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{workers} gunicorn worker(s); results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
