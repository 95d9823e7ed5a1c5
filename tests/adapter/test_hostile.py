"""Hostile input against the real adapter, Mosquitto and InfluxDB: it cannot stop, flood or steal.

Each test reproduces one class of attack from issue 11 (in other sizes and shapes than the
issue's example too), interleaved with valid readings, and checks that the valid readings
are all stored within seconds, the adapter's memory stays far below its 512 MB service
limit, InfluxDB holds no more series than the budget, and the counters say exactly what
was refused and why.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.mqtt_client import Intruder, Publisher, retained_count
from tests.servers import AdapterProcess, InfluxServer, MosquittoServer, wait_for

T0 = 1_700_000_000
SERVICE_LIMIT = 512 * 1024 * 1024  # the adapter's memory limit in stack.yml
# The adapter at rest is about 40 MB; what a test adds must stay well inside the limit.
RSS_BOUND = SERVICE_LIMIT // 2


def readings(start: int, stop: int) -> list[Message]:
    return [reading(i % 20, i) for i in range(start, stop)]


def reading(device: int, i: int, location: str = "Valid") -> tuple[str, str]:
    """A valid reading with its own timestamp: stored once however often it is delivered."""
    return f"{location}/Dev{device}", json.dumps({"BAT": i % 100, "TEMP": 20.5, "timestamp": T0 + i})


Message = tuple[str, bytes | str]


def interleave(hostile: Iterable[Message], per_hostile: int = 5) -> list[Message]:
    """Hostile messages with `per_hostile` valid readings after each (20 devices, unique times)."""
    out: list[Message] = []
    i = 0
    for message in hostile:
        out.append(message)
        for _ in range(per_hostile):
            out.append(reading(i % 20, i))
            i += 1
    return out


def valid_count(messages: list[Message]) -> int:
    return sum(1 for topic, _ in messages if topic.startswith("Valid/"))


def publish(broker: MosquittoServer, messages: Iterable[Message], retain: bool = False) -> None:
    pub = Publisher(broker.port, max_inflight=100)
    try:
        for topic, payload in messages:
            pub.publish(topic, payload, retain=retain)
        pub.wait(180)
    finally:
        pub.close()


def wait_handled(adapter: AdapterProcess, received: int, timeout_s: float = 60) -> None:
    wait_for(
        lambda: (
            adapter.metric("adapter_messages_received_total") >= received
            and adapter.metric("adapter_unacked_messages") == 0
        ),
        timeout_s,
        f"the adapter to handle {received} messages",
        adapter.proc,
        adapter.log_path,
    )
    assert adapter.metric("adapter_messages_received_total") == received


def stored_valid(influx: InfluxServer, database: str) -> int:
    rows = influx.series(
        'SELECT count("value") FROM /^Dev[0-9]+\\.BAT$/ WHERE "location" = \'Valid\'', database
    )
    return sum(int(s["values"][0][1]) for s in rows)


def wait_valid_stored(influx: InfluxServer, database: str, expected: int, timeout_s: float = 30) -> None:
    wait_for(lambda: stored_valid(influx, database) >= expected, timeout_s, f"{expected} valid readings")
    assert stored_valid(influx, database) == expected


def series_count(influx: InfluxServer, database: str) -> int:
    return sum(len(s.get("values", [])) for s in influx.series("SHOW SERIES", database))


def rejected(adapter: AdapterProcess) -> dict[str, float]:
    return {k: v for k, v in adapter.samples("adapter_messages_rejected_total").items() if v}


def dropped(adapter: AdapterProcess) -> dict[str, float]:
    return {k: v for k, v in adapter.samples("adapter_points_dropped_total").items() if v}


def ignored(adapter: AdapterProcess) -> dict[str, float]:
    return {k: v for k, v in adapter.samples("adapter_values_ignored_total").items() if v}


def keys(n: int, prefix: str = "k", value: object = 1) -> dict[str, object]:
    return {f"{prefix}{i}": value for i in range(n)}


# --- 1. oversized messages and batches ---------------------------------------------------


def test_oversized_messages_are_refused_and_never_hold_the_rest(
    broker: MosquittoServer, influx: InfluxServer, database: str, make_adapter: Callable[..., AdapterProcess]
) -> None:
    adapter = make_adapter(broker, influx, database)
    big_station = "S" * 900
    widest = "Ŵ" * 128  # the longest names the contract accepts, in a two-byte letter
    hostile: list[Message] = [
        # The message: 187 KB, a 900-character station, 18,000 keys.
        (f"UPB/{big_station}", json.dumps(keys(18_000))),
        # The same keys under a valid topic, and other shapes of the same class.
        ("UPB/Keys", json.dumps(keys(18_000))),
        ("UPB/Keys", json.dumps(keys(1_001))),
        ("UPB/Backlog", json.dumps([{"v": i} for i in range(5_000)])),
        ("UPB/Points", json.dumps([keys(1_000, value=i) for i in range(11)])),
        (f"{'L' * 200}/Loc", json.dumps({"v": 1})),
        ("UPB/Long", json.dumps({"k" * 129: 1, "ok": 2})),
        ("UPB/Huge", json.dumps({"pad": "x" * (300 * 1024)})),
        # At every limit at once, and valid: stored whole.
        (
            f"{widest}/{widest}",
            json.dumps({f"{widest[:120]}{i:03d}": i for i in range(900)}, ensure_ascii=False),
        ),
    ]
    messages = interleave(hostile)
    publish(broker, messages)
    wait_handled(adapter, len(messages))
    wait_valid_stored(influx, database, valid_count(messages))
    assert rejected(adapter) == {
        "station_too_long": 1,
        "too_many_keys": 2,
        "too_many_elements": 1,
        "too_many_points": 1,
        "location_too_long": 1,
        "too_large": 1,
    }
    assert ignored(adapter) == {"key_too_long": 1}
    assert dropped(adapter) == {}
    widest_series = influx.series(f'SELECT count("value") FROM /^{widest}\\./', database)
    assert sum(int(s["values"][0][1]) for s in widest_series) == 900
    assert influx.series('SELECT "value" FROM "Long.ok"', database)[0]["values"][0][1] == 2.0
    assert adapter.peak_rss_bytes() < RSS_BOUND


def test_batches_larger_than_influxdbs_body_limit_are_split(
    broker: MosquittoServer, tmp_path: Path, database: str, make_adapter: Callable[..., AdapterProcess]
) -> None:
    # The second case: normal traffic (100 devices, 25 readings a message) piling up
    # while InfluxDB pauses, then flushed as one batch. This InfluxDB takes at most 300 kB a
    # request and the adapter keeps its default MAX_BATCH_BYTES (10 MB): InfluxDB answers 413
    # and the adapter splits its writes until they fit.
    influx = InfluxServer(tmp_path / "small-body-influxd", http_options="  max-body-size = 300000")
    influx.start()
    try:
        adapter = make_adapter(broker, influx, database)
        influx.stop()
        messages = [
            (f"Valid/Dev{d}", json.dumps({f"m{k}": k + r for k in range(25)} | {"timestamp": T0 + r}))
            for r in range(20)
            for d in range(100)
        ]
        publish(broker, messages)
        wait_for(lambda: adapter.metric("adapter_write_retries_total") > 0, 30, "a failed write")
        influx.start()
        wait_handled(adapter, len(messages), 120)
        assert influx.count_points(database) == len(messages) * 25
        assert adapter.metric("adapter_points_written_total") == len(messages) * 25
        assert dropped(adapter) == {}
        assert adapter.metric("adapter_write_errors_total", kind="permanent") == 0
    finally:
        influx.stop()


# --- 2. series floods ---------------------------------------------------------------------


def test_series_budget_per_device_and_in_total_survives_a_restart(
    broker: MosquittoServer, influx: InfluxServer, database: str, make_adapter: Callable[..., AdapterProcess]
) -> None:
    budget = {"MAX_SERIES_PER_DEVICE": "50", "MAX_SERIES": "300", "MAX_DEVICE_METRICS": "10"}
    adapter = make_adapter(broker, influx, database, **budget)
    known = [(f"Valid/Dev{d}", json.dumps(keys(5, "m") | {"timestamp": T0})) for d in range(20)]
    publish(broker, known)
    wait_handled(adapter, 20)
    assert series_count(influx, database) == 100

    greedy = [("Flood/Greedy", json.dumps(keys(1_000, f"g{m}_"))) for m in range(3)]  # one device
    flood = [(f"Flood/F{s}", json.dumps(keys(1_000, "x"))) for s in range(60)]  # many devices
    later = [(f"Valid/Dev{d}", json.dumps(keys(5, "m") | {"timestamp": T0 + 1})) for d in range(20)]
    new_metric = [("Valid/Dev0", json.dumps({"m0": 7, "brand_new": 2, "timestamp": T0 + 2}))]
    publish(broker, greedy + flood + later + new_metric)
    wait_handled(adapter, 20 + 3 + 60 + 20 + 1)

    # Greedy: 50 series, 2,950 refused. F0-F2: 50 each (the total reaches 300), 950 refused
    # each; F3-F59: the total is full, all 1,000 refused each; Dev0's new metric too.
    assert dropped(adapter) == {"device_series_budget": 2_950 + 3 * 950, "series_budget": 57_000 + 1}
    assert series_count(influx, database) == 300
    assert adapter.metric("adapter_series") == 300
    # Known series kept flowing: every valid device's second reading is stored.
    rows = influx.series('SELECT count("value") FROM /^Dev[0-9]+\\.m[0-4]$/', database)
    assert sum(int(s["values"][0][1]) for s in rows) == 20 * 5 * 2 + 1
    assert influx.series('SELECT "value" FROM "Dev0.m0"', database)[0]["values"][-1][1] == 7.0
    # The last-seen gauge keeps at most MAX_DEVICE_METRICS of the 24 devices stored.
    assert adapter.metrics_text().count("adapter_device_last_seen_timestamp_seconds{") == 10

    # A restarted adapter reads the budget back from InfluxDB before it reads the broker.
    adapter.stop()
    adapter.start()
    assert adapter.metric("adapter_series") == 300
    publish(broker, [("Flood/After", json.dumps({"x": 1})), *later])
    wait_handled(adapter, 21)
    assert dropped(adapter) == {"series_budget": 1}
    assert series_count(influx, database) == 300
    assert "Series budget: 300 of 300 series in use" in adapter.log_text()


# --- 3. memory per message ---------------------------------------------------------------


def test_memory_stays_bounded_whatever_the_messages_hold(
    broker: MosquittoServer, influx: InfluxServer, database: str, make_adapter: Callable[..., AdapterProcess]
) -> None:
    adapter = make_adapter(broker, influx, database)
    astral = "\U0001d518" * 128  # four bytes each in UTF-8, four in a Python string
    hostile: list[Message] = [
        # The 119 KB message: a 20 KB topic and 10,000 keys.
        (f"UPB/{'t' * 20_000}", json.dumps(keys(10_000))),
        (f"{'t' * 20_000}/x", json.dumps(keys(10_000))),
    ]
    # The most line protocol one valid message can make (16 MB): 10,000 points (10 x 1,000
    # keys) under the longest location and station, 8 times over.
    biggest = json.dumps([keys(1_000, value=e) | {"timestamp": T0 + e} for e in range(10)])
    hostile += [(f"{astral}/{astral[:127]}{i % 4}", biggest) for i in range(8)]
    messages = interleave(hostile, per_hostile=2)
    publish(broker, messages)
    wait_handled(adapter, len(messages), 180)
    wait_valid_stored(influx, database, valid_count(messages))
    assert rejected(adapter) == {"station_too_long": 1, "location_too_long": 1}
    assert adapter.metric("adapter_points_written_total") == 8 * 10_000 + valid_count(messages) * 2
    peak = adapter.peak_rss_bytes()
    assert peak < RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MB"


# --- 4. session takeover -----------------------------------------------------------------


def test_nobody_can_take_over_the_adapters_session(
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
    tmp_path: Path,
) -> None:
    secret = tmp_path / "adapter_mqtt_client_id"
    secret.write_text(os.urandom(24).hex() + "\n")
    # As in the stack: the id from a Docker secret, one session per replica slot.
    settings = {
        "MQTT_CLIENT_ID": None,
        "MQTT_CLIENT_ID_FILE": str(secret),
        "MQTT_CLIENT_ID_SUFFIX": "-1",
        "MQTT_TOPIC": "$share/adapters/#",
    }
    adapter = make_adapter(broker, influx, database, **settings)
    assert "MQTT_CLIENT_ID is the default" not in adapter.log_text()
    assert secret.read_text().strip() not in adapter.log_text()
    # The documented ids, resuming a session; the documented group of the shared subscription.
    intruders = [
        Intruder(broker.port, "iot-adapter", clean_start=False),
        Intruder(broker.port, "iot-adapter-1", clean_start=False),
        Intruder(broker.port, "iot-adapter-2", clean_start=False),
    ]
    sharer = Intruder(broker.port, "stranger", clean_start=True, subscribe="$share/adapters/#")
    publish(broker, readings(0, 300))
    wait_handled(adapter, 300)
    # The adapter's backlog while it is away, and strangers wiping sessions by clean starts.
    adapter.stop()
    publish(broker, readings(300, 900))
    for client_id in ("iot-adapter", "iot-adapter-1", "adapter-1"):
        Intruder(broker.port, client_id, clean_start=True).close()
    adapter.start()
    wait_handled(adapter, 600)
    wait_valid_stored(influx, database, 900)
    assert [i.received for i in intruders] == [0, 0, 0]
    # A stranger in a group of the same name gets copies, as any subscriber of an open broker
    # can; it takes nothing away from the adapter, whose group is named after its secret.
    assert sharer.received == 900
    for intruder in [*intruders, sharer]:
        intruder.close()


# --- 5. retained messages ----------------------------------------------------------------


def retained_on_broker(broker: MosquittoServer) -> int:
    return retained_count(broker.port)


def broker_rss(broker: MosquittoServer) -> int:
    assert broker.proc is not None
    for line in Path(f"/proc/{broker.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def retained_flood(round_: int) -> list[Message]:
    """400 retained messages of 250 KB (100 MB) on as many topics, valid and invalid, with a
    retained valid reading after each."""
    pad = "x" * (250 * 1024 - 100)
    hostile: list[Message] = [(f"Junk{round_}/T{i}", json.dumps({"v": i, "pad": pad})) for i in range(300)]
    hostile += [(f"Junk{round_}/T{i}/deeper", pad) for i in range(100)]
    return interleave(hostile, per_hostile=1)


def test_retained_messages_are_stored_as_readings_and_cleared(
    broker: MosquittoServer, influx: InfluxServer, database: str, make_adapter: Callable[..., AdapterProcess]
) -> None:
    adapter = make_adapter(broker, influx, database)
    rss = []
    sent = 0
    for round_ in (1, 2):
        messages = retained_flood(round_)
        publish(broker, messages, retain=True)
        wait_valid_stored(influx, database, valid_count(messages), 120)
        # Each clear comes back to the adapter as an empty retained message (a deletion):
        # acked, neither a reading nor an error.
        sent += len(messages)
        wait_for(
            lambda expected=sent: (
                adapter.metric("adapter_messages_received_total")
                == expected + adapter.metric("adapter_retained_cleared_total")
                and adapter.metric("adapter_unacked_messages") == 0
            ),
            60,
            "every message and every clear handled",
        )
        wait_for(lambda: retained_on_broker(broker) == 0, 30, "the broker to hold no retained message")
        rss.append(broker_rss(broker))
    assert rejected(adapter) == {"bad_topic": 200}
    assert influx.count_points(database) == 600 + valid_count(messages) * 2
    # One clear per topic and batch: every hostile topic, and each device at least once a round.
    assert 2 * (400 + 20) <= adapter.metric("adapter_retained_cleared_total") <= 2 * len(messages)
    # The second 100 MB leave the broker's memory where the first left it: nothing is kept.
    assert rss[1] - rss[0] < 32 * 1024 * 1024, [f"{r / 2**20:.0f} MB" for r in rss]
    broker.stop()  # SIGTERM: the broker saves its database, which holds no retained message
    assert (broker.workdir / "mosquitto.db").stat().st_size < 1024 * 1024


def test_retained_messages_from_before_the_adapter_are_swept_not_stored(
    broker: MosquittoServer, influx: InfluxServer, database: str, make_adapter: Callable[..., AdapterProcess]
) -> None:
    # Retained while no adapter session existed (or dropped from its queue at the broker's
    # limit): the adapter never receives them as messages; its sweep clears them at start.
    old = [(f"Old/T{i}", json.dumps({"v": i, "pad": "x" * 100_000})) for i in range(50)]
    old += [(f"Old/T{i}/deeper", "x" * 100_000) for i in range(50)]
    publish(broker, old, retain=True)
    assert retained_on_broker(broker) == 100
    adapter = make_adapter(
        broker, influx, database, MQTT_TOPIC="$share/adapters/#", RETAINED_SWEEP_INTERVAL="3600"
    )
    # One sweep clears them, the next finds none and ends the round.
    wait_for(lambda: adapter.metric("adapter_retained_sweeps_total") == 2, 30, "the first round of sweeps")
    assert adapter.metric("adapter_retained_cleared_total") == 100
    assert retained_on_broker(broker) == 0
    assert "Cleared 100 retained messages the broker still held" in adapter.log_text()
    # Old state, not new readings: nothing of them is stored.
    publish(broker, [reading(0, 0)])
    wait_valid_stored(influx, database, 1)
    assert influx.count_points(database) == 2
    assert rejected(adapter) == {}


# --- 6. partial writes -------------------------------------------------------------------


def test_every_line_influxdb_refuses_is_counted_by_reason(
    broker: MosquittoServer, influx: InfluxServer, database: str, make_adapter: Callable[..., AdapterProcess]
) -> None:
    # Keys up to 100,000 characters pass the contract here, so 70 KB keys reach InfluxDB,
    # whose series keys end at 64 KiB; a string already stored in Conflict.v (in the same
    # shard: InfluxDB fixes a field's type per shard) makes a type conflict of every number
    # written there.
    adapter = make_adapter(broker, influx, database, MAX_KEY_LENGTH="100000")
    conflict = f'Conflict.v,location=Bad,station=Conflict value="text" {(T0 - 1) * 10**9}'
    assert influx.write(database, conflict).status_code == 204
    hostile = [
        ("Bad/LongKey", json.dumps({"k" * 70_000: 1, "ok": 2, "timestamp": T0})),
        ("Bad/LongKeys", json.dumps({f"{i}{'k' * 70_000}": i for i in range(3)} | {"timestamp": T0})),
        ("Bad/Conflict", json.dumps({"v": 1, "w": 2, "timestamp": T0})),
        # Both kinds in one message: InfluxDB's answer names only the conflict.
        ("Bad/Conflict", json.dumps({"v": 3, "x" * 70_000: 4, "y": 5, "timestamp": T0 + 1})),
    ]
    messages = interleave(hostile * 5)
    publish(broker, messages)
    wait_handled(adapter, len(messages))
    wait_valid_stored(influx, database, valid_count(messages))
    assert dropped(adapter) == {"unparsable": 5 * (1 + 3 + 1), "type_conflict": 5 * 2}
    # What was not refused is stored, and the log names what was (rate-limited).
    assert influx.series('SELECT count("value") FROM "LongKey.ok"', database)[0]["values"][0][1] == 1
    assert influx.series('SELECT count("value") FROM "Conflict.w"', database)[0]["values"][0][1] == 1
    assert influx.series('SELECT count("value") FROM "Conflict.y"', database)[0]["values"][0][1] == 1
    assert "InfluxDB refused a point of Bad/LongKey for good (unparsable)" in adapter.log_text()
    assert "(type_conflict)" in adapter.log_text()
    # Refused points were acked with the rest: a restart gets nothing redelivered.
    adapter.stop()
    adapter.start()
    time.sleep(1.0)
    assert adapter.metric("adapter_messages_received_total") == 0


# --- a stop while InfluxDB is away ---------------------------------------------------------


def test_sigterm_during_retries_ends_in_time_and_loses_nothing(
    broker: MosquittoServer,
    own_influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
) -> None:
    adapter = make_adapter(broker, own_influx, database, STOP_TIMEOUT="3")
    publish(broker, readings(0, 200))
    wait_handled(adapter, 200)
    own_influx.stop()
    publish(broker, readings(200, 700))
    wait_for(lambda: adapter.metric("adapter_write_retries_total") > 0, 30, "a failed write")
    assert adapter.proc is not None
    adapter.proc.send_signal(signal.SIGTERM)
    assert adapter.proc.wait(25) == 0  # STOP_TIMEOUT + one write's timeout, inside Swarm's 30 s
    assert "stay unacked in the broker's session" in adapter.log_text()
    # What was not stored is redelivered from the session once both are back.
    own_influx.start()
    adapter.start()
    wait_valid_stored(own_influx, database, 700, 60)
