"""Dashboard cost at fleet scale: what one refresh of each dashboard asks of InfluxDB.

Starts its own influxd (tsi1 index, as the stack), fills it with a fleet written exactly
as the adapter writes it (adapter.contract.Point → line_protocol, through the adapter's
InfluxWriter: measurement `<station>.<metric>`, tags location and station, field value,
millisecond timestamps with a phase of their own per device), then replays one refresh of
each provisioned dashboard the way Grafana 11 sends it (tests/grafana/grafana_model.py:
both `$timeFilter` renderings, the grouping variable at `1s` and at `auto` on a 1,000 px
wide dashboard) and prints, per dashboard and setting: queries sent to InfluxDB per
refresh, InfluxDB time (request to last byte, median of the runs), rows and bytes returned,
the CPU time influxd spent on it (read from /proc, so other load on the machine does not
inflate it the way it inflates the elapsed time), and the longest series against the bound
of twice the panel's width.

    .venv/bin/python -m benchmarks.dashboards                   # both fleets below
    .venv/bin/python -m benchmarks.dashboards --fleet issue     # one of them
    .venv/bin/python -m benchmarks.dashboards --repeat 5 --width 1920

Fleets (`--fleet`):
  issue  the data set of issue 13: 50 UPB stations (TEMP, HUMID, BAT every 10 s for 6 h)
         and 500 devices at 10 other locations (BAT every 60 s for 48 h), 1.76 M points;
  large  1,000 devices every 10 s for 48 h: 100 UPB stations (TEMP, HUMID, BAT) and 900
         devices elsewhere (BAT), 20.7 M points.
Results are printed and written as JSON to benchmarks/results/dashboards.json.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from adapter.contract import Point, line_protocol
from adapter.influx import InfluxWriter, TransientWriteError
from tests.grafana.dashboards import load_dashboard
from tests.grafana.grafana_model import Mode, panel_width_px, panels_of, refresh
from tests.servers import InfluxServer, require_binary

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATABASE = "IoT_Devices"
DASHBOARDS = ("upb_iot_data.json", "battery_dashboard.json")
BATCH_LINES = 50_000
# A query that takes this long is run once: its cost is plain without a median.
ONCE_S = 30.0


@dataclass(frozen=True)
class DeviceGroup:
    """Devices of one kind: where they are, what they send, how often, for how long."""

    count: int
    locations: tuple[str, ...]
    metrics: tuple[str, ...]
    period_s: int
    hours: int
    prefix: str

    @property
    def points(self) -> int:
        return self.count * len(self.metrics) * (self.hours * 3600 // self.period_s)


@dataclass(frozen=True)
class Fleet:
    name: str
    groups: tuple[DeviceGroup, ...]

    @property
    def points(self) -> int:
        return sum(g.points for g in self.groups)

    @property
    def devices(self) -> int:
        return sum(g.count for g in self.groups)


SITES = tuple(f"Site_{i:02d}" for i in range(10))
FLEETS = {
    "issue": Fleet(
        "issue",
        (
            DeviceGroup(50, ("UPB",), ("TEMP", "HUMID", "BAT"), 10, 6, "RPi_"),
            DeviceGroup(500, SITES, ("BAT",), 60, 48, "Dev_"),
        ),
    ),
    "large": Fleet(
        "large",
        (
            DeviceGroup(100, ("UPB",), ("TEMP", "HUMID", "BAT"), 10, 48, "RPi_"),
            DeviceGroup(900, SITES, ("BAT",), 10, 48, "Dev_"),
        ),
    ),
}


def reading(metric: str, device: int, step: int) -> float:
    """A plausible value: batteries drain from their own level, temperature and humidity wave."""
    if metric == "BAT":
        return round(max(5.0, 100.0 - device % 40 - step * 0.002) + (step * 7 % 10) / 10, 1)
    if metric == "TEMP":
        return round(21.0 + 4.0 * math.sin(step / 360 + device) + (step % 7) / 10, 2)
    return round(45.0 + 15.0 * math.sin(step / 500 + device / 3), 1)


def group_points(group: DeviceGroup, first: int, last: int, now_ms: int) -> Iterator[Point]:
    """Points of devices first..last-1 of the group, oldest first, each device with its
    own phase within the period (devices do not report in the same millisecond)."""
    period_ms = group.period_s * 1000
    steps = group.hours * 3600 // group.period_s
    for device in range(first, last):
        location = group.locations[device % len(group.locations)]
        station = f"{group.prefix}{device:04d}"
        phase_ms = (device * 7919) % period_ms
        for step in range(steps):
            t_ms = now_ms - (steps - step) * period_ms + phase_ms
            for metric in group.metrics:
                yield Point(location, station, metric, reading(metric, device, step), t_ms * 1_000_000)


def write_devices(job: tuple[int, str, DeviceGroup, int, int, int]) -> int:
    """Worker: write one slice of a group's devices in batches; the points written."""
    port, database, group, first, last, now_ms = job
    writer = InfluxWriter("127.0.0.1", port, database, timeout_s=120)
    written = 0
    batch: list[str] = []

    def flush() -> int:
        for attempt in range(10):
            try:
                result = writer.write_lines(batch)
            except TransientWriteError:  # the cache is full while InfluxDB snapshots it
                time.sleep(0.5 * (attempt + 1))
                continue
            if result.dropped:
                raise RuntimeError(f"InfluxDB refused {result.dropped} points: {result.error}")
            return result.written
        raise RuntimeError("InfluxDB kept failing the writes")

    try:
        for point in group_points(group, first, last, now_ms):
            batch.append(line_protocol(point))
            if len(batch) >= BATCH_LINES:
                written += flush()
                batch = []
        if batch:
            written += flush()
    finally:
        writer.close()
    return written


def fill(influx: InfluxServer, fleet: Fleet, now_ms: int, workers: int) -> float:
    """Write the whole fleet; the seconds it took."""
    influx.query(f'CREATE DATABASE "{DATABASE}" WITH DURATION INF')
    jobs = []
    for group in fleet.groups:
        slice_size = max(1, group.count // (workers * 4))
        jobs += [
            (influx.port, DATABASE, group, first, min(first + slice_size, group.count), now_ms)
            for first in range(0, group.count, slice_size)
        ]
    started = time.monotonic()
    with multiprocessing.Pool(workers) as pool:
        written = sum(pool.imap_unordered(write_devices, jobs))
    elapsed = time.monotonic() - started
    if written != fleet.points:
        raise RuntimeError(f"wrote {written} points, expected {fleet.points}")
    return elapsed


class BenchInflux(InfluxServer):
    """The test harness's influxd with the stack's disk-based series index."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        text = self.config_path.read_text().replace("[data]\n", '[data]\n  index-version = "tsi1"\n')
        self.config_path.write_text(text)


class ResponseCounter:
    """Counts series, rows and bytes of an InfluxDB JSON answer as it streams in, without
    parsing it: each `"values":` opens a series with its first row, each `],[` between two
    rows adds one. (A tag value holding `],[` would be miscounted; the fleets have none.)"""

    TOKENS = re.compile(rb'\],\[|"values":')
    # A token may straddle two chunks: the next window starts this many bytes earlier.
    OVERLAP = len(b'"values":') - 1

    def __init__(self) -> None:
        self.bytes = 0
        self.rows = 0
        self.series = 0
        self.longest = 0
        self._current = 0
        self._tail = b""
        self.head = b""

    def feed(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        if len(self.head) < 4096:
            self.head += chunk[: 4096 - len(self.head)]
        window = self._tail + chunk
        for m in self.TOKENS.finditer(window):
            if m.end() <= len(self._tail):
                continue  # wholly in the previous window: counted there
            if m[0] == b"],[":
                self._current += 1
            else:
                self.series += 1
                self._current = 1
            self.rows += 1
            self.longest = max(self.longest, self._current)
        self._tail = window[-self.OVERLAP :]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class QueryCost:
    panel: str
    text: str
    interval_ms: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    rows: int = 0
    series: int = 0
    longest_series: int = 0
    bytes: int = 0

    @property
    def group_by(self) -> str | None:
        """The `GROUP BY time(...)` the query ended with, None for a whole-range aggregation."""
        m = re.search(r"GROUP BY time\((\w+)\)", self.text)
        return m[1] if m else None

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(self.cpu_seconds)


def measure(influx: InfluxServer, text: str, repeat: int) -> tuple[list[float], list[float], ResponseCounter]:
    """Run one query as Grafana's backend does (POST, epoch=ms, not chunked): the elapsed
    and influxd CPU seconds of each run, and the last answer's counts."""
    assert influx.proc is not None
    times: list[float] = []
    cpu: list[float] = []
    counter = ResponseCounter()
    for _ in range(repeat):
        counter = ResponseCounter()
        cpu_before = cpu_seconds(influx.proc.pid)
        started = time.monotonic()
        with requests.post(
            f"{influx.url}/query",
            params={"db": DATABASE, "epoch": "ms"},
            data={"q": text},
            stream=True,
            timeout=3600,
        ) as response:
            response.raise_for_status()
            for chunk in response.iter_content(1 << 20):
                counter.feed(chunk)
        times.append(time.monotonic() - started)
        cpu.append(cpu_seconds(influx.proc.pid) - cpu_before)
        if b'"error"' in counter.head:
            raise RuntimeError(f"InfluxDB error for {text!r}: {counter.head[:300]!r}")
        if times[-1] > ONCE_S:
            break
    return times, cpu, counter


def run_dashboard(
    influx: InfluxServer, name: str, choice: str, mode: Mode, *, width_px: int, repeat: int
) -> dict[str, Any]:
    dashboard = load_dashboard(name)
    titles = {p["id"]: p["title"] for p in panels_of(dashboard)}
    costs: list[QueryCost] = []

    def execute(text: str) -> dict[str, Any]:
        # Measured here, handed to the model as an empty answer: the benchmark weighs what
        # InfluxDB does and ships, not the browser's work on the frames.
        seconds, cpu, counted = measure(influx, text, repeat)
        costs.append(
            QueryCost("", text, 0, seconds, cpu, counted.rows, counted.series, counted.longest, counted.bytes)
        )
        return {"results": [{}]}

    result = refresh(
        dashboard,
        execute,
        now_ms=int(time.time() * 1000),
        mode=mode,
        dashboard_width_px=width_px,
        choices={"grouping": choice},
    )
    for cost, sent in zip(costs, result.queries, strict=True):
        cost.panel, cost.interval_ms = titles[sent.panel_id], sent.interval_ms
    widths = {titles[p["id"]]: panel_width_px(p, width_px) for p in panels_of(dashboard)}
    return {
        "dashboard": dashboard["title"],
        "grouping": choice,
        "mode": mode.value,
        "queries_per_refresh": len(result.queries),
        "panels": len(titles),
        "seconds": sum(c.median_s for c in costs),
        "cpu_seconds": sum(c.median_cpu_s for c in costs),
        "rows": sum(c.rows for c in costs),
        "bytes": sum(c.bytes for c in costs),
        "queries": [
            {
                **asdict(c),
                "median_s": c.median_s,
                "median_cpu_s": c.median_cpu_s,
                "group_by": c.group_by,
                "panel_width_px": widths[c.panel],
            }
            for c in costs
        ],
    }


def influxd_version() -> str:
    out = subprocess.run([require_binary("influxd"), "version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def print_run(run: dict[str, Any]) -> None:
    print(
        f"  {run['dashboard']:<18} grouping={run['grouping']:<5} {run['mode']:<8} "
        f"{run['queries_per_refresh']} queries/refresh  {run['seconds']:7.2f} s "
        f"(influxd CPU {run['cpu_seconds']:6.2f} s)  "
        f"{run['rows']:>10,} rows  {run['bytes'] / 1e6:9.1f} MB",
        flush=True,
    )
    for q in run["queries"]:
        shape = (
            f"longest {q['longest_series']:,} ≤ {2 * q['panel_width_px']:,}?"
            if q["group_by"]
            else "one row per device"
        )
        print(
            f"      {q['panel']:<20} {q['median_s']:7.2f} s (CPU {q['median_cpu_s']:6.2f} s)"
            f"  {q['rows']:>10,} rows in {q['series']:>4} series"
            f" ({shape})  {q['bytes'] / 1e6:8.1f} MB  group {q['group_by'] or 'whole range'}"
            f"  runs {', '.join(f'{s:.2f}' for s in q['seconds'])}",
            flush=True,
        )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Raised in the main thread: the `finally` blocks stop influxd and remove its data.
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fleet", nargs="+", choices=sorted(FLEETS), default=["issue", "large"])
    parser.add_argument("--width", type=int, default=1000, help="dashboard width in pixels (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each query (median reported)")
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--groupings", nargs="+", default=["1s", "auto", "5m"])
    args = parser.parse_args()

    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "influxd": influxd_version(),
        "width_px": args.width,
        "command": "python -m benchmarks.dashboards " + " ".join(sys.argv[1:]),
        "fleets": {},
    }
    if (RESULTS / "dashboards.json").exists():
        # A run of some fleets keeps the others' last results.
        results["fleets"] = json.loads((RESULTS / "dashboards.json").read_text()).get("fleets", {})
    for name in args.fleet:
        fleet = FLEETS[name]
        with tempfile.TemporaryDirectory(prefix="iot-dash-bench-") as tmp:
            influx = BenchInflux(Path(tmp) / "influxd")
            influx.start(timeout_s=60)
            try:
                print(f"fleet {name}: {fleet.devices:,} devices, {fleet.points:,} points", flush=True)
                write_s = fill(influx, fleet, int(time.time() * 1000), args.workers)
                print(f"  written in {write_s:.0f} s ({fleet.points / write_s:,.0f} points/s)", flush=True)
                runs = []
                for dashboard in DASHBOARDS:
                    for choice in args.groupings:
                        for mode in Mode:
                            run = run_dashboard(
                                influx, dashboard, choice, mode, width_px=args.width, repeat=args.repeat
                            )
                            print_run(run)
                            runs.append(run)
            finally:
                influx.stop()
        results["fleets"][name] = {
            **asdict(fleet),
            "points": fleet.points,
            "devices": fleet.devices,
            "write_seconds": write_s,
            "runs": runs,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "dashboards.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
