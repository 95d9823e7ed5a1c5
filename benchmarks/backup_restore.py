"""Backup and restore benchmark: how long ./backup.sh and ./restore.sh take, and how big the
archive gets, for InfluxDB databases of millions of points, in local mode on this machine.

For each size it runs the platform with ./run.sh (local mode, free ports, its own state
folder), fills InfluxDB with device readings as the adapter stores them (JSON messages with
ISO timestamps, a string field and several numeric fields, parsed by adapter/contract.py,
written in the adapter's batches by adapter/influx.py), and then measures, with a device
publishing through the broker and the adapter all the while:
  1. ./backup.sh: wall time, the manifest's time per component, the archive's size, and
     InfluxDB's size on disk beside it;
  2. ./clean.sh -y, a fresh ./run.sh, and ./restore.sh -y: wall time, then every point
     counted back.

    .venv/bin/python -m benchmarks.backup_restore                         # 1 and 5 million points
    .venv/bin/python -m benchmarks.backup_restore --points 2000000 --stations 1000
Results are printed and written as JSON to benchmarks/results/backup_restore.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

from adapter.contract import ParsedMessage, line_protocol, parse_message
from adapter.influx import InfluxWriter
from backup.manifest import read_manifest
from tests.mqtt_client import Publisher
from tests.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ("BAT", "TEMP", "HUMID", "PRESS")
# The adapter's default batch (MAX_BATCH_POINTS).
BATCH = 5000
START = datetime(2026, 1, 1, tzinfo=UTC)


def script(name: str, env: dict[str, str], *args: str) -> float:
    """Runs one of the platform's scripts; its wall time in seconds."""
    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / name), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{name} {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def messages(stations: int, readings: int, interval_s: int) -> Iterator[tuple[str, bytes]]:
    """Each station's readings, every interval_s seconds, as devices send them: a random walk per
    metric (so the data compresses like real data, not like constants), an ISO timestamp."""
    rng = random.Random(7)
    levels = [[rng.uniform(10, 90) for _ in METRICS] for _ in range(stations)]
    for r in range(readings):
        at = START + timedelta(seconds=r * interval_s)
        for s in range(stations):
            level = levels[s]
            for m in range(len(METRICS)):
                level[m] += rng.gauss(0, 0.3)
            body = {name: round(v, 2) for name, v in zip(METRICS, level, strict=True)}
            body["status"] = "ok"
            body["timestamp"] = (at + timedelta(milliseconds=37 * s)).isoformat().replace("+00:00", "Z")
            yield f"Site-{s % 20}/station-{s:05d}", json.dumps(body).encode()


def fill(port: int, points: int, stations: int, interval_s: int) -> tuple[int, float]:
    """Writes `points` points as the adapter would; (points written, seconds)."""
    readings = math.ceil(points / (stations * len(METRICS)))
    writer = InfluxWriter("127.0.0.1", port, "IoT_Devices", timeout_s=60)
    started = time.monotonic()
    written, batch = 0, []
    for topic, payload in messages(stations, readings, interval_s):
        parsed = parse_message(topic, payload, 0)
        assert isinstance(parsed, ParsedMessage)
        batch += [line_protocol(p) for p in parsed.points]
        if len(batch) >= BATCH:
            written += writer.write_lines(batch).written
            batch = []
    written += writer.write_lines(batch).written
    writer.close()
    return written, time.monotonic() - started


def count_points(port: int, measurements: str = "/.*/") -> int:
    answer = requests.post(
        f"http://127.0.0.1:{port}/query",
        data={"db": "IoT_Devices", "q": f'SELECT count("value") FROM {measurements}'},
        timeout=600,
    ).json()
    return sum(int(s["values"][0][1]) for r in answer["results"] for s in r.get("series", []))


class Device(threading.Thread):
    """One device publishing 50 readings a second through the broker, until stopped."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.sent, self.halt = port, 0, threading.Event()

    def run(self) -> None:
        publisher = Publisher(self.port)
        try:
            while not self.halt.is_set():
                at = START - timedelta(days=1) + timedelta(milliseconds=20 * self.sent)
                payload = {"BAT": self.sent % 100, "timestamp": at.isoformat()}
                publisher.publish("Live/device-during-backup", json.dumps(payload))
                self.sent += 1
                time.sleep(0.02)
            publisher.wait(120)
        finally:
            publisher.close()


def tsm_bytes(path: Path) -> int:
    """InfluxDB's compressed data: its TSM files (the series index and the series file, whose
    segments are preallocated, are rebuilt by a restore and are not in a backup)."""
    return sum(f.stat().st_size for f in path.rglob("*.tsm"))


def one_size(points: int, stations: int, interval_s: int, workdir: Path) -> dict[str, object]:
    env = {
        **os.environ,
        "IOT_STATE_DIR": str(workdir / "state"),
        "DOCKER_HOST": f"unix://{workdir}/no-docker-engine.sock",
        "DEBUG_DATA_FLOW": "false",
        **{
            name: str(free_port())
            for name in (
                "IOT_MQTT_PORT", "IOT_INFLUXDB_PORT", "IOT_INFLUXDB_RPC_PORT",
                "IOT_ADAPTER_METRICS_PORT", "IOT_MYSQL_PORT", "IOT_AUTH_PORT",
            )
        },
    }  # fmt: skip
    influx_port = int(env["IOT_INFLUXDB_PORT"])
    script("run.sh", env)
    try:
        written, fill_s = fill(influx_port, points, stations, interval_s)
        print(f"  filled {written:,} points in {fill_s:.0f}s ({written / fill_s:,.0f} points/s)", flush=True)
        device = Device(int(env["IOT_MQTT_PORT"]))
        device.start()
        wait_for(lambda: device.sent > 100, 30, "the device publishing")
        backup_s = script("backup.sh", env, str(workdir / "backups"))
        device.halt.set()
        device.join(180)
        wait_for(
            lambda: count_points(influx_port, '"device-during-backup.BAT"') == device.sent,
            120,
            "every reading published during the backup",
        )
        (archive,) = (workdir / "backups").glob("*.tar")
        meta = read_manifest(archive)
        script("clean.sh", env, "-y")
        script("run.sh", env)
        restore_s = script("restore.sh", env, "-y", str(archive))
        restored = count_points(influx_port)
        # A restored database is all TSM files (recent writes of a running one are still in its cache).
        influx_bytes = tsm_bytes(workdir / "state" / "local" / "influxdb" / "data")
    finally:
        script("clean.sh", env, "-y")
    result: dict[str, object] = {
        "points": written,
        "stations": stations,
        "metrics": len(METRICS),
        "interval_s": interval_s,
        "span_hours": round(math.ceil(points / (stations * len(METRICS))) * interval_s / 3600, 1),
        "fill_s": round(fill_s, 1),
        "influxdb_tsm_bytes_restored": influx_bytes,
        "archive_bytes": archive.stat().st_size,
        "influxdb_backup_bytes": int(meta["influxdb.bytes"]),
        "backup_s": round(backup_s, 1),
        "backup_influxdb_s": float(meta["influxdb.seconds"]),
        "readings_during_backup": device.sent,
        "restore_s": round(restore_s, 1),
        "points_restored": restored,
    }
    # Every filled point, and those of the live device that were stored when the backup began.
    if not written <= restored <= written + device.sent:
        raise SystemExit(f"{restored:,} points restored, expected {written:,} to {written + device.sent:,}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--stations", type=int, default=500)
    parser.add_argument("--interval", type=int, default=60, help="seconds between a station's readings")
    args = parser.parse_args()
    command = "PYTHONPATH=. .venv/bin/python -m benchmarks.backup_restore " + " ".join(sys.argv[1:])
    results: list[dict[str, object]] = []
    for points in args.points:
        print(f"{points:,} points, {args.stations} stations x {len(METRICS)} metrics:", flush=True)
        with tempfile.TemporaryDirectory(prefix="iot-bench-backup-") as work:
            result = one_size(points, args.stations, args.interval, Path(work))
        results.append(result)
        print(
            f"  backup {result['backup_s']}s (InfluxDB {result['backup_influxdb_s']}s), archive "
            f"{result['archive_bytes'] / 2**20:.1f} MiB "
            f"(InfluxDB's TSM files once restored {result['influxdb_tsm_bytes_restored'] / 2**20:.1f} MiB); "
            f"{result['readings_during_backup']} readings published during it, all stored; "
            f"restore {result['restore_s']}s, {result['points_restored']:,} points back",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}
    (RESULTS / "backup_restore.json").write_text(
        json.dumps({"command": command.strip(), "machine": machine, "results": results}, indent=2) + "\n"
    )
    print(f"(by: {command.strip()})")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
