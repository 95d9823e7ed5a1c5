"""The dashboards' queries, run as Grafana runs them, against data the real adapter stored.

Devices publish to Mosquitto, the real adapter writes to a real influxd, then each panel's
query is taken from the provisioned JSON, its macros substituted the way Grafana does
(tests/grafana/grafana_model.py), executed over InfluxDB's HTTP API, and its frames passed
through the panel's transformations. What comes out must equal what the contract says
the panel shows, computed here from the published samples alone.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.grafana.dashboards import load_dashboard, panel_of_type
from tests.grafana.grafana_model import (
    Frame,
    Mode,
    TimeRange,
    apply_transformations,
    frames_from_response,
    render_query,
)
from tests.mqtt_client import Publisher
from tests.servers import InfluxServer, ServerError, wait_for

HOUR_MS = 3_600_000
SECOND_MS = 1000
BATTERY_COLUMNS = ["Time Series", "Current Value", "Minimum Value", "Maximum Value", "Average Value"]


@dataclass(frozen=True)
class Sample:
    """One value a device sent: becomes one point `<station>.<metric>` in InfluxDB."""

    location: str
    station: str
    metric: str
    value: float
    time_ms: int


def msg(location: str, station: str, time_ms: int, **metrics: float) -> list[Sample]:
    return [Sample(location, station, metric, value, time_ms) for metric, value in metrics.items()]


def first_wave(now_ms: int) -> list[Sample]:
    """Several locations and stations; traps for every way a query could go wrong."""
    t = now_ms - HOUR_MS
    return [
        # Two messages in the same second: the 1 s group holds their mean (22.0, 98.0).
        *msg("UPB", "RPi_1", t, TEMP=21.5, HUMID=40, BAT=99),
        *msg("UPB", "RPi_1", t + 300, TEMP=22.5, BAT=97),
        *msg("UPB", "RPi_1", t + 600_000, TEMP=23, BAT=95),
        # Older than 6 h: outside UPB IoT Data, inside the 48 h of the battery dashboard.
        *msg("UPB", "RPi_1", now_ms - 7 * HOUR_MS, TEMP=10, BAT=100),
        # BATTERY and BAT_V next to BAT: only BAT is a battery level.
        *msg("UPB", "RPi_2", t + 100_000, TEMP=19, BAT=80, BATTERY=3.7, BAT_V=3.9),
        *msg("UPB", "RPi_2", t + 1_800_000, BAT=78),
        # A station name with a dot: STATION.METRIC is still the whole measurement name.
        *msg("UPB", "Zone.3", t + 1_600_000, TEMP=18.25, BAT=60),
        # Same measurements as UPB/RPi_1 (RPi_1.TEMP, RPi_1.HUMID), other location, same
        # second: only the location tag keeps these out of the UPB panels.
        *msg("Home", "RPi_1", t, TEMP=5),
        *msg("Home", "RPi_1", t + 1_100_000, HUMID=90),
        *msg("Home", "Gateway", now_ms - 600_000, BAT=45),
        *msg("Home", "Gateway", now_ms - 500_000, BAT=44.5),
        # Reports BATTERY only: not a battery station.
        *msg("Home", "Tracker_9", now_ms - 900_000, BATTERY=55),
        # Last BAT older than 48 h (device timestamp); still sends other data.
        *msg("Lab", "Old_1", now_ms - 50 * HOUR_MS, BAT=12),
        *msg("Lab", "Old_1", now_ms - 1_000_000, TEMP=30),
        # BAT 47 h ago: inside the 48 h.
        *msg("Lab", "Probe", now_ms - 47 * HOUR_MS, BAT=33),
    ]


def second_wave(now_ms: int) -> list[Sample]:
    """Published after the first checks: a new metric, a new UPB station, a new location."""
    return [
        *msg("UPB", "RPi_1", now_ms - 100_000, CO2=410, TEMP=24),
        *msg("UPB", "RPi_3", now_ms - 90_000, TEMP=20, BAT=88),
        *msg("Farm", "Field_7", now_ms - 80_000, BAT=70),
    ]


def publish(
    publisher: Publisher, influx: InfluxServer, database: str, samples: list[Sample], total: int
) -> None:
    """Send the samples as device messages (one per location/station/instant) and wait
    until the adapter has stored `total` points in the database."""
    messages: dict[tuple[str, str, int], dict[str, float]] = defaultdict(dict)
    for s in samples:
        messages[(s.location, s.station, s.time_ms)][s.metric] = s.value
    for (location, station, time_ms), metrics in messages.items():
        # Epoch milliseconds (≥ 1e11) are read as such by the contract.
        publisher.publish(f"{location}/{station}", json.dumps({"timestamp": time_ms, **metrics}))
    publisher.wait()

    def stored() -> bool:
        try:
            return influx.count_points(database) == total
        except ServerError:  # database not created yet
            return False

    wait_for(stored, 60, f"{total} points in {database}")


# --- what the contract says each panel shows, from the samples alone -----------------------


Series = dict[str, list[tuple[int, float]]]


def grouped(
    samples: Iterable[Sample], keep: Callable[[Sample], bool], name: Callable[[Sample], str]
) -> Series:
    """1 s groups (aligned on the epoch like InfluxDB's GROUP BY time(1s)), mean per group."""
    buckets: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        if keep(s):
            buckets[name(s)][s.time_ms // SECOND_MS * SECOND_MS].append(s.value)
    return {
        series: [(t, sum(values) / len(values)) for t, values in sorted(groups.items())]
        for series, groups in buckets.items()
    }


def upb_expected(samples: list[Sample], now_ms: int) -> Series:
    return grouped(
        samples,
        lambda s: s.location == "UPB" and s.time_ms >= now_ms - 6 * HOUR_MS,
        lambda s: f"{s.station}.{s.metric}",
    )


def battery_expected(samples: list[Sample], now_ms: int) -> Series:
    bat = [s for s in samples if s.metric == "BAT" and s.time_ms >= now_ms - 48 * HOUR_MS]
    # Series are named after the station: the data must not give two locations one name.
    owners = defaultdict(set)
    for s in bat:
        owners[s.station].add(s.location)
    assert all(len(locations) == 1 for locations in owners.values()), owners
    return grouped(bat, lambda s: True, lambda s: s.station)


# --- running a panel --------------------------------------------------------------------


def run_panel(
    influx: InfluxServer, database: str, dashboard: dict[str, Any], panel: dict[str, Any], mode: Mode
) -> list[Frame]:
    """The frames a panel displays: each target rendered, executed, named; then transformed."""
    time_range = TimeRange(dashboard["time"]["from"], dashboard["time"]["to"], int(time.time() * 1000))
    frames: list[Frame] = []
    for target in panel["targets"]:
        query = render_query(target["query"], time_range, interval_ms=SECOND_MS, mode=mode)
        # Grafana asks for epoch=ms and reads every timestamp as milliseconds.
        body = influx.query(query, database, epoch="ms")
        frames.extend(frames_from_response(body, target.get("alias", "")))
    return apply_transformations(frames, panel.get("transformations", []))


def as_series(frames: list[Frame]) -> Series:
    names = [f.fields[1].name for f in frames]
    assert len(names) == len(set(names)), f"two series share a name: {names}"
    return {f.fields[1].name: list(zip(f.fields[0].values, f.fields[1].values, strict=True)) for f in frames}


def assert_series_equal(actual: Series, expected: Series) -> None:
    assert sorted(actual) == sorted(expected), "series names differ"
    for name, points in expected.items():
        assert [t for t, _ in actual[name]] == [t for t, _ in points], f"{name}: group instants differ"
        assert [v for _, v in actual[name]] == pytest.approx([v for _, v in points]), f"{name}: values differ"


def check_upb(influx: InfluxServer, database: str, samples: list[Sample]) -> None:
    dashboard = load_dashboard("upb_iot_data.json")
    for mode in Mode:
        now_ms = int(time.time() * 1000)
        expected = upb_expected(samples, now_ms)

        graph = run_panel(influx, database, dashboard, panel_of_type(dashboard, "timeseries"), mode)
        assert_series_equal(as_series(graph), expected)

        (table,) = run_panel(influx, database, dashboard, panel_of_type(dashboard, "table"), mode)
        assert table.columns[0] == "Time"
        assert sorted(table.columns[1:]) == sorted(expected), "one column per UPB series"
        instants = sorted({t for points in expected.values() for t, _ in points})
        rows = table.rows()
        assert [row["Time"] for row in rows] == instants, "one row per grouped instant"
        for row in rows:
            for name, points in expected.items():
                want = dict(points).get(row["Time"])
                assert row[name] == (pytest.approx(want) if want is not None else None), (name, row)
        # The data exercises both kinds of rows the contract describes.
        filled = [sum(v is not None for k, v in row.items() if k != "Time") for row in rows]
        assert max(filled) >= 3 and min(filled) == 1, filled


def check_battery(influx: InfluxServer, database: str, samples: list[Sample]) -> None:
    dashboard = load_dashboard("battery_dashboard.json")
    for mode in Mode:
        now_ms = int(time.time() * 1000)
        expected = battery_expected(samples, now_ms)

        graph = run_panel(influx, database, dashboard, panel_of_type(dashboard, "timeseries"), mode)
        assert_series_equal(as_series(graph), expected)

        (table,) = run_panel(influx, database, dashboard, panel_of_type(dashboard, "table"), mode)
        assert table.columns == BATTERY_COLUMNS
        stats = {row["Time Series"]: row for row in table.rows()}
        assert sorted(stats) == sorted(expected)
        for station, points in expected.items():
            groups = [v for _, v in points]
            row = stats[station]
            assert row["Current Value"] == pytest.approx(groups[-1]), station
            assert row["Minimum Value"] == pytest.approx(min(groups)), station
            assert row["Maximum Value"] == pytest.approx(max(groups)), station
            assert row["Average Value"] == pytest.approx(sum(groups) / len(groups)), station
        # The average is over 1 s groups, not raw points; the data makes the two differ.
        raw = [s.value for s in samples if s.station == "RPi_1" and s.metric == "BAT" and s.location == "UPB"]
        assert not math.isclose(stats["RPi_1"]["Average Value"], sum(raw) / len(raw))


def test_upb_iot_data_shows_every_upb_series_and_nothing_else(
    broker, influx, database, make_adapter, publisher
) -> None:
    make_adapter(broker, influx, database)
    now_ms = int(time.time()) * 1000
    samples = first_wave(now_ms)
    publish(publisher, influx, database, samples, len(samples))
    check_upb(influx, database, samples)

    # New metric and new station mid-stream: they appear with no dashboard edit.
    wave = second_wave(now_ms)
    samples += wave
    publish(publisher, influx, database, wave, len(samples))
    check_upb(influx, database, samples)
    assert {"RPi_1.CO2", "RPi_3.TEMP"} <= set(upb_expected(samples, now_ms))


def test_battery_dashboard_shows_every_station_with_recent_bat(
    broker, influx, database, make_adapter, publisher
) -> None:
    make_adapter(broker, influx, database)
    now_ms = int(time.time()) * 1000
    samples = first_wave(now_ms)
    publish(publisher, influx, database, samples, len(samples))
    check_battery(influx, database, samples)
    assert sorted(battery_expected(samples, now_ms)) == ["Gateway", "Probe", "RPi_1", "RPi_2", "Zone.3"]

    wave = second_wave(now_ms)
    samples += wave
    publish(publisher, influx, database, wave, len(samples))
    check_battery(influx, database, samples)
    assert {"RPi_3", "Field_7"} <= set(battery_expected(samples, now_ms))
