"""HTTP API benchmark: the real auth server (`python -m auth_server`, gunicorn) on a real MariaDB
and InfluxDB started here, loaded by an asyncio client (aiohttp) in this process.

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

import aiohttp
import requests

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


# --- The load ----------------------------------------------------------------------------------


@dataclass
class Device:
    username: str
    password: str
    station: str
    token: str = ""
    sent: int = 0  # writes sent, for unique timestamps

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}


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


Request = Callable[[aiohttp.ClientSession, int], Awaitable[str | None]]  # None: ok, else an error


async def run_phase(phase: Phase, request: Request, meter: CpuMeter) -> Phase:
    """`phase.concurrency` clients send `request(session, k)` for k = 0, 1, ... until the
    phase's time is up; open loop when the phase has an offered rate."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=phase.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        counter = iter(range(sys.maxsize))
        start = time.perf_counter() + 0.05
        end = start + phase.duration_s

        async def client() -> None:
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
                    error = await request(session, k)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    error = exc.__class__.__name__
                if error is None:
                    phase.ok += 1
                    latencies.append(time.perf_counter() - due)
                else:
                    phase.errors[error] = phase.errors.get(error, 0) + 1

        meter.start()
        await asyncio.gather(*(client() for _ in range(phase.concurrency)))
        phase.cpu_percent = meter.stop()
        phase.summarize(latencies, time.perf_counter() - start)
    return phase


def write_request(base: str, location: str, devices: list[Device]) -> Request:
    async def request(session: aiohttp.ClientSession, k: int) -> str | None:
        device = devices[k % len(devices)]
        device.sent += 1
        body = payload(device, device.sent)
        url = f"{base}/api/data/{location}/{device.station}"
        async with session.post(url, data=body, headers=device.headers()) as response:
            answer = await response.read()
        if response.status != 200:
            return f"HTTP {response.status}"
        if not answer.startswith(b'{"stored":4,'):
            return "not stored"
        return None

    return request


def get_request(url_of: Callable[[Device], str], devices: list[Device]) -> Request:
    async def request(session: aiohttp.ClientSession, k: int) -> str | None:
        device = devices[k % len(devices)]
        async with session.get(url_of(device), headers=device.headers()) as response:
            await response.read()
        return None if response.status == 200 else f"HTTP {response.status}"

    return request


def login_request(base: str, devices: list[Device], refresh: bool) -> Request:
    async def request(session: aiohttp.ClientSession, k: int) -> str | None:
        device = devices[k % len(devices)]
        if refresh:
            call = session.post(f"{base}/api/auth/refresh", headers=device.headers())
        else:
            body = {"username": device.username, "password": device.password}
            call = session.post(f"{base}/api/auth/login", json=body)
        async with call as response:
            answer = await response.json(content_type=None)
        if response.status != 200:
            return f"HTTP {response.status}"
        device.token = answer["access_token"]
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


def read_url(base: str, location: str) -> Callable[[Device], str]:
    return lambda d: f"{base}/api/data/{location}/{d.station}?metric=temp&limit=100"


async def run_all(args: argparse.Namespace, target: Target) -> list[Phase]:
    results = []
    base, devices = target.base, target.devices
    last_written = ""
    for index, (phase, kind) in enumerate(phases(args)):
        location = f"bench{index}"
        if kind == "write":
            request = write_request(base, location, devices)
            last_written = location
        elif kind == "read":
            request = get_request(read_url(base, last_written), devices)
        elif kind == "me":
            request = get_request(lambda _d: f"{base}/api/auth/me", devices)
        else:
            request = login_request(base, devices, refresh=kind == "refresh")
        await run_phase(phase, request, target.meter)
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
            results = asyncio.run(run_all(args, target))
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
