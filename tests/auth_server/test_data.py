"""The HTTP data path: the MQTT payload rules over HTTP, rights per series, all or nothing."""

from __future__ import annotations

import json
import tracemalloc
from urllib.parse import quote

import pytest

from adapter.contract import split_topic
from auth_server import create_app
from tests.auth_server.conftest import Api
from tests.servers import InfluxServer, free_port


def _points(influx: InfluxServer, database: str) -> int:
    names = influx.query("SHOW DATABASES")["results"][0].get("series", [{}])[0].get("values", [])
    if [database] not in names:
        return 0
    return influx.count_points(database)


def test_device_writes_its_series_and_reads_it_back(api: Api, influx: InfluxServer, database: str) -> None:
    _, token = api.device("rpi-1", ("UPB", "RPi_1", True, True))
    body = {"BAT": 99, "HUMID": 40.5, "status": "ok", "timestamp": "2019-11-26T03:54:20+03:00"}
    response = api.call("POST", "/api/data/UPB/RPi_1", token=token, json=body)
    assert response.status_code == 200
    assert response.get_json() == {"stored": 2, "ignored": [{"key": "status", "reason": "not_numeric"}]}

    # Stored exactly as the adapter stores MQTT messages: <station>.<metric>, tags, float value.
    series = influx.series('SELECT "value", "location", "station" FROM "RPi_1.BAT"', database)
    assert series[0]["values"] == [[1574729660000000000, 99.0, "UPB", "RPi_1"]]
    assert api.metric("auth_points_written_total") == 2

    read = api.call("GET", "/api/data/UPB/RPi_1", token=token)
    assert read.status_code == 200
    assert read.get_json() == {
        "location": "UPB",
        "station": "RPi_1",
        "series": [
            {"metric": "BAT", "values": [["2019-11-26T00:54:20Z", 99.0]]},
            {"metric": "HUMID", "values": [["2019-11-26T00:54:20Z", 40.5]]},
        ],
    }


def test_backlog_array_is_stored_with_each_timestamp(api: Api, influx: InfluxServer, database: str) -> None:
    _, token = api.device("rpi-2", ("UPB", "RPi_2", True, True))
    backlog = [{"TEMP": 20, "timestamp": 1_700_000_000}, {"TEMP": 21, "timestamp": 1_700_000_001_500}]
    response = api.call("POST", "/api/data/UPB/RPi_2", token=token, json=backlog)
    assert response.status_code == 200
    assert response.get_json()["stored"] == 2
    values = influx.series('SELECT "value" FROM "RPi_2.TEMP"', database)[0]["values"]
    assert values == [[1_700_000_000_000_000_000, 20.0], [1_700_000_001_500_000_000, 21.0]]


def test_read_filters_by_metric_time_and_limit(api: Api) -> None:
    _, token = api.device("rpi-3", ("UPB", "RPi_3", True, True))
    backlog = [{"A": i, "B": -i, "timestamp": 1_700_000_000 + i} for i in range(10)]
    assert api.call("POST", "/api/data/UPB/RPi_3", token=token, json=backlog).status_code == 200

    def read(**params: str) -> list[dict]:
        response = api.call("GET", "/api/data/UPB/RPi_3", token=token, query_string=params)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["series"]

    only_a = read(metric="A")
    assert [s["metric"] for s in only_a] == ["A"]
    assert [v for _, v in only_a[0]["values"]] == [float(i) for i in range(10)]
    window = read(metric="B", start="1700000003", end="2023-11-14T22:13:25Z")
    assert [v for _, v in window[0]["values"]] == [-3.0, -4.0, -5.0]
    newest = read(limit="2")
    assert {s["metric"]: [v for _, v in s["values"]] for s in newest} == {"A": [8.0, 9.0], "B": [-8.0, -9.0]}
    assert read(metric="nothing-here") == []


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "10001"},
        {"limit": "ten"},
        {"start": "yesterday"},
        {"end": "2019\u221211\u221226"},  # U+2212 minus signs
        {"metric": ""},
    ],
)
def test_bad_read_parameters_are_400(api: Api, params: dict[str, str]) -> None:
    _, token = api.device("rpi-q", ("UPB", "RPi_q", True, False))
    response = api.call("GET", "/api/data/UPB/RPi_q", token=token, query_string=params)
    assert response.status_code == 400
    assert set(response.get_json()) == {"error"}


def test_other_stations_series_are_403_and_nothing_is_written(
    api: Api, influx: InfluxServer, database: str
) -> None:
    _, token = api.device("rpi-4", ("UPB", "RPi_4", True, True))
    _, reader = api.device("reader", ("UPB", "RPi_5", True, False))
    for path in ("/api/data/UPB/RPi_5", "/api/data/UPB/RPi_44", "/api/data/Other/RPi_4"):
        response = api.call("POST", path, token=token, json={"BAT": 1})
        assert response.status_code == 403, path
        assert set(response.get_json()) == {"error"}
        assert api.call("GET", path, token=token).status_code == 403
    # A read-only right does not allow writing.
    assert api.call("POST", "/api/data/UPB/RPi_5", token=reader, json={"BAT": 1}).status_code == 403
    assert api.call("GET", "/api/data/UPB/RPi_5", token=reader).status_code == 200
    assert _points(influx, database) == 0
    # Its own series still works: the 403s were about the series, not the token.
    assert api.call("POST", "/api/data/UPB/RPi_4", token=token, json={"BAT": 1}).status_code == 200
    assert _points(influx, database) == 1


def test_wildcard_rights(api: Api, influx: InfluxServer, database: str) -> None:
    _, any_station = api.device("upb-all", ("UPB", "*", False, True))
    _, any_location = api.device("rpi-any", ("*", "RPi_7", False, True))
    assert api.call("POST", "/api/data/UPB/X1", token=any_station, json={"V": 1}).status_code == 200
    assert api.call("POST", "/api/data/UPB/X2", token=any_station, json={"V": 1}).status_code == 200
    assert api.call("POST", "/api/data/Lab/X1", token=any_station, json={"V": 1}).status_code == 403
    assert api.call("POST", "/api/data/Lab/RPi_7", token=any_location, json={"V": 1}).status_code == 200
    assert api.call("POST", "/api/data/Lab/RPi_8", token=any_location, json={"V": 1}).status_code == 403
    assert api.call("GET", "/api/data/UPB/X1", token=any_station).status_code == 403  # write-only
    assert _points(influx, database) == 3


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b'{"BAT": NaN}',
        b'{"BAT": Infinity}',
        b"42",
        b'"text"',
        b'{"BAT": 1, "timestamp": "2019\xe2\x88\x9211\xe2\x88\x9226T03:54:20"}',  # U+2212 minus signs
        b'{"BAT": 1, "timestamp": true}',
        b'{"BAT": 1, "timestamp": "3000-01-01T00:00:00Z"}',
        b'[{"BAT": 1}, {"BAT": 2, "timestamp": "yesterday"}]',  # one bad element rejects all
        b'[{"BAT": 1}, 7]',
        b"\xff\xfe",
    ],
)
def test_bad_payload_is_400_and_nothing_is_written(
    api: Api, influx: InfluxServer, database: str, payload: bytes
) -> None:
    _, token = api.device("rpi-bad", ("UPB", "RPi_bad", True, True))
    response = api.call(
        "POST", "/api/data/UPB/RPi_bad", token=token, data=payload, content_type="application/json"
    )
    assert response.status_code == 400
    assert set(response.get_json()) == {"error"}
    assert "nothing was stored" in response.get_json()["error"]
    assert _points(influx, database) == 0


def test_payload_over_the_size_limit_is_413(api: Api, influx: InfluxServer, database: str) -> None:
    _, token = api.device("rpi-big", ("UPB", "RPi_big", True, True))
    limit = 256 * 1024
    body = json.dumps({"BAT": 1, "pad": "x" * limit}).encode()
    response = api.call(
        "POST", "/api/data/UPB/RPi_big", token=token, data=body, content_type="application/json"
    )
    assert response.status_code == 413
    assert set(response.get_json()) == {"error"}
    assert _points(influx, database) == 0


@pytest.mark.parametrize(
    ("location", "station"),
    [
        ("x' OR '1'='1", "RPi_1"),
        ("UPB", '" OR 1=1 --'),
        ("loc\\", "st"),  # trailing backslash: refused by the contract (400)
        ("UPB", "a;DROP DATABASE x"),
        ("UPB", 'st\\"x'),  # backslash before a quote: refused by the contract (400)
        ("%27", "%22"),
    ],
)
def test_injection_shaped_path_parts_are_stored_verbatim_or_refused(
    api: Api, influx: InfluxServer, database: str, location: str, station: str
) -> None:
    _, token = api.device("any-dev", ("*", "*", True, True))
    path = f"/api/data/{quote(location, safe='')}/{quote(station, safe='')}"
    response = api.call("POST", path, token=token, json={"M": 5, "timestamp": 1_700_000_000})
    if split_topic(f"{location}/{station}") is None:
        # Names InfluxDB could not store faithfully are refused, as over MQTT.
        assert response.status_code == 400
        assert _points(influx, database) == 0
        return
    assert response.status_code == 200, response.get_json()
    # Stored under exactly those tags, readable back through the API, nothing else touched.
    series = influx.series('SELECT "value", "location", "station" FROM /.*/', database)
    assert [(s["name"], s["values"][0][2:]) for s in series] == [(f"{station}.M", [location, station])]
    read = api.call("GET", path, token=token, query_string={"metric": "M"})
    assert read.status_code == 200
    assert read.get_json()["series"] == [{"metric": "M", "values": [["2023-11-14T22:13:20Z", 5.0]]}]
    everything = api.call("GET", path, token=token)
    assert everything.get_json()["series"] == read.get_json()["series"]


def test_metric_parameter_cannot_escape_the_query(api: Api, influx: InfluxServer, database: str) -> None:
    _, token = api.device("dev-m", ("UPB", "S", True, True))
    _, other = api.device("dev-o", ("UPB", "T", True, True))
    assert api.call("POST", "/api/data/UPB/T", token=other, json={"SECRET": 1}).status_code == 200
    for metric in ['x" OR 1=1 --', 'M"; SELECT * FROM /.*/; --', "'", "\\x"]:
        response = api.call("GET", "/api/data/UPB/S", token=token, query_string={"metric": metric})
        assert response.status_code == 200, metric
        assert response.get_json()["series"] == []
    # A name the contract never stores (a trailing backslash) is not even queried.
    response = api.call("GET", "/api/data/UPB/S", token=token, query_string={"metric": "\\"})
    assert response.status_code == 400


def test_bad_path_parts_are_400(api: Api) -> None:
    _, token = api.device("dev-x", ("*", "*", True, True))
    # A control character cannot be a topic level.
    assert api.call("POST", "/api/data/UPB/a%01b", token=token, json={"A": 1}).status_code == 400
    # An encoded slash is refused outright (tests/auth_server/test_gateway.py says why).
    assert api.call("POST", "/api/data/UPB/a%2Fb", token=token, json={"A": 1}).status_code == 400


def test_data_api_needs_a_token(api: Api, influx: InfluxServer, database: str) -> None:
    assert api.call("POST", "/api/data/UPB/RPi_1", json={"BAT": 1}).status_code == 401
    assert api.call("GET", "/api/data/UPB/RPi_1").status_code == 401
    assert _points(influx, database) == 0


def test_influxdb_down_is_503_and_says_nothing_was_stored(api: Api, settings: dict[str, str]) -> None:
    app = create_app({**settings, "INFLUXDB_PORT": str(free_port())})
    down = Api(app.test_client(), settings)
    _, token = down.device("dev-down", ("UPB", "D", True, True))
    response = down.call("POST", "/api/data/UPB/D", token=token, json={"A": 1})
    assert response.status_code == 503
    assert "nothing was stored" in response.get_json()["error"]
    assert down.call("GET", "/api/data/UPB/D", token=token).status_code == 503


# --- the adapter's limits and series budget, over HTTP ------------------------------------


def _keys(n: int, value: object = 1) -> dict[str, object]:
    return {f"k{i}": value for i in range(n)}


@pytest.mark.parametrize(
    "case",
    [
        ("UPB/" + "S" * 129, {"BAT": 1}, "station_too_long"),
        ("UPB/RPi_l", _keys(1_001), "too_many_keys"),
        ("UPB/RPi_l", [{"v": i} for i in range(1_001)], "too_many_elements"),
        ("UPB/RPi_l", [_keys(1_000, i) for i in range(11)], "too_many_points"),
    ],
    ids=lambda case: case[2],
)
def test_limits_are_the_adapters_and_refuse_the_whole_body(
    api: Api, influx: InfluxServer, database: str, case: tuple[str, object, str]
) -> None:
    path, body, reason = case
    _, token = api.device("dev-lim", ("UPB", "*", True, True))
    response = api.call("POST", f"/api/data/{path}", token=token, json=body)
    assert response.status_code == 400, response.get_json()
    assert "nothing was stored" in response.get_json()["error"]
    assert api.metric("auth_data_rejected_total", reason=reason) == 1
    assert _points(influx, database) == 0


def test_location_length_limit_and_long_keys(api: Api, influx: InfluxServer, database: str) -> None:
    _, token = api.device("dev-loc", ("*", "*", True, True))
    response = api.call("POST", f"/api/data/{'L' * 129}/S", token=token, json={"BAT": 1})
    assert response.status_code == 400
    assert api.metric("auth_data_rejected_total", reason="location_too_long") == 1
    # A key over MAX_KEY_LENGTH is skipped like any other unstorable key, and said so.
    response = api.call("POST", "/api/data/L/S", token=token, json={"k" * 129: 1, "ok": 2})
    assert response.status_code == 200
    assert response.get_json() == {"stored": 1, "ignored": [{"key": "k" * 129, "reason": "key_too_long"}]}


def test_series_budget_per_device_over_http(
    settings: dict[str, str], influx: InfluxServer, database: str
) -> None:
    limited = {**settings, "MAX_SERIES_PER_DEVICE": "3", "MAX_SERIES": "5"}
    api = Api(create_app(limited).test_client(), limited)
    _, token = api.device("dev-bud", ("UPB", "*", True, True))
    assert api.call("POST", "/api/data/UPB/A", token=token, json={"a": 1, "b": 2}).status_code == 200
    # All or nothing: one metric past the budget refuses the body, known or not.
    over = api.call("POST", "/api/data/UPB/A", token=token, json={"a": 3, "c": 4, "d": 5})
    assert over.status_code == 400
    assert "MAX_SERIES_PER_DEVICE" in over.get_json()["error"]
    assert api.metric("auth_data_rejected_total", reason="device_series_budget") == 1
    # Known series and what still fits keep working.
    assert api.call("POST", "/api/data/UPB/A", token=token, json={"a": 6, "c": 7}).status_code == 200
    assert api.call("POST", "/api/data/UPB/B", token=token, json={"x": 1, "y": 1}).status_code == 200
    full = api.call("POST", "/api/data/UPB/C", token=token, json={"z": 1})
    assert full.status_code == 400
    assert "MAX_SERIES" in full.get_json()["error"]
    assert api.metric("auth_data_rejected_total", reason="series_budget") == 1
    series = influx.series("SHOW SERIES", database)
    assert sum(len(s["values"]) for s in series) == 5


def test_series_budget_is_read_from_influxdb(
    settings: dict[str, str], influx: InfluxServer, database: str
) -> None:
    # Series the adapter (or another replica) stored count against the budget of this one.
    influx.query(f'CREATE DATABASE "{database}"')
    lines = "\n".join(f"M{i}.v,location=UPB,station=M{i} value=1 1" for i in range(4))
    assert influx.write(database, lines).status_code == 204
    limited = {**settings, "MAX_SERIES": "5"}
    api = Api(create_app(limited).test_client(), limited)
    _, token = api.device("dev-seed", ("UPB", "*", True, True))
    assert api.call("POST", "/api/data/UPB/M0", token=token, json={"v": 2}).status_code == 200  # known
    assert api.call("POST", "/api/data/UPB/N", token=token, json={"v": 1}).status_code == 200  # the 5th
    assert api.call("POST", "/api/data/UPB/O", token=token, json={"v": 1}).status_code == 400


def test_a_body_at_every_limit_costs_little_memory(api: Api, influx: InfluxServer, database: str) -> None:
    # The 242 KB POST took a worker to 575 MB. The largest body the limits let through
    # (10,000 points under 128-character names), and one they refuse, measured in this process.
    _, token = api.device("dev-mem", ("*", "*", True, True))
    name = "\u0174" * 128
    path = f"/api/data/{quote(name)}/{quote(name)}"
    biggest = [_keys(1_000, e) | {"timestamp": 1_700_000_000 + e} for e in range(10)]
    refused = _keys(18_000)
    for body, status in ((biggest, 200), (refused, 400)):
        data = json.dumps(body).encode()
        tracemalloc.start()
        try:
            response = api.call("POST", path, token=token, data=data, content_type="application/json")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == status
        assert peak < 64 * 1024 * 1024, f"{peak / 2**20:.0f} MB for a {len(data) / 1024:.0f} KB body"
    assert _points(influx, database) == 10_000
