"""DEBUG_DATA_FLOW: the contract's log lines if and only if it is exactly `true`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from tests.mqtt_client import Publisher
from tests.servers import AdapterProcess, InfluxServer, MosquittoServer, wait_for

STAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} "
MESSAGES = [
    (
        "UPB/RPi_1",
        '{"BAT": 99, "HUMID": 40, "PRJ": "SPRC", "TMP": 25.3, "status": "OK",'
        ' "timestamp": "2019-11-26T03:54:20+03:00"}',
    ),
    ("UPB/RPi_2", '{"BAT": 12.5, "timestamp": 1574729660}'),
    ("Dorinel/Zeus", '{"Alarm": 0, "AQI": 12, "RSSI": 1500}'),
]
EXPECTED_FLOW = [
    "Received a message by topic [UPB/RPi_1]",
    "Data timestamp is: 2019-11-26 03:54:20+03:00",
    "UPB.RPi_1.BAT 99",
    "UPB.RPi_1.HUMID 40",
    "UPB.RPi_1.TMP 25.3",
    "Received a message by topic [UPB/RPi_2]",
    "Data timestamp is: 2019-11-26 00:54:20+00:00",
    "UPB.RPi_2.BAT 12.5",
    "Received a message by topic [Dorinel/Zeus]",
    "Data timestamp is NOW",
    "Dorinel.Zeus.Alarm 0",
    "Dorinel.Zeus.AQI 12",
    "Dorinel.Zeus.RSSI 1500",
]
FLOW_MARKERS = ("Received a message", "Data timestamp is", "UPB.", "Dorinel.")


def _run(
    setting: str | None,
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
) -> tuple[list[str], list[tuple[str, float, str, str]]]:
    env = {} if setting is None else {"DEBUG_DATA_FLOW": setting}
    adapter = make_adapter(broker, influx, database, **env)
    pub = Publisher(broker.port)
    pub.publish_all(MESSAGES)
    pub.wait()
    pub.close()
    wait_for(lambda: adapter.metric("adapter_points_written_total") == 7, 10, "7 points stored")
    adapter.stop()
    lines = [re.sub("^" + STAMP, "", line) for line in adapter.log_text().splitlines()]
    stored = [
        (s["name"], row[1], row[2], row[3])
        for s in influx.series(
            'SELECT "value", location, station FROM /.*/ WHERE time < now() - 1d', database
        )
        for row in s["values"]
    ]
    return lines, stored


@pytest.mark.parametrize("setting", ["true", None, "false", "TRUE", "1", ""])
def test_data_flow_lines(
    setting: str | None,
    broker: MosquittoServer,
    influx: InfluxServer,
    database: str,
    make_adapter: Callable[..., AdapterProcess],
) -> None:
    lines, stored = _run(setting, broker, influx, database, make_adapter)
    flow = [line for line in lines if line.startswith(FLOW_MARKERS)]
    if setting == "true":
        assert flow == EXPECTED_FLOW
    else:
        assert flow == []
    # Operational lines are there either way, and the data is the same.
    assert any("Connected to MQTT broker" in line for line in lines)
    assert sorted(stored) == [
        ("RPi_1.BAT", 99.0, "UPB", "RPi_1"),
        ("RPi_1.HUMID", 40.0, "UPB", "RPi_1"),
        ("RPi_1.TMP", 25.3, "UPB", "RPi_1"),
        ("RPi_2.BAT", 12.5, "UPB", "RPi_2"),
    ]


def test_every_line_has_the_contract_timestamp(
    broker: MosquittoServer, influx: InfluxServer, database: str, make_adapter: Callable[..., AdapterProcess]
) -> None:
    adapter = make_adapter(broker, influx, database, DEBUG_DATA_FLOW="true")
    pub = Publisher(broker.port)
    pub.publish_all(MESSAGES)
    pub.wait()
    pub.close()
    wait_for(lambda: adapter.metric("adapter_points_written_total") == 7, 10, "7 points stored")
    lines = adapter.log_text().splitlines()
    assert lines and all(re.match(STAMP + r"\S", line) for line in lines)


def test_refusals_are_logged_and_strangers_names_cannot_forge_lines(
    broker: MosquittoServer, influx: InfluxServer, database: str, make_adapter: Callable[..., AdapterProcess]
) -> None:
    adapter = make_adapter(broker, influx, database, DEBUG_DATA_FLOW="true", MAX_SERIES_PER_DEVICE="1")
    forged = "2019-11-27 18:38:14 UPB.RPi_1.BAT 0"
    # (Mosquitto itself refuses topics with C0 control characters, so a newline can only come
    # in a key.)
    messages = [
        (f"UPB/Evil\u2028{forged}", '{"BAT": 1}'),
        ("UPB/" + "x" * 20_000, '{"BAT": 1}'),
        ("UPB/Keys", json.dumps({"k" * 200: 1, f"BAT\n{forged}": 2, "a\u202eb": 3, "ok": 4, "status": "OK"})),
        ("UPB/Budget", '{"a": 1, "b": 2}'),
    ]
    pub = Publisher(broker.port)
    pub.publish_all(messages)
    pub.wait()
    pub.close()
    wait_for(lambda: adapter.metric("adapter_points_written_total") == 2, 10, "the two storable points")
    adapter.stop()
    lines = [re.sub("^" + STAMP, "", line) for line in adapter.log_text().splitlines()]
    assert not any(line.startswith(forged[20:]) for line in lines)  # no forged reading
    assert f"Ignored the message by topic [UPB/Evil\\u2028{forged}]: bad_topic" in lines
    long_topic = next(line for line in lines if line.startswith("Received a message by topic [UPB/xxx"))
    assert long_topic.endswith("…(20004 characters)]") and len(long_topic) < 400
    refused = "Ignored the message by topic [UPB/" + "x" * 296 + "…(20004 characters)]: station_too_long"
    assert refused in lines
    assert f"Ignored UPB.Keys.{'k' * 200}: key_too_long" in lines
    assert f"Ignored UPB.Keys.BAT\\u000a{forged}: bad_name" in lines
    assert "Ignored UPB.Keys.a\\u202eb: bad_name" in lines
    assert "UPB.Keys.ok 4" in lines and not any("status" in line for line in lines)
    assert "Ignored UPB.Budget.b: device_series_budget" in lines
    assert any(line.startswith("Device UPB/Budget has 1 series (MAX_SERIES_PER_DEVICE)") for line in lines)
