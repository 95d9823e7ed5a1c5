"""The dashboards' queries, run as Grafana runs them, against data the real adapter stored.

Devices publish to Mosquitto, the real adapter writes to a real influxd, then one refresh of
each provisioned dashboard is replayed (tests/grafana/grafana_model.py): every panel's
query rendered the way Grafana renders it, executed over InfluxDB's HTTP API, named, shared
with the panels that reuse it, and transformed. What comes out must equal what the
contract says each panel shows, computed here from the published samples alone.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from adapter.contract import Point, line_protocol
from tests.grafana.dashboards import load_dashboard, panel_of_type
from tests.grafana.grafana_model import (
    REDUCERS,
    Frame,
    Mode,
    Refresh,
    TimeRange,
    calculate_interval,
    custom_options,
    join_by_field,
    panel_width_px,
    refresh,
)
from tests.mqtt_client import Publisher
from tests.servers import InfluxServer, ServerError, wait_for

HOUR_MS = 3_600_000
SECOND_MS = 1000
BATTERY_COLUMNS = ["Time Series", "Current Value", "Minimum Value", "Maximum Value", "Average Value"]
# The seed's battery table: Grafana's reduce of the 1 s graph series, in the header's order.
SEED_REDUCERS = ("lastNotNull", "min", "max", "mean")
# Every choice of the grouping variable, with the group it means for a 1,000 px panel
# (auto: rangeutil roundInterval of range/1000 px, checked in test_grafana_model.py).
GROUPINGS = {"1s": 1000, "10s": 10_000, "1m": 60_000, "5m": 300_000}


@dataclass(frozen=True)
class Sample:
    """One value a device sent: becomes one point `<station>.<metric>` in InfluxDB."""

    location: str
    station: str
    metric: str
    value: float
    time_ms: int

    @property
    def device(self) -> tuple[str, str]:
        return (self.location, self.station)


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
        # A second RPi_1 with a battery, at another location: the same measurement
        # RPi_1.BAT, the same series name, another device (its own line and table row).
        *msg("Farm", "RPi_1", t + 200_000, BAT=50),
        *msg("Farm", "RPi_1", t + 900_000, BAT=48.5),
        # Several readings within a second, at its extremes and at its end: the server-side
        # statistics (raw readings) and the 1 s series' statistics differ in every column.
        *msg("Lab", "Burst", t + 2_000_000, BAT=95),
        *msg("Lab", "Burst", t + 2_000_100, BAT=75),
        *msg("Lab", "Burst", t + 2_100_000, BAT=82),
        *msg("Lab", "Burst", t + 2_200_000, BAT=60),
        *msg("Lab", "Burst", t + 2_200_500, BAT=64),
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

# (series name, location) → [(group start, mean)]; the location tells apart two devices
# whose series share a name.
Series = dict[tuple[str, str], list[tuple[int, float]]]


def grouped(samples: Iterable[Sample], name: Callable[[Sample], str], bucket_ms: int = SECOND_MS) -> Series:
    """Groups aligned on the epoch like InfluxDB's GROUP BY time(...), mean per group."""
    buckets: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        buckets[(name(s), s.location)][s.time_ms // bucket_ms * bucket_ms].append(s.value)
    return {
        series: [(t, sum(values) / len(values)) for t, values in sorted(groups.items())]
        for series, groups in buckets.items()
    }


def upb_samples(samples: list[Sample], now_ms: int) -> list[Sample]:
    return [s for s in samples if s.location == "UPB" and s.time_ms >= now_ms - 6 * HOUR_MS]


def bat_samples(samples: list[Sample], now_ms: int) -> list[Sample]:
    return [s for s in samples if s.metric == "BAT" and s.time_ms >= now_ms - 48 * HOUR_MS]


def upb_expected(samples: list[Sample], now_ms: int, bucket_ms: int = SECOND_MS) -> Series:
    return grouped(upb_samples(samples, now_ms), lambda s: f"{s.station}.{s.metric}", bucket_ms)


def battery_expected(samples: list[Sample], now_ms: int, bucket_ms: int = SECOND_MS) -> Series:
    return grouped(bat_samples(samples, now_ms), lambda s: s.station, bucket_ms)


def one_per_second(samples: Iterable[Sample]) -> bool:
    seconds = [(s.device, s.metric, s.time_ms // SECOND_MS) for s in samples]
    return len(seconds) == len(set(seconds))


# --- running a dashboard ----------------------------------------------------------------


def run(influx: InfluxServer, database: str, dashboard: dict[str, Any], mode: Mode, **kwargs: Any) -> Refresh:
    """One refresh; Grafana asks for epoch=ms and reads every timestamp as milliseconds."""
    return refresh(
        dashboard,
        lambda text: influx.query(text, database, epoch="ms"),
        now_ms=int(time.time() * 1000),
        mode=mode,
        **kwargs,
    )


def as_series(frames: list[Frame]) -> Series:
    """Graph frames keyed like Series: the display name and the series' location label."""
    out: Series = {}
    for frame in frames:
        time_field, value = frame.fields
        key = (value.name, value.labels.get("location", "UPB"))
        assert key not in out, f"two series are the same device: {key}"
        out[key] = list(zip(time_field.values, value.values, strict=True))
    return out


def assert_series_equal(actual: Series, expected: Series) -> None:
    assert sorted(actual) == sorted(expected), "series differ"
    for key, points in expected.items():
        assert [t for t, _ in actual[key]] == [t for t, _ in points], f"{key}: group instants differ"
        assert [v for _, v in actual[key]] == pytest.approx([v for _, v in points]), f"{key}: values differ"


def groupings(dashboard: dict[str, Any], panel: dict[str, Any]) -> dict[str, int]:
    """Every choice of the dashboard's grouping variable → the group it means for `panel`
    on a 1,000 px dashboard (the default width); `auto` is what calculateInterval gives."""
    time_range = TimeRange(dashboard["time"]["from"], dashboard["time"]["to"], 0)
    auto = calculate_interval(time_range, panel_width_px(panel, 1000), panel.get("interval"))
    out = {**GROUPINGS, "auto": auto}
    (variable,) = dashboard["templating"]["list"]
    assert set(out) == set(custom_options(variable["query"])), "a choice is not tested"
    return out


def check_upb(influx: InfluxServer, database: str, samples: list[Sample]) -> None:
    dashboard = load_dashboard("upb_iot_data.json")
    graph = panel_of_type(dashboard, "timeseries")
    table = panel_of_type(dashboard, "table")
    for mode in Mode:
        for choice, bucket_ms in groupings(dashboard, graph).items():
            now_ms = int(time.time() * 1000)
            expected = upb_expected(samples, now_ms, bucket_ms)
            result = run(influx, database, dashboard, mode, choices={"grouping": choice})

            assert [q.panel_id for q in result.queries] == [graph["id"]], "one query per refresh"
            assert_series_equal(as_series(result.shown[graph["id"]]), expected)

            # The table shows the graph's own result, joined on time: the same rows.
            (rows,) = result.shown[table["id"]]
            (joined,) = join_by_field(result.data[graph["id"]], {"byField": "Time", "mode": "outer"})
            assert rows.rows() == joined.rows()
            assert rows.columns[0] == "Time"
            assert sorted(rows.columns[1:]) == sorted(name for name, _ in expected), "one column per series"
            instants = sorted({t for points in expected.values() for t, _ in points})
            assert [row["Time"] for row in rows.rows()] == instants, "one row per grouped instant"
            for row in rows.rows():
                for (name, _), points in expected.items():
                    want = dict(points).get(row["Time"])
                    assert row[name] == (pytest.approx(want) if want is not None else None), (name, row)
            if choice == "1s":
                # The data exercises both kinds of rows the contract describes.
                filled = [sum(v is not None for k, v in row.items() if k != "Time") for row in rows.rows()]
                assert max(filled) >= 3 and min(filled) == 1, filled


def table_by_device(frames: list[Frame]) -> dict[tuple[str, str], dict[str, Any]]:
    (table,) = frames
    assert table.columns == [*BATTERY_COLUMNS, "Location"]
    rows = {(row["Location"], row["Time Series"]): row for row in table.rows()}
    assert len(rows) == len(table.rows()), "one row per device"
    return rows


def check_battery(influx: InfluxServer, database: str, samples: list[Sample]) -> None:
    dashboard = load_dashboard("battery_dashboard.json")
    graph = panel_of_type(dashboard, "timeseries")
    table = panel_of_type(dashboard, "table")
    for mode in Mode:
        for choice, bucket_ms in groupings(dashboard, graph).items():
            now_ms = int(time.time() * 1000)
            result = run(influx, database, dashboard, mode, choices={"grouping": choice})
            # One query for the graph, one aggregation for the table, nothing else.
            assert [q.panel_id for q in result.queries] == [graph["id"], table["id"]]
            assert_series_equal(
                as_series(result.shown[graph["id"]]), battery_expected(samples, now_ms, bucket_ms)
            )
            stats = table_by_device(result.shown[table["id"]])

            bat = bat_samples(samples, now_ms)
            devices = {s.device for s in bat}
            # The table is InfluxDB's statistics of the stored readings, one row per device.
            assert set(stats) == devices
            for device in devices:
                readings = sorted((s.time_ms, s.value) for s in bat if s.device == device)
                values = [v for _, v in readings]
                row = stats[device]
                assert row["Current Value"] == pytest.approx(readings[-1][1]), device
                assert row["Minimum Value"] == pytest.approx(min(values)), device
                assert row["Maximum Value"] == pytest.approx(max(values)), device
                assert row["Average Value"] == pytest.approx(sum(values) / len(values)), device

            if choice != "1s":
                continue
            # Against the seed's table (the reduce of the 1 s series): equal for every device
            # with at most one reading per second, different for the two with more.
            seed = seed_statistics(result.shown[graph["id"]])
            regular = {d for d in devices if one_per_second(s for s in bat if s.device == d)}
            assert devices - regular == {("UPB", "RPi_1"), ("Lab", "Burst")}
            assert {("UPB", "RPi_2"), ("Farm", "RPi_1")} <= regular
            for device in regular:
                assert [stats[device][c] for c in BATTERY_COLUMNS[1:]] == pytest.approx(seed[device]), device
            # What the panel description says differs: the last reading, the extreme readings,
            # every reading weighing the same.
            burst = [stats[("Lab", "Burst")][c] for c in BATTERY_COLUMNS[1:]]
            assert burst == pytest.approx([64, 60, 95, 75.2])
            assert seed[("Lab", "Burst")] == pytest.approx([62, 62, 85, 229 / 3])
            # UPB/RPi_1's two readings in one second are neither its last nor an extreme.
            rpi_1 = [stats[("UPB", "RPi_1")][c] for c in BATTERY_COLUMNS[1:]]
            assert rpi_1 == pytest.approx([95, 95, 100, 97.75])
            assert seed[("UPB", "RPi_1")] == pytest.approx([95, 95, 100, 293 / 3])


def seed_statistics(graph_frames: list[Frame]) -> dict[tuple[str, str], list[float]]:
    """device → [last, min, max, mean] of its 1 s series, as the seed's reduce computed them."""
    out = {}
    for frame in graph_frames:
        value = frame.fields[1]
        device = (value.labels["location"], value.labels["station"])
        out[device] = [REDUCERS[r][1](value.values) for r in SEED_REDUCERS]
    return out


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
    assert {"RPi_1.CO2", "RPi_3.TEMP"} <= {name for name, _ in upb_expected(samples, now_ms)}


def test_battery_dashboard_shows_every_station_with_recent_bat(
    broker, influx, database, make_adapter, publisher
) -> None:
    make_adapter(broker, influx, database)
    now_ms = int(time.time()) * 1000
    samples = first_wave(now_ms)
    publish(publisher, influx, database, samples, len(samples))
    check_battery(influx, database, samples)
    assert sorted(battery_expected(samples, now_ms)) == [
        ("Burst", "Lab"),
        ("Gateway", "Home"),
        ("Probe", "Lab"),
        ("RPi_1", "Farm"),
        ("RPi_1", "UPB"),
        ("RPi_2", "UPB"),
        ("Zone.3", "UPB"),
    ]

    wave = second_wave(now_ms)
    samples += wave
    publish(publisher, influx, database, wave, len(samples))
    check_battery(influx, database, samples)
    assert {("RPi_3", "UPB"), ("Field_7", "Farm")} <= set(battery_expected(samples, now_ms))


# --- auto grouping on a dense fleet -----------------------------------------------------


@pytest.fixture(scope="module")
def dense_fleet(influx: InfluxServer) -> Iterator[str]:
    """A database of readings far denser than any screen: 1 per second for 6 h at UPB
    (TEMP, BAT) and 1 per 10 s for 48 h elsewhere (BAT), written as the adapter writes them."""
    database = "t_grafana_dense_fleet"
    influx.query(f'CREATE DATABASE "{database}"')
    now_ms = int(time.time() * 1000)
    points = [
        Point("UPB", station, metric, float(i % 100), (now_ms - i * SECOND_MS) * 1_000_000)
        for station in ("Dense_1", "Dense_2")
        for metric in ("TEMP", "BAT")
        for i in range(6 * 3600)
    ] + [
        Point(location, "Dense_3", "BAT", float(i % 100), (now_ms - i * 10 * SECOND_MS) * 1_000_000)
        for location in ("Field", "Lab")
        for i in range(48 * 360)
    ]
    lines = [line_protocol(p) for p in points]
    for start in range(0, len(lines), 20_000):
        response = influx.write(database, "\n".join(lines[start : start + 20_000]))
        assert response.status_code == 204, response.text
    assert influx.count_points(database) == len(points)
    yield database
    influx.query(f'DROP DATABASE "{database}"')


def longest_series(panel: dict[str, Any], frames: list[Frame]) -> int:
    """Points of the longest series a panel got: a table query's rows are one series each."""
    if any(t.get("resultFormat") == "table" for t in panel.get("targets", [])):
        (table,) = frames
        devices = [(row["location"], row["station"]) for row in table.rows()]
        assert len(devices) == len(set(devices)), "one row per device"
        return 1
    return max(len(f.fields[0].values) for f in frames)


@pytest.mark.parametrize("dashboard_width_px", [320, 1000, 1920])
@pytest.mark.parametrize("name", ["upb_iot_data.json", "battery_dashboard.json"])
def test_auto_grouping_returns_at_most_two_points_per_pixel(
    influx: InfluxServer, dense_fleet: str, name: str, dashboard_width_px: int
) -> None:
    database = dense_fleet
    dashboard = load_dashboard(name)
    graph = panel_of_type(dashboard, "timeseries")
    for mode in Mode:
        for time_range in (None, ("now-1h", "now")):
            auto = run(
                influx,
                database,
                dashboard,
                mode,
                dashboard_width_px=dashboard_width_px,
                choices={"grouping": "auto"},
                time=time_range,
            )
            assert set(auto.data) == {p["id"] for p in dashboard["panels"]}
            for panel in dashboard["panels"]:
                limit = 2 * panel_width_px(panel, dashboard_width_px)
                longest = longest_series(panel, auto.data[panel["id"]])
                assert 0 < longest <= limit, (panel["title"], mode, time_range, longest, limit)
        # The data is dense enough that the 1 s default returns far more: auto is what bounds it.
        spec = run(influx, database, dashboard, mode, dashboard_width_px=dashboard_width_px)
        assert longest_series(graph, spec.data[graph["id"]]) > 2 * panel_width_px(graph, dashboard_width_px)
