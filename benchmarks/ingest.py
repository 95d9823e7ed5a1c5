"""End-to-end ingest benchmark: MQTT publish → stored in InfluxDB, on this machine.

Starts its own mosquitto and influxd (as the tests do), then measures, with the same
publishers (several `mosquitto_pub -l` processes, QoS 1, 3 numeric fields per message):
  1. the broker's own rate into a plain `mosquitto_sub` drain;
  2. the real adapter (`python adapter/adapter.py`), first publish → last point stored,
     with zero loss checked by counting the points, and the adapter's peak RSS;
  3. a naive adapter that writes each message with its own HTTP request;
  4. publish-to-stored latency percentiles at a steady offered load.

    .venv/bin/python -m benchmarks.ingest                  # defaults below
    .venv/bin/python -m benchmarks.ingest --messages 100000 --publishers 4 --latency-rate 5000
Results are printed and written as JSON to benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import requests

from tests.servers import AdapterProcess, InfluxServer, MosquittoServer, require_binary, wait_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIELDS = 3
T0_MS = 1_700_000_000_000


def write_payload_files(workdir: Path, messages: int, publishers: int) -> list[tuple[str, Path]]:
    """One file per publisher, one JSON message per line, each with a unique timestamp."""
    files = []
    for p in range(publishers):
        path = workdir / f"pub{p}.txt"
        with open(path, "w") as fh:
            for i in range(p, messages, publishers):
                fh.write(
                    f'{{"temp": {20 + i % 10}.5, "hum": {i % 100}, "bat": 99, "timestamp": {T0_MS + i}}}\n'
                )
        files.append((f"Bench/Dev{p}", path))
    return files


def run_publishers(port: int, files: list[tuple[str, Path]]) -> list[subprocess.Popen[bytes]]:
    binary = require_binary("mosquitto_pub")
    procs = []
    for topic, path in files:
        with open(path, "rb") as stdin:
            procs.append(
                subprocess.Popen(
                    [binary, "-p", str(port), "-q", "1", "-t", topic, "-l", "-M", "1000"], stdin=stdin
                )
            )
    return procs


def wait_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.wait(600) != 0:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")


def broker_rate(broker: MosquittoServer, files: list[tuple[str, Path]], messages: int) -> float:
    sub = subprocess.Popen(
        [
            require_binary("mosquitto_sub"),
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-t",
            "Bench/#",
            "-C",
            str(messages),
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # mosquitto_sub gives no readiness signal; it only has to be subscribed
    started = time.monotonic()
    wait_all(run_publishers(broker.port, files))
    sub.wait(600)
    return messages / (time.monotonic() - started)


def adapter_rate(  # noqa: PLR0917
    broker: MosquittoServer,
    influx: InfluxServer,
    workdir: Path,
    files: list[tuple[str, Path]],
    messages: int,
    database: str,
    replicas: int = 1,
) -> dict[str, float]:
    """First publish → last point stored, with `replicas` adapter processes."""
    env = {} if replicas == 1 else {"MQTT_TOPIC": "$share/bench/#"}
    adapters = [
        AdapterProcess(
            workdir / f"{database}-{slot}",
            broker,
            influx,
            database,
            MQTT_CLIENT_ID=f"{database}-{slot}",
            **env,
        )
        for slot in range(1, replicas + 1)
    ]
    try:
        for adapter in adapters:
            adapter.start()
        started = time.monotonic()
        wait_all(run_publishers(broker.port, files))
        published = time.monotonic() - started
        wait_for(
            lambda: sum(a.metric("adapter_points_written_total") for a in adapters) >= messages * FIELDS,
            600,
            "all points stored",
        )
        elapsed = time.monotonic() - started
        stored = influx.count_points(database)
        rss_kb = max(_peak_rss_kb(a.proc.pid) for a in adapters if a.proc is not None)
    finally:
        for adapter in adapters:
            adapter.stop()
    return {
        "replicas": replicas,
        "messages_per_s": messages / elapsed,
        "points_per_s": stored / elapsed,
        "seconds": elapsed,
        "publish_seconds": published,
        "stored_points": stored,
        "expected_points": messages * FIELDS,
        "peak_rss_mb": rss_kb / 1024,
    }


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def naive_rate(
    broker: MosquittoServer, influx: InfluxServer, files: list[tuple[str, Path]], messages: int
) -> float:
    """The public implementations' design: one HTTP write per message, auto-ack."""
    database = "naive"
    requests.post(f"{influx.url}/query", data={"q": f"CREATE DATABASE {database}"}, timeout=10)
    session = requests.Session()
    done = threading.Event()
    count = 0

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal count
        data = json.loads(msg.payload)
        station = msg.topic.split("/")[1]
        ts = data.pop("timestamp")
        body = "\n".join(
            f"{station}.{k},location=Bench,station={station} value={float(v)} {ts}" for k, v in data.items()
        )
        session.post(f"{influx.url}/write", params={"db": database, "precision": "ms"}, data=body, timeout=10)
        count += 1
        if count == messages:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="naive", clean_session=False)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe("Bench/#", qos=1)
    client.loop_start()
    time.sleep(0.5)
    started = time.monotonic()
    wait_all(run_publishers(broker.port, files))
    done.wait(600)
    elapsed = time.monotonic() - started
    client.loop_stop()
    return messages / elapsed


LATENCY_PUBLISHER = r"""
import json, sys, time
import paho.mqtt.client as mqtt
port, rate, seconds, name = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
c.max_inflight_messages_set(10000)
c.connect("127.0.0.1", port)
c.loop_start()
n = int(rate * seconds)
start = time.monotonic()
for i in range(n):
    ahead = start + i / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
    # The device timestamp is the publish time: stored time minus it is the latency.
    payload = json.dumps({"a": i, "b": 1, "c": 2, "timestamp": time.time()})
    info = c.publish(f"Lat/{name}-{i % 10}", payload, qos=1)
info.wait_for_publish(60)
print(n / (time.monotonic() - start))
c.disconnect()
c.loop_stop()
"""


def latency(
    broker: MosquittoServer, influx: InfluxServer, workdir: Path, rate: float, seconds: float
) -> dict:
    """Publish at a steady rate; the adapter's own write-ack times give publish → stored latency."""
    database = f"latency_{int(rate)}"
    adapter = AdapterProcess(
        workdir / database, broker, influx, database, BENCH_LATENCY_LOG=str(workdir / f"{database}.lat")
    )
    adapter.command = lambda: [sys.executable, "-m", "benchmarks.latency_adapter"]  # type: ignore[method-assign]
    adapter.env["PYTHONPATH"] = str(ROOT)
    adapter.start()
    try:
        # One Python publisher keeps a steady pace up to about 3,000 msg/s here: split the
        # offered load over enough of them that the publishers never lag behind their clock.
        count = max(1, math.ceil(rate / 3000))
        publishers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    LATENCY_PUBLISHER,
                    str(broker.port),
                    str(rate / count),
                    str(seconds),
                    f"lat{p}",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for p in range(count)
        ]
        achieved = sum(float(proc.communicate(timeout=600)[0].strip()) for proc in publishers)
        if any(proc.returncode for proc in publishers):
            raise RuntimeError("a latency publisher failed")
        n = int(rate / count * seconds) * count
        wait_for(
            lambda: adapter.metric("adapter_points_written_total") >= n * FIELDS, 120, "latency points stored"
        )
    finally:
        adapter.stop()
    values = sorted(float(x) for x in Path(workdir / f"{database}.lat").read_text().split())
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))] * 1000  # noqa: E731
    return {
        "rate": rate,
        "achieved_rate": achieved,
        "messages": len(values),
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "max_ms": values[-1] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--naive-messages", type=int, default=10_000)
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 2], help="adapter processes per run")
    # The latency publisher is one Python process: about 8,000 msg/s is its own ceiling here.
    parser.add_argument(
        "--latency-rate", type=float, nargs="*", default=[1000.0, 2500.0, 5000.0, 7500.0, 10000.0]
    )
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["broker", "adapter", "naive", "latency"])
    args = parser.parse_args()

    results: dict[str, object] = {}
    if args.skip and (RESULTS / "ingest.json").exists():
        # A partial run updates the phases it ran and keeps the others' last results.
        results = json.loads((RESULTS / "ingest.json").read_text())
    results.update({"cpus": os.cpu_count(), "messages": args.messages, "publishers": args.publishers})
    with tempfile.TemporaryDirectory(prefix="iot-bench-") as tmp:
        workdir = Path(tmp)
        influx = InfluxServer(workdir / "influxd")
        influx.start()
        broker = MosquittoServer(workdir / "mosquitto")
        broker.start()
        try:
            files = write_payload_files(workdir, args.messages, args.publishers)
            if "broker" not in args.skip:
                results["broker_msgs_per_s"] = broker_rate(broker, files, args.messages)
                print(f"broker (mosquitto_sub drain): {results['broker_msgs_per_s']:,.0f} msg/s", flush=True)
            if "adapter" not in args.skip:
                runs = []
                for replicas in args.adapters:
                    r = adapter_rate(
                        broker, influx, workdir, files, args.messages, f"bench{replicas}", replicas
                    )
                    runs.append(r)
                    print(
                        f"adapter x{replicas}: {r['messages_per_s']:,.0f} msg/s, "
                        f"{r['points_per_s']:,.0f} points/s, "
                        f"{r['stored_points']}/{r['expected_points']} points stored, "
                        f"peak RSS {r['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
                results["adapter_runs"] = runs
                results["adapter"] = runs[0]
            if "naive" not in args.skip:
                (workdir / "naive").mkdir()
                naive_files = write_payload_files(workdir / "naive", args.naive_messages, args.publishers)
                results["naive_msgs_per_s"] = naive_rate(broker, influx, naive_files, args.naive_messages)
                print(
                    f"naive adapter (one HTTP write per message): {results['naive_msgs_per_s']:,.0f} msg/s",
                    flush=True,
                )
            if "latency" not in args.skip:
                results["latency"] = [
                    latency(broker, influx, workdir, rate, args.latency_seconds) for rate in args.latency_rate
                ]
                for lat in results["latency"]:  # type: ignore[union-attr]
                    print(
                        f"latency at {lat['rate']:,.0f} msg/s offered ({lat['achieved_rate']:,.0f} sent): "
                        f"p50 {lat['p50_ms']:.1f} ms, "
                        f"p95 {lat['p95_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms",
                        flush=True,
                    )
        finally:
            broker.stop()
            influx.stop()
    if "adapter" in results and "naive_msgs_per_s" in results:
        ratio = results["adapter"]["messages_per_s"] / results["naive_msgs_per_s"]  # type: ignore[index]
        results["adapter_vs_naive"] = ratio
        print(f"adapter / naive: {ratio:.1f}x")
    if "adapter" in results and "broker_msgs_per_s" in results:
        ratio = results["adapter"]["messages_per_s"] / results["broker_msgs_per_s"]  # type: ignore[index]
        results["adapter_vs_broker"] = ratio
        print(f"adapter / broker drain: {ratio:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
