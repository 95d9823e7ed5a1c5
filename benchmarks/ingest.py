"""End-to-end ingest benchmark: MQTT publish → stored in InfluxDB, on this machine.

Starts its own mosquitto and influxd (as the tests do). For each workload (benchmarks/mqtt_load.py:
`realistic` by default — 1,000 stations in 10 locations, ISO timestamps with milliseconds, a string
value in every message — and `easy`, the first benchmark's four stations with epoch timestamps), with
the same raw-socket publishers (QoS 1, every packet encoded before the clock starts):
  1. the broker's own rate into a plain `mosquitto_sub` drain;
  2. the real adapter (`python adapter/adapter.py`), first publish → last point stored, with zero
     loss checked by counting the points in InfluxDB, its rate in the first and the last quarter of
     the run, its CPU time per message and peak RSS; 1 and 2 processes (shared subscription);
  3. the same with DEBUG_DATA_FLOW=true and the adapter's stdout going to a file (as Docker's log
     driver reads it), every data-flow line checked;
and once: 4. a naive adapter that writes each message with its own HTTP request (easy workload);
5. publish-to-stored latency percentiles at a steady offered load.

    .venv/bin/python -m benchmarks.ingest                               # realistic, 2,000,000 messages
    .venv/bin/python -m benchmarks.ingest --workload easy --messages 100000
    .venv/bin/python -m benchmarks.ingest --workload realistic easy --skip naive latency
    .venv/bin/python -m benchmarks.ingest --adapter /path/to/other/checkout/adapter/adapter.py  # A/B
Results are printed and written as JSON to benchmarks/results/ingest.json (a run updates the
workloads and phases it ran and keeps the others); `python -m benchmarks.plot` draws them.
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
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import requests

from benchmarks.mqtt_load import WORKLOADS, LoadGenerator, Workload
from tests.servers import AdapterProcess, InfluxServer, MosquittoServer, require_binary, wait_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIELDS = 3
DEFAULT_MESSAGES = {"realistic": 2_000_000, "easy": 100_000}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def bench_broker(tmp: Path) -> MosquittoServer:
    """The test broker, with an unbounded queue: the whole run may wait in the adapter's session
    (the publishers outrun the adapter), and the benchmark counts every point, so nothing may be
    dropped for lack of queue."""
    broker = MosquittoServer(tmp, extra_config="max_queued_bytes 0\n")
    # The stack's autosave interval (mosquitto.conf), not the tests' 1 s: with a run's messages
    # queued, saving hundreds of MB every second would make the broker the bottleneck.
    broker.config_path.write_text(
        broker.config_path.read_text()
        .replace("max_queued_messages 1000000", "max_queued_messages 0")
        .replace("autosave_interval 1\n", "autosave_interval 60\n")
    )
    return broker


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def broker_rate(broker: MosquittoServer, workload: Workload, messages: int, connections: int) -> dict:
    sub = subprocess.Popen(
        [require_binary("mosquitto_sub"), "-p", str(broker.port), "-q", "1", "-t", "#", "-C", str(messages)],
        stdout=subprocess.DEVNULL,
    )
    load = LoadGenerator(broker.port, workload, messages, connections=connections)
    try:
        load.wait_ready()  # also time for mosquitto_sub, which gives no readiness signal, to subscribe
        time.sleep(0.5)
        cpu0 = cpu_seconds(broker.proc.pid)  # type: ignore[union-attr]
        started, published = load.run()
        sub.wait(3600)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(broker.proc.pid) - cpu0  # type: ignore[union-attr]
    finally:
        load.close()
        if sub.poll() is None:
            sub.kill()
    return {
        "messages_per_s": messages / elapsed,
        "publish_messages_per_s": messages / published,
        "seconds": elapsed,
        "broker_cpu_share": cpu / elapsed,
    }


@dataclass
class Progress:
    """(monotonic time, points written) samples of a run, from the adapters' metrics."""

    samples: list[tuple[float, float]] = field(default_factory=list)

    def time_at(self, points: float) -> float:
        for (t0, p0), (t1, p1) in zip(self.samples, self.samples[1:], strict=False):
            if p1 >= points:
                return t0 if p1 == p0 else t0 + (t1 - t0) * (points - p0) / (p1 - p0)
        return self.samples[-1][0]


def adapter_rate(  # noqa: PLR0917
    broker: MosquittoServer,
    influx: InfluxServer,
    workdir: Path,
    workload: Workload,
    messages: int,
    connections: int,
    database: str,
    replicas: int = 1,
    data_flow_log: bool = False,
    adapter_script: Path | None = None,
) -> dict:
    """First publish → last point stored, with `replicas` adapter processes."""
    env = {} if replicas == 1 else {"MQTT_TOPIC": f"$share/{database}/#"}
    if data_flow_log:
        env["DEBUG_DATA_FLOW"] = "true"
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
    expected = workload.points(messages)
    progress = Progress()
    load = None
    try:
        for adapter in adapters:
            if adapter_script is not None:
                adapter.command = lambda: [sys.executable, str(adapter_script)]  # type: ignore[method-assign]
            adapter.start()
        load = LoadGenerator(broker.port, workload, messages, connections=connections)
        load.wait_ready()
        cpu0 = sum(cpu_seconds(a.proc.pid) for a in adapters)  # type: ignore[union-attr]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                written = sum(a.metric("adapter_points_written_total") for a in adapters)
                progress.samples.append((time.monotonic(), written))
                if written >= expected:
                    return
                taken = sum(a.metric("adapter_messages_received_total") for a in adapters)
                if taken >= messages and not any(a.metric("adapter_unacked_messages") for a in adapters):
                    return  # everything was handled, and not every point was written: reported below
                done.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        started, published = load.run()
        progress.samples.append((started, 0.0))
        sampler.start()
        sampler.join(3600)
        done.set()
        if progress.samples[-1][1] < expected:  # the sampler may have read the counter just before the end
            written = sum(a.metric("adapter_points_written_total") for a in adapters)
            progress.samples.append((time.monotonic(), written))
        if progress.samples[-1][1] < expected:
            raise RuntimeError(f"only {progress.samples[-1][1]:.0f} of {expected} points were written")
        progress.samples.sort()
        elapsed = progress.samples[-1][0] - started
        cpu = sum(cpu_seconds(a.proc.pid) for a in adapters) - cpu0  # type: ignore[union-attr]
        stored = influx.count_points(database)
        rss_kb = max(_peak_rss_kb(a.proc.pid) for a in adapters if a.proc is not None)
    finally:
        if load is not None:
            load.close()
        for adapter in adapters:
            adapter.stop()
    quarter = expected / 4
    first_q = quarter / (progress.time_at(quarter) - started)
    last_q = quarter / (progress.samples[-1][0] - progress.time_at(3 * quarter))
    result = {
        "replicas": replicas,
        "data_flow_log": data_flow_log,
        "messages_per_s": messages / elapsed,
        "points_per_s": stored / elapsed,
        "first_quarter_messages_per_s": first_q / FIELDS,
        "last_quarter_messages_per_s": last_q / FIELDS,
        "seconds": elapsed,
        "publish_seconds": published,
        "stored_points": stored,
        "expected_points": expected,
        "cpu_us_per_message": cpu / messages * 1e6,
        "peak_rss_mb": rss_kb / 1024,
    }
    if data_flow_log:
        result["log_lines_checked"] = check_data_flow_log(
            [a.log_path for a in adapters], workload, messages, connections
        )
    return result


def check_data_flow_log(logs: list[Path], workload: Workload, messages: int, connections: int) -> int:
    """Every message's data-flow lines, in order, exactly as the contract shows them; returns lines checked.

    Each station's messages reach the adapter in the order they were published, so the k-th
    "Received" line for a topic must be followed by message k's timestamp line and one line per value.
    """
    from adapter.adapter import format_value  # the number format is the adapter's own (99, 21.5)

    payloads: dict[str, list[bytes]] = {}
    for c in range(connections):
        for topic, payload in workload.messages(messages, c, connections):
            payloads.setdefault(topic, []).append(payload)
    cursor = dict.fromkeys(payloads, 0)
    received = "Received a message by topic ["
    checked = 0
    for log in logs:
        with open(log, encoding="utf-8") as fh:
            # "2019-11-27 18:38:14 <message>": the message starts after the 19-character time.
            lines = (line[20:].rstrip("\n") for line in fh if line[19:20] == " ")
            for line in lines:
                if not line.startswith(received):
                    continue
                topic = line[len(received) : -1]
                data = json.loads(payloads[topic][cursor[topic]])
                cursor[topic] += 1
                location, station = topic.split("/")
                want = [f"Data timestamp is: {_shown_time(data.pop('timestamp'))}"] + [
                    f"{location}.{station}.{key} {format_value(float(value))}"
                    for key, value in data.items()
                    if not isinstance(value, str)
                ]
                for expected_line in want:
                    got = next(lines, None)
                    if got != expected_line:
                        raise RuntimeError(f"data-flow line {got!r}, expected {expected_line!r}")
                checked += 1 + len(want)
    missing = sum(len(p) - cursor[t] for t, p in payloads.items())
    if missing:
        raise RuntimeError(f"{missing} messages have no data-flow lines")
    return checked


def _shown_time(stamp: str | int) -> str:
    """How the contract's log shows a device timestamp: ISO as sent with a space; epochs in UTC."""
    if isinstance(stamp, str):
        return stamp[:10] + " " + stamp[11:].removesuffix("Z") + "+00:00"
    seconds, ms = divmod(stamp, 1000)
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}".rstrip("0").rstrip(".")
    return text + "+00:00"


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def naive_rate(broker: MosquittoServer, influx: InfluxServer, messages: int, connections: int) -> float:
    """The public implementations' design: one HTTP write per message, auto-ack (easy workload)."""
    database = "naive"
    requests.post(f"{influx.url}/query", data={"q": f"CREATE DATABASE {database}"}, timeout=10)
    session = requests.Session()
    done = threading.Event()
    count = 0

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        nonlocal count
        data = json.loads(msg.payload)
        location, station = msg.topic.split("/")
        ts = data.pop("timestamp")
        body = "\n".join(
            f"{station}.{k},location={location},station={station} value={float(v)} {ts}"
            for k, v in data.items()
        )
        session.post(f"{influx.url}/write", params={"db": database, "precision": "ms"}, data=body, timeout=10)
        count += 1
        if count == messages:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="naive", clean_session=False)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe("#", qos=1)
    client.loop_start()
    load = LoadGenerator(broker.port, WORKLOADS["easy"], messages, connections=connections)
    try:
        load.wait_ready()
        started, _ = load.run()
        done.wait(600)
        elapsed = time.monotonic() - started
    finally:
        load.close()
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


def run_workload(
    args: argparse.Namespace, workload: Workload, broker: MosquittoServer, influx: InfluxServer, workdir: Path
) -> dict:
    messages = args.messages or DEFAULT_MESSAGES[workload.name]
    out: dict = {"messages": messages, "connections": args.connections, "description": workload.description}
    name = workload.name
    if "broker" not in args.skip:
        out["broker"] = broker_rate(broker, workload, messages, args.connections)
        print(
            f"[{name}] broker (mosquitto_sub drain): {out['broker']['messages_per_s']:,.0f} msg/s", flush=True
        )
    runs = []
    plan = [] if "adapter" in args.skip else [(r, False) for r in args.adapters]
    if "log" not in args.skip:
        plan.append((1, True))
    for replicas, log_on in plan:
        database = f"bench_{name}_{replicas}{'_log' if log_on else ''}"
        r = adapter_rate(
            broker,
            influx,
            workdir,
            workload,
            messages,
            args.connections,
            database,
            replicas,
            log_on,
            args.adapter,
        )
        runs.append(r)
        drain = out.get("broker", {}).get("messages_per_s")
        share = f", {r['messages_per_s'] / drain:.0%} of the broker's drain" if drain else ""
        print(
            f"[{name}] adapter x{replicas}{' with DEBUG_DATA_FLOW=true' if log_on else ''}: "
            f"{r['messages_per_s']:,.0f} msg/s{share} "
            f"(first quarter {r['first_quarter_messages_per_s']:,.0f}, "
            f"last quarter {r['last_quarter_messages_per_s']:,.0f}), "
            f"{r['stored_points']}/{r['expected_points']} points stored, "
            f"{r['cpu_us_per_message']:.1f} µs CPU/message, peak RSS {r['peak_rss_mb']:.0f} MB"
            + (f", {r['log_lines_checked']:,} log lines checked" if log_on else ""),
            flush=True,
        )
    if runs:
        out["adapter_runs"] = runs
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", nargs="+", choices=sorted(WORKLOADS), default=["realistic"])
    parser.add_argument(
        "--messages", type=int, default=0, help="per workload (default: realistic 2,000,000, easy 100,000)"
    )
    parser.add_argument("--connections", type=int, default=2, help="publisher processes (MQTT connections)")
    parser.add_argument("--naive-messages", type=int, default=10_000)
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 2], help="adapter processes per run")
    parser.add_argument(
        "--adapter", type=Path, help="another adapter.py to measure (default: this checkout's)"
    )
    # The latency publisher is one Python process: about 8,000 msg/s is its own ceiling here.
    parser.add_argument(
        "--latency-rate", type=float, nargs="*", default=[1000.0, 2500.0, 5000.0, 7500.0, 10000.0]
    )
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["broker", "adapter", "log", "naive", "latency"]
    )
    args = parser.parse_args()

    results: dict = {}
    if (RESULTS / "ingest.json").exists():
        # A run updates the workloads and phases it ran and keeps the others' last results.
        results = json.loads((RESULTS / "ingest.json").read_text())
        if "workloads" not in results:
            results = {}  # the first benchmark's format: superseded
    results["cpus"] = os.cpu_count()
    workloads = results.setdefault("workloads", {})
    with tempfile.TemporaryDirectory(prefix="iot-bench-") as tmp:
        workdir = Path(tmp)
        influx = InfluxServer(workdir / "influxd")
        influx.start()
        broker = bench_broker(workdir / "mosquitto")
        broker.start()
        try:
            for name in args.workload:
                workloads[name] = {
                    **workloads.get(name, {}),
                    **run_workload(args, WORKLOADS[name], broker, influx, workdir),
                }
            if "naive" not in args.skip:
                results["naive_msgs_per_s"] = naive_rate(
                    broker, influx, args.naive_messages, args.connections
                )
                print(
                    f"naive adapter (one HTTP write per message, easy workload): "
                    f"{results['naive_msgs_per_s']:,.0f} msg/s",
                    flush=True,
                )
            if "latency" not in args.skip:
                results["latency"] = [
                    latency(broker, influx, workdir, rate, args.latency_seconds) for rate in args.latency_rate
                ]
                for lat in results["latency"]:
                    print(
                        f"latency at {lat['rate']:,.0f} msg/s offered ({lat['achieved_rate']:,.0f} sent): "
                        f"p50 {lat['p50_ms']:.1f} ms, "
                        f"p95 {lat['p95_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms",
                        flush=True,
                    )
        finally:
            broker.stop()
            influx.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
