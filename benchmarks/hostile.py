"""Hostile soak: valid traffic from many devices while strangers try every attack of issue 11.

Starts its own Mosquitto (the shipped open-mode mosquitto.conf and its ACL, paths and port
rewritten), InfluxDB and the real adapter (its client id from a secret file, as in the stack),
then for `--duration` seconds publishes:
  - valid readings: `--devices` devices, one message a second each (3 numbers, a string and
    an ISO 8601 timestamp, unique per message so every stored point can be counted);
  - hostile messages, round robin: the issue's 187 KB message (900-character station, 18,000
    keys) and its kin (too many keys, elements or points, names too long, a 20 KB topic with
    10,000 keys), floods of new series, the largest messages the limits let through, points
    InfluxDB refuses (a field type conflict), 250 KB retained messages (valid and invalid
    topics) and retained messages on `$` topics, and clients taking over the adapter's
    documented session ids.
Afterwards it checks that every valid point is stored, that every point the adapter received
was either stored or counted as refused (and nothing is left unacked), that no retained
message is left in the broker, that InfluxDB holds no more series than the budget and that
the intruders got nothing, and it reports the adapter's and the broker's memory over time.

    PYTHONPATH=. .venv/bin/python -m benchmarks.hostile               # 60 s, 200 devices
    PYTHONPATH=. .venv/bin/python -m benchmarks.hostile --duration 300 --devices 500
Results are printed and written as JSON to benchmarks/results/hostile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.mqtt_client import Intruder, Publisher, retained_count
from tests.servers import AdapterProcess, InfluxServer, MosquittoServer, ServerError, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIELDS = ("BAT", "TEMP", "HUMID")
BASE = datetime(2024, 1, 1, tzinfo=UTC)
# A series budget the floods fill within seconds (the default, 200,000, would take minutes
# of flooding and gigabytes of InfluxDB); the valid devices' series exist before they start.
MAX_SERIES = 20_000
HOSTILE_RATE = 10.0  # hostile messages per second


def broker_config(port: int, workdir: Path) -> str:
    """mosquitto_mqtt_vol/mosquitto.conf with only its port and paths changed, as local mode runs it."""
    text = (ROOT / "mosquitto_mqtt_vol" / "mosquitto.conf").read_text()
    text = text.replace("listener 1883\n", f"listener {port} 127.0.0.1\n")
    text = text.replace("/mosquitto/data/", f"{workdir}/")
    text = text.replace(
        "/mosquitto/config/mosquitto-open.acl", str(ROOT / "mosquitto_mqtt_vol/mosquitto-open.acl")
    )
    text = re.sub(r"^log_dest file .*$", "", text, flags=re.M)
    return text + ("user root\n" if os.geteuid() == 0 else "")


@dataclass
class Expected:
    """What the soak sent, and so what the adapter must have counted."""

    valid_messages: int = 0
    # Points of well-formed messages: each is either stored or counted as dropped.
    points_offered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    by_broker: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    hostile_bytes: int = 0


def valid_reading(device: int, second: int) -> tuple[str, str]:
    when = BASE + timedelta(seconds=second, milliseconds=device)
    payload = {
        "BAT": 100 - second % 100,
        "TEMP": 20 + device % 10 + 0.25,
        "HUMID": 40 + second % 30,
        "status": "OK",
        "timestamp": when.isoformat().replace("+00:00", "Z"),
    }
    return f"Valid/Dev{device:03d}", json.dumps(payload)


def keys(n: int, prefix: str = "k", value: object = 1) -> dict[str, object]:
    return {f"{prefix}{i}": value for i in range(n)}


class Hostile:
    """The hostile shapes, each a function of a running number → (topic, payload, retain)."""

    def __init__(self, expected: Expected) -> None:
        self.expected = expected
        self.pad = "x" * (250 * 1024 - 100)
        self.astral = "\U0001d518" * 128
        self.shapes: list[Callable[[int], tuple[str, str, bool]]] = [
            self.issue_message,
            self.too_many_keys,
            self.too_many_elements,
            self.too_many_points,
            self.long_topic,
            self.key_too_long,
            self.series_flood,
            self.greedy_device,
            self.largest_valid,
            self.type_conflict,
            self.retained_reading,
            self.retained_junk,
            self.retained_dollar,
        ]

    def issue_message(self, n: int) -> tuple[str, str, bool]:
        self.expected.rejected["station_too_long"] += 1
        return f"UPB/{'S' * 899}{n % 10}", json.dumps(keys(18_000)), False

    def too_many_keys(self, n: int) -> tuple[str, str, bool]:
        self.expected.rejected["too_many_keys"] += 1
        return "Hostile/Keys", json.dumps(keys(1_001 + n % 5_000)), False

    def too_many_elements(self, n: int) -> tuple[str, str, bool]:
        self.expected.rejected["too_many_elements"] += 1
        return "Hostile/Backlog", json.dumps([{"v": i} for i in range(1_001 + n % 4_000)]), False

    def too_many_points(self, n: int) -> tuple[str, str, bool]:
        self.expected.rejected["too_many_points"] += 1
        return "Hostile/Points", json.dumps([keys(1_000, value=e) for e in range(11)]), False

    def long_topic(self, n: int) -> tuple[str, str, bool]:
        self.expected.rejected["location_too_long"] += 1
        return f"{'t' * 20_000}/x{n}", json.dumps(keys(10_000)), False

    def key_too_long(self, n: int) -> tuple[str, str, bool]:
        self.expected.ignored["key_too_long"] += 1
        self.expected.points_offered += 1
        return (
            "Hostile/Long",
            json.dumps({"k" * (129 + n): 1, "ok": n, "timestamp": 1_700_000_000 + n}),
            False,
        )

    def series_flood(self, n: int) -> tuple[str, str, bool]:
        self.expected.points_offered += 1_000
        return f"Flood/F{n}", json.dumps(keys(1_000, "x")), False

    def greedy_device(self, n: int) -> tuple[str, str, bool]:
        self.expected.points_offered += 1_000
        return "Flood/Greedy", json.dumps(keys(1_000, f"g{n}_")), False

    def largest_valid(self, n: int) -> tuple[str, str, bool]:
        # 10,000 points under the longest names: 16 MB of line protocol from 120 KB of JSON.
        self.expected.points_offered += 10_000
        elements = [keys(1_000, value=e) | {"timestamp": 1_600_000_000 + n * 10 + e} for e in range(10)]
        return f"{self.astral}/{self.astral[:127]}{n % 4}", json.dumps(elements), False

    def type_conflict(self, n: int) -> tuple[str, str, bool]:
        self.expected.points_offered += 2  # `v` is refused by InfluxDB, `w` stored
        return "Bad/Conflict", json.dumps({"v": n, "w": n, "timestamp": 1_700_000_000 + n}), False

    def retained_reading(self, n: int) -> tuple[str, str, bool]:
        self.expected.points_offered += 1
        self.expected.ignored["not_numeric"] += 1  # the padding string
        return f"Retained/T{n}", json.dumps({"v": n, "pad": self.pad}), True

    def retained_junk(self, n: int) -> tuple[str, str, bool]:
        self.expected.rejected["bad_topic"] += 1
        return f"Retained/T{n}/junk", self.pad, True

    def retained_dollar(self, n: int) -> tuple[str, str, bool]:
        self.expected.by_broker["dollar_topic"] += 1
        return f"$junk/T{n}", self.pad, True

    def messages(self) -> Iterator[tuple[str, str, str, bool]]:
        n = 0
        while True:
            for shape in self.shapes:
                topic, payload, retain = shape(n)
                yield shape.__name__, topic, payload, retain
            n += 1


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def samples(adapter: AdapterProcess, name: str) -> dict[str, float]:
    return {k: v for k, v in adapter.samples(name).items() if v}


def stack_broker(workdir: Path) -> MosquittoServer:
    port = free_port()
    return MosquittoServer(workdir, port=port, config_text=broker_config(port, workdir))


def stack_adapter(
    workdir: Path, broker: MosquittoServer, influx: InfluxServer, database: str
) -> AdapterProcess:
    """The adapter as the stack runs it: its client id from a secret file, a slot suffix."""
    secret = workdir / "adapter_mqtt_client_id"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(os.urandom(24).hex())
    return AdapterProcess(
        workdir / "adapter",
        broker,
        influx,
        database,
        MQTT_CLIENT_ID=None,
        MQTT_CLIENT_ID_FILE=str(secret),
        MQTT_CLIENT_ID_SUFFIX="-1",
        MAX_SERIES=str(MAX_SERIES),
        RETAINED_SWEEP_INTERVAL="300",  # the stack's default (the tests turn it off)
    )


@dataclass
class Soak:
    """The servers of one soak run and what was measured on the way."""

    broker: MosquittoServer
    influx: InfluxServer
    adapter: AdapterProcess
    database: str
    expected: Expected = field(default_factory=Expected)
    # (seconds since the start, adapter RSS MB, broker RSS MB), once a second.
    memory: list[tuple[float, float, float]] = field(default_factory=list)
    intruders: list[Intruder] = field(default_factory=list)
    published_s: float = 0.0


DOCUMENTED_IDS = (("iot-adapter", False), ("iot-adapter-1", False), ("iot-adapter-1", True))
CONFLICT = f'Conflict.v,location=Bad,station=Conflict value="text" {1_699_999_999 * 10**9}'


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    broker = stack_broker(workdir / "mosquitto")
    influx = InfluxServer(workdir / "influxd")
    broker.start()
    influx.start()
    run = Soak(broker, influx, stack_adapter(workdir, broker, influx, "hostile"), "hostile")
    try:
        run.adapter.start()
        # A string stored where devices will write numbers: InfluxDB refuses those points.
        influx.write(run.database, CONFLICT)
        warm_up(run, args.devices)
        run.intruders = [Intruder(broker.port, cid, clean) for cid, clean in DOCUMENTED_IDS]
        traffic(run, args)
        return report(run, args)
    finally:
        for intruder in run.intruders:
            intruder.close()
        run.adapter.stop()
        influx.stop()
        broker.stop()


def warm_up(run: Soak, devices: int) -> None:
    """Every valid device's series exist before the floods start."""
    pub = Publisher(run.broker.port, max_inflight=1000)
    for d in range(devices):
        pub.publish(*valid_reading(d, 0))
    pub.wait(60)
    pub.close()
    run.expected.valid_messages += devices
    wait_for(
        lambda: run.adapter.metric("adapter_points_written_total") >= devices * len(FIELDS),
        60,
        "the warm-up stored",
    )


def traffic(run: Soak, args: argparse.Namespace) -> None:
    """Valid and hostile publishers side by side for `args.duration` seconds, then until the
    adapter has handled everything."""
    expected = run.expected
    stop = threading.Event()
    started = time.monotonic()
    assert run.adapter.proc is not None and run.broker.proc is not None
    adapter_pid, broker_pid = run.adapter.proc.pid, run.broker.proc.pid

    def sample_memory() -> None:
        while not stop.is_set():
            run.memory.append((time.monotonic() - started, rss_mb(adapter_pid), rss_mb(broker_pid)))
            stop.wait(1.0)

    def publish_valid() -> None:
        pub = Publisher(run.broker.port, max_inflight=1000)
        for second in range(1, args.duration + 1):
            for d in range(args.devices):
                ahead = started + second - 1 + d / args.devices - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                pub.publish(*valid_reading(d, second))
            expected.valid_messages += args.devices
        pub.wait(300)
        pub.close()

    def publish_hostile() -> None:
        pub = Publisher(run.broker.port, max_inflight=50)
        messages = Hostile(expected).messages()
        count = 0
        while time.monotonic() - started < args.duration:
            ahead = started + count / HOSTILE_RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            shape, topic, payload, retain = next(messages)
            pub.publish(topic, payload, retain=retain)
            expected.sent[shape] += 1
            expected.hostile_bytes += len(topic) + len(payload)
            count += 1
        pub.wait(300)
        pub.close()

    sampler = threading.Thread(target=sample_memory, daemon=True)
    publishers = [threading.Thread(target=t, daemon=True) for t in (publish_valid, publish_hostile)]
    sampler.start()
    for thread in publishers:
        thread.start()
    for thread in publishers:
        thread.join()
    run.published_s = time.monotonic() - started
    # Every message the broker delivered, and the clears of retained ones (and each sweep's
    # marker) coming back.
    delivered = expected.valid_messages + sum(expected.sent.values()) - expected.by_broker["dollar_topic"]
    adapter = run.adapter

    def handled() -> bool:
        return adapter.metric("adapter_unacked_messages") == 0 and adapter.metric(
            "adapter_messages_received_total"
        ) == delivered + adapter.metric("adapter_retained_cleared_total") + adapter.metric(
            "adapter_retained_sweeps_total"
        )

    try:
        wait_for(handled, 900, "the adapter to handle everything")
    except ServerError:
        counts = {
            name: adapter.metric(f"adapter_{name}")
            for name in (
                "messages_received_total",
                "unacked_messages",
                "retained_cleared_total",
                "retained_sweeps_total",
            )
        }
        print(f"expected {delivered} messages delivered; the adapter says {counts}", file=sys.stderr)
        raise
    stop.set()
    sampler.join()


def count_by_name(influx: InfluxServer, database: str, source: str) -> dict[str, int]:
    rows = influx.series(f'SELECT count("value") FROM {source}', database)
    return {s["name"]: int(s["values"][0][1]) for s in rows}


def report(run: Soak, args: argparse.Namespace) -> dict[str, object]:
    adapter, expected = run.adapter, run.expected
    valid_points = sum(count_by_name(run.influx, run.database, "/^Dev[0-9]+\\./").values())
    # Over /.*/ InfluxDB leaves out the measurement whose `value` is a string (the planted
    # conflict); it is skipped by name in case it did not.
    stored = sum(
        n for name, n in count_by_name(run.influx, run.database, "/.*/").items() if name != "Conflict.v"
    )
    written = adapter.metric("adapter_points_written_total")
    dropped = samples(adapter, "adapter_points_dropped_total")
    rejected = samples(adapter, "adapter_messages_rejected_total")
    ignored = samples(adapter, "adapter_values_ignored_total")
    series = sum(len(s.get("values", [])) for s in run.influx.series("SHOW SERIES", run.database))
    adapter_rss = [m[1] for m in run.memory]
    broker_rss = [m[2] for m in run.memory]
    # Flat: the typical memory of the last third is that of the middle third (medians: single
    # samples jump with the largest messages in flight).
    third = len(run.memory) // 3
    adapter_middle = statistics.median(adapter_rss[third : 2 * third])
    adapter_last = statistics.median(adapter_rss[2 * third :])
    valid_expected = expected.valid_messages * len(FIELDS)
    ignored_expected = expected.ignored + Counter(not_numeric=expected.valid_messages)  # "status"
    checks = {
        "every valid point stored": valid_points == valid_expected,
        "stored = written": stored == written,
        "every point stored or counted as dropped": written + sum(dropped.values())
        == valid_expected + expected.points_offered,
        "rejections counted by reason": rejected == dict(expected.rejected),
        "ignored keys counted by reason": ignored == dict(ignored_expected),
        "no retained message left": retained_count(run.broker.port) == 0,
        "series within the budget": series <= MAX_SERIES,
        "intruders received nothing": all(i.received == 0 for i in run.intruders),
        "adapter RSS under its 512 MB limit": max(adapter_rss) < 512,
        "adapter memory flat (median of the last third within 32 MB of the middle third's)": adapter_last
        - adapter_middle
        < 32,
    }
    return {
        "command": f"PYTHONPATH=. .venv/bin/python -m benchmarks.hostile --duration {args.duration} "
        f"--devices {args.devices}",
        "duration_s": round(run.published_s, 1),
        "valid_messages": expected.valid_messages,
        "valid_points_stored": valid_points,
        "hostile_messages": dict(expected.sent),
        "hostile_mb": round(expected.hostile_bytes / 2**20, 1),
        "points_written": written,
        "points_dropped": dropped,
        "messages_rejected": rejected,
        "values_ignored": ignored,
        "retained_cleared": adapter.metric("adapter_retained_cleared_total"),
        "series_in_influxdb": series,
        "series_budget": MAX_SERIES,
        "intruder_messages": [i.received for i in run.intruders],
        "adapter_rss_mb": {
            "median_first_third": round(statistics.median(adapter_rss[:third]), 1),
            "median_middle_third": round(adapter_middle, 1),
            "median_last_third": round(adapter_last, 1),
            "peak": round(adapter.peak_rss_bytes() / 2**20, 1),
            "end": round(adapter_rss[-1], 1),
        },
        "broker_rss_mb": {
            "median_middle_third": round(statistics.median(broker_rss[third : 2 * third]), 1),
            "median_last_third": round(statistics.median(broker_rss[2 * third :]), 1),
            "peak": round(max(broker_rss), 1),
            "end": round(broker_rss[-1], 1),
        },
        "checks": checks,
    }


def retained_burst(count: int, clear: bool, workdir: Path, retain: bool = True) -> dict[str, object]:
    """`count` retained 250 KB messages on as many topics, with the adapter clearing them or
    without it (the broker as the issue found it), or the same burst not retained: the
    broker's memory, its persistence file and how long it takes to start again with it."""
    broker = stack_broker(workdir / "mosquitto")
    influx = InfluxServer(workdir / "influxd")
    broker.start()
    influx.start()
    adapter = stack_adapter(workdir, broker, influx, "burst")
    try:
        if clear:
            adapter.start()
        assert broker.proc is not None
        before = rss_mb(broker.proc.pid)
        pad = "x" * (250 * 1024 - 100)
        pub = Publisher(broker.port, max_inflight=100)
        for i in range(count):
            pub.publish(f"Burst/T{i}", json.dumps({"v": i, "pad": pad}), retain=retain)
        pub.wait(600)
        pub.close()
        if clear:
            wait_for(
                lambda: (
                    adapter.metric("adapter_points_written_total") >= count
                    and adapter.metric("adapter_retained_cleared_total") >= (count if retain else 0)
                    and adapter.metric("adapter_unacked_messages") == 0
                ),
                600,
                "every message stored (and cleared)",
            )
        # Without the adapter the persistence file tells: a subscriber is sent at most the
        # broker's queue limit (max_queued_bytes) of them, and the count's marker is dropped.
        left = retained_count(broker.port, timeout_s=600) if clear else None
        after = rss_mb(broker.proc.pid)
        adapter.stop()
        broker.stop()  # SIGTERM: the broker writes its database
        size = (workdir / "mosquitto" / "mosquitto.db").stat().st_size
        started = time.monotonic()
        broker.start(timeout_s=600)
        restart_s = time.monotonic() - started
        assert broker.proc is not None
        reloaded = rss_mb(broker.proc.pid)
    finally:
        adapter.stop()
        influx.stop()
        broker.stop()
    return {
        "messages_published": count,
        "retained": retain,
        "adapter_running": clear,
        "retained_left": left,
        "broker_rss_mb": {
            "before": round(before, 1),
            "after": round(after, 1),
            "after_restart": round(reloaded, 1),
        },
        "persistence_file_mb": round(size / 2**20, 1),
        "restart_s": round(restart_s, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=60, help="seconds of traffic (60 or more)")
    parser.add_argument("--devices", type=int, default=200, help="valid devices, a message a second each")
    parser.add_argument(
        "--retained-burst",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="also publish N retained 250 KB messages at once, with the adapter clearing them "
        "and, for the first N, without the adapter and not retained, e.g. --retained-burst 2000 6000",
    )
    parser.add_argument("--skip-soak", action="store_true", help="only the retained bursts")
    args = parser.parse_args()
    # A run of only some parts keeps the others' last results.
    previous = RESULTS / "hostile.json"
    results: dict[str, object] = json.loads(previous.read_text()) if previous.exists() else {}
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        root = Path(tmp)
        if not args.skip_soak:
            results["soak"] = soak(args, root / "soak")
        bursts = []
        for index, count in enumerate(args.retained_burst):
            runs = ((True, True), (False, True), (True, False)) if index == 0 else ((True, True),)
            for clear, retain in runs:
                bursts.append(retained_burst(count, clear, root / f"burst-{count}-{clear}-{retain}", retain))
        if bursts:
            results["retained_bursts"] = bursts
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hostile.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    checks = results["soak"]["checks"] if not args.skip_soak else {}  # type: ignore[index]
    failed = [name for name, ok in checks.items() if not ok]
    failed += [
        f"{b['retained_left']} retained left" for b in bursts if b["adapter_running"] and b["retained_left"]
    ]
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
        return 1
    print("All checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
