"""The Grafana emulation the dashboard tests rely on, checked against Grafana's documented
behaviour and its sources (InfluxDB data source docs, alias patterns; query.go Build;
rangeutil.ts calculateInterval; scenes sceneInterpolator and CustomVariable)."""

from __future__ import annotations

import pytest

from tests.grafana.grafana_model import (
    Mode,
    TimeRange,
    UnsupportedError,
    calculate_interval,
    custom_options,
    format_interval,
    frames_from_response,
    interpolate,
    refresh,
    render_query,
    round_interval,
    series_name,
)

NOW = 1_700_000_000_000
SIX_HOURS = TimeRange("now-6h", "now", NOW)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (Mode.BACKEND, f"time >= {NOW - 6 * 3_600_000}ms and time <= {NOW}ms"),
        (Mode.CLASSIC, "time >= now() - 6h and time <= now()"),
    ],
)
def test_time_filter(mode: Mode, expected: str) -> None:
    assert render_query("WHERE $timeFilter", SIX_HOURS, 1000, mode) == f"WHERE {expected}"


def test_classic_mode_falls_back_to_milliseconds_for_weeks() -> None:
    weeks = TimeRange("now-2w", "now", NOW)
    assert render_query("$timeFilter", weeks, 1000, Mode.CLASSIC) == (
        f"time >= {NOW - 2 * 604_800_000}ms and time <= now()"
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("GROUP BY time($__interval)", "GROUP BY time(20s)"),
        ("GROUP BY time($interval)", "GROUP BY time(20s)"),
        ("LIMIT $__interval_ms", "LIMIT 20000"),
        # The dashboards' regular expressions end in `$/`, which is no variable.
        (
            "FROM /^.+\\.BAT$/ WHERE $timeFilter",
            f"FROM /^.+\\.BAT$/ WHERE time >= {NOW - 21_600_000}ms and time <= {NOW}ms",
        ),
    ],
)
def test_interval_macros(query: str, expected: str) -> None:
    assert render_query(query, SIX_HOURS, 20_000, Mode.BACKEND) == expected


@pytest.mark.parametrize("query", ["WHERE station =~ /^$station$/", "FROM ${measurement}", "[[station]]"])
def test_template_variables_are_refused_not_ignored(query: str) -> None:
    with pytest.raises(UnsupportedError):
        render_query(query, SIX_HOURS, 1000, Mode.BACKEND)


@pytest.mark.parametrize("raw", ["now-1M", "now/d", "2024-01-01"])
def test_unsupported_time_expressions_are_refused(raw: str) -> None:
    with pytest.raises(UnsupportedError):
        TimeRange(raw, "now", NOW).from_ms  # noqa: B018 - the property does the parsing


@pytest.mark.parametrize(
    ("ms", "text"), [(500, "500ms"), (1000, "1s"), (90_000, "1m"), (7_200_000, "2h"), (172_800_000, "2d")]
)
def test_format_interval(ms: int, text: str) -> None:
    assert format_interval(ms) == text


TAGS = {"location": "UPB", "station": "RPi_1"}


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("$measurement", "RPi_1.TEMP"),
        ("$m", "RPi_1.TEMP"),
        ("[[measurement]]", "RPi_1.TEMP"),
        ("$tag_station", "RPi_1"),
        ("[[tag_station]]", "RPi_1"),
        ("$tag_location/$tag_station", "UPB/RPi_1"),
        ("$col of $measurement", "mean of RPi_1.TEMP"),
        ("$0 / $1", "RPi_1 / TEMP"),
        ("$7", "$7"),  # no such segment: left as written
        ("$tag_missing", "$tag_missing"),  # tag not in GROUP BY: left as written
        ("$__interval", "1s"),
        ("", "RPi_1.TEMP.mean { location: UPB, station: RPi_1 }"),
    ],
)
def test_alias_patterns(alias: str, name: str) -> None:
    assert series_name(alias, "RPi_1.TEMP", "mean", TAGS, 1000) == name


# --- $__interval ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_ms", "rounded_ms"),
    [
        (5, 1),
        (300, 200),
        (900, 1000),
        (1499, 1000),
        (1500, 2000),
        (3499, 2000),
        (21_600, 20_000),  # 6 h over 1,000 px
        (172_800, 120_000),  # 48 h over 1,000 px
        (209_999, 120_000),
        (210_000, 300_000),
        (86_400_001, 86_400_000),
        (4_000_000_000, 31_536_000_000),
    ],
)
def test_round_interval(raw_ms: float, rounded_ms: int) -> None:
    assert round_interval(raw_ms) == rounded_ms


@pytest.mark.parametrize(
    ("time_from", "width", "low_limit", "interval_ms"),
    [
        ("now-6h", 1000, "1s", 20_000),
        ("now-48h", 1000, "1s", 120_000),
        ("now-6h", 320, "1s", 60_000),
        ("now-48h", 1920, "1s", 120_000),  # 90 s exactly: the next step up
        # The 1 s floor: a short range on a wide panel would group by 200 ms.
        ("now-5m", 1000, "1s", 1000),
        ("now-5m", 1000, None, 200),
        ("now-1h", 1000, "1m", 60_000),
    ],
)
def test_calculate_interval(time_from: str, width: int, low_limit: str | None, interval_ms: int) -> None:
    assert calculate_interval(TimeRange(time_from, "now", NOW), width, low_limit) == interval_ms


# --- variables --------------------------------------------------------------------------


def test_custom_variable_options() -> None:
    assert custom_options("1s,auto : $__interval, 10s") == {"1s": "1s", "auto": "$__interval", "10s": "10s"}
    assert custom_options(r"a\,b,c") == {"a,b": "a,b", "c": "c"}


def test_interpolation_is_one_pass() -> None:
    # A value that holds a variable is not interpolated again (scenes sceneInterpolator).
    values = {"grouping": "$__interval", "__interval": "20s"}
    assert interpolate("time($grouping) $__interval", values) == "time($__interval) 20s"
    assert interpolate("$unknown ${grouping}", values) == "$unknown $__interval"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (Mode.BACKEND, f"GROUP BY time(20s) WHERE time >= {NOW - 21_600_000}ms and time <= {NOW}ms"),
        (Mode.CLASSIC, "GROUP BY time(20s) WHERE time >= now() - 6h and time <= now()"),
    ],
)
def test_a_variable_holding_interval_reaches_the_interval(mode: Mode, expected: str) -> None:
    query = "GROUP BY time($grouping) WHERE $timeFilter"
    assert render_query(query, SIX_HOURS, 20_000, mode, {"grouping": "$__interval"}) == expected
    assert render_query(query, SIX_HOURS, 20_000, mode, {"grouping": "1s"}).startswith("GROUP BY time(1s)")


def test_a_variable_inside_a_regular_expression_breaks_the_interval() -> None:
    # Regex-escaped by the InfluxDB format function, then Build() leaves a stray backslash.
    query = "SELECT v FROM /^$grouping$/ WHERE $timeFilter"
    rendered = render_query(query, SIX_HOURS, 20_000, Mode.BACKEND, {"grouping": "$__interval"})
    assert "/^\\20s$/" in rendered


# --- frames and the shared data source --------------------------------------------------

TABLE_BODY = {
    "results": [
        {
            "series": [
                {
                    "name": "RPi_1.BAT",
                    "tags": {"station": "RPi_1", "location": "UPB"},
                    "columns": ["time", "Current Value", "Minimum Value"],
                    "values": [[NOW, 80.0, 79.0]],
                },
                {
                    "name": "RPi_1.BAT",
                    "tags": {"station": "RPi_1", "location": "Farm"},
                    "columns": ["time", "Current Value", "Minimum Value"],
                    "values": [[NOW, 45.0, 44.5]],
                },
            ]
        }
    ]
}


def test_table_result_is_one_frame_of_every_series_rows() -> None:
    (frame,) = frames_from_response(TABLE_BODY, "", result_format="table")
    assert frame.columns == ["Time", "location", "station", "Current Value", "Minimum Value"]
    assert [row["location"] for row in frame.rows()] == ["UPB", "Farm"]
    assert [row["Current Value"] for row in frame.rows()] == [80.0, 45.0]


def test_time_series_fields_carry_the_series_tags() -> None:
    body = {"results": [{"series": [{**TABLE_BODY["results"][0]["series"][1], "columns": ["time", "mean"]}]}]}
    (frame,) = frames_from_response(body, "$tag_station")
    assert frame.fields[1].name == "RPi_1"
    assert frame.fields[1].labels == {"station": "RPi_1", "location": "Farm"}


SHARED_DASHBOARD = {
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": []},
    "panels": [
        {
            "id": 7,
            "title": "graph",
            "gridPos": {"w": 12},
            "interval": "1s",
            "datasource": {"type": "influxdb", "uid": "x"},
            "targets": [{"refId": "A", "rawQuery": True, "query": "SELECT 1 GROUP BY time($__interval)"}],
        },
        {
            "id": 8,
            "title": "table",
            "gridPos": {"w": 24},
            "datasource": {"type": "datasource", "uid": "-- Dashboard --"},
            "targets": [{"refId": "A", "panelId": 7}],
        },
    ],
}


def test_a_shared_panel_sends_no_query_and_gets_the_source_frames() -> None:
    sent: list[str] = []
    body = {"results": [{"series": [{"name": "m", "columns": ["time", "mean"], "values": [[NOW, 1.0]]}]}]}

    def execute(text: str) -> dict:
        sent.append(text)
        return body

    result = refresh(SHARED_DASHBOARD, execute, now_ms=NOW, mode=Mode.BACKEND, dashboard_width_px=1000)
    # The source is half the width: 6 h over 500 px, rounded.
    assert sent == ["SELECT 1 GROUP BY time(30s)"]
    assert [(q.panel_id, q.interval_ms) for q in result.queries] == [(7, 30_000)]
    assert result.data[8] is result.data[7]


def test_a_panel_on_an_unknown_data_source_is_refused() -> None:
    dashboard = {
        **SHARED_DASHBOARD,
        "panels": [{**SHARED_DASHBOARD["panels"][0], "datasource": {"uid": "y"}}],
    }
    with pytest.raises(UnsupportedError):
        refresh(dashboard, lambda text: {}, now_ms=NOW, mode=Mode.BACKEND)
