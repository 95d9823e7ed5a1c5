"""The Grafana emulation the dashboard tests rely on, checked against Grafana's documented
behaviour (InfluxDB data source docs, alias patterns; query.go Build)."""

from __future__ import annotations

import pytest

from tests.grafana.grafana_model import (
    Mode,
    TimeRange,
    UnsupportedError,
    format_interval,
    render_query,
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
