"""Structure of Grafana's provisioning: data sources, the dashboard provider, the dashboards,
and the stack.yml mounts that put them where Grafana reads them."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.grafana.dashboards import (
    CONTAINER_DASHBOARDS,
    CONTAINER_DATA,
    CONTAINER_DATASOURCES,
    CONTAINER_PROVIDERS,
    DASHBOARDS_DIR,
    DATASOURCES_FILE,
    PROVIDERS_FILE,
    REPO_ROOT,
    STACK_FILE,
    load_dashboard,
    load_yaml,
    panel_of_type,
    panels,
)
from tests.grafana.grafana_model import (
    Field,
    Frame,
    apply_transformations,
    custom_options,
    dashboard_variables,
    influx_format,
)

# Data sources Grafana itself provides; panels may use them without provisioning.
BUILTIN_DATASOURCES = {"-- Grafana --", "-- Dashboard --", "-- Mixed --", "grafana"}
# Panel types Grafana 11 no longer renders natively (Angular plugins, auto-migrated or broken).
LEGACY_PANEL_TYPES = {"graph", "table-old", "singlestat", "grafana-piechart-panel", "grafana-worldmap-panel"}
BATTERY_COLUMNS = ["Time Series", "Current Value", "Minimum Value", "Maximum Value", "Average Value"]
# Grafana 10.4 to 11.x write schemaVersion 39; Grafana migrates any older version on load.
SCHEMA_VERSION = 39

# The shape of the dashboards' raw InfluxQL: one SELECT over a regular expression.
QUERY_RE = re.compile(
    r"^SELECT (?P<select>.+?) FROM /(?P<regex>(?:\\/|[^/])+)/ WHERE (?P<where>.+?)"
    r" GROUP BY (?P<group>.+?)(?: fill\((?P<fill>\w+)\))?$"
)


def datasources() -> dict[str, dict[str, Any]]:
    doc = load_yaml(DATASOURCES_FILE)
    assert doc["apiVersion"] == 1
    by_uid = {ds["uid"]: ds for ds in doc["datasources"]}
    assert len(by_uid) == len(doc["datasources"]), "data source uids must be unique"
    return by_uid


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def parse_query(target: dict[str, Any]) -> dict[str, Any]:
    assert target.get("rawQuery") is True, "raw InfluxQL, so the regular expression is kept as written"
    assert target.get("resultFormat") in ("time_series", "table")
    m = QUERY_RE.match(target["query"])
    assert m, f"unexpected query shape: {target['query']}"
    return {
        "select": m["select"],
        "regex": re.compile(m["regex"].replace("\\/", "/")),
        "where": set(m["where"].split(" AND ")),
        "group": [g.strip() for g in m["group"].split(",")],
        "fill": m["fill"],
    }


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in panels(dashboard) for t in p.get("targets", [])]


# --- data sources and provider ----------------------------------------------------------


def test_influxdb_datasource_reads_iot_devices_over_the_stack_network() -> None:
    ds = datasources()["influxdb-iot"]
    assert ds["type"] == "influxdb"
    assert ds["access"] == "proxy", "InfluxDB is not published: only Grafana's backend can reach it"
    assert ds["url"] == "http://influxdb:8086"
    assert ds["jsonData"]["dbName"] == "IoT_Devices"
    assert ds["jsonData"].get("version", "InfluxQL") == "InfluxQL"
    assert ds.get("isDefault") is True
    # The read-only user, its password from the Docker secret (tests/stack checks that it is
    # the READ user of the secure profile's InfluxDB and that Grafana mounts the secret);
    # never a password written in the file.
    assert not {"user", "password"} & set(ds)
    assert (ds["basicAuth"], ds["basicAuthUser"]) == (True, "grafana")
    assert ds["secureJsonData"] == {"basicAuthPassword": "$__file{/run/secrets/influxdb_grafana_password}"}


def test_influxdb_datasource_promises_no_setting_influxql_ignores() -> None:
    # jsonData.maxSeries is read by Grafana's Flux path only (flux.go executeQuery); with
    # InfluxQL it capped nothing.
    assert "maxSeries" not in datasources()["influxdb-iot"]["jsonData"]


def test_prometheus_datasource_for_monitoring() -> None:
    ds = datasources()["prometheus"]
    assert ds["type"] == "prometheus"
    assert ds["access"] == "proxy"
    assert ds["url"] == "http://prometheus:9090"
    assert ds.get("isDefault", False) is False


def test_alertmanager_datasource_shows_alerts_and_silences() -> None:
    ds = datasources()["alertmanager"]
    assert ds["type"] == "alertmanager"
    assert ds["url"] == "http://alertmanager:9093"
    assert ds["access"] == "proxy"
    assert ds["editable"] is False
    # Prometheus' Alertmanager, not Mimir (Grafana's default): silences editable, routes read-only.
    assert ds["jsonData"] == {"implementation": "prometheus", "handleGrafanaManagedAlerts": False}


def test_dashboard_provider_reads_the_mounted_folder_and_allows_edits() -> None:
    doc = load_yaml(PROVIDERS_FILE)
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == CONTAINER_DASHBOARDS
    assert provider["allowUiUpdates"] is True, "the user must be able to save edits"
    assert provider["disableDeletion"] is True, "a missing mount must not delete dashboards and edits"


# --- every dashboard file ---------------------------------------------------------------


def test_expected_dashboards_exist_with_unique_uids_and_titles() -> None:
    docs = {path.name: json.loads(path.read_text()) for path in dashboard_files()}
    assert docs["upb_iot_data.json"]["uid"] == "upb-iot-data"
    assert docs["battery_dashboard.json"]["uid"] == "battery-dashboard"
    uids = [d["uid"] for d in docs.values()]
    titles = [d["title"] for d in docs.values()]
    assert len(set(uids)) == len(uids), uids
    assert len(set(titles)) == len(titles), titles


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_panels_use_provisioned_datasources_and_current_panel_types(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    provisioned = datasources()
    assert dashboard.get("id") is None, "provisioning assigns the id"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]), dashboard["uid"]
    for panel in panels(dashboard):
        assert panel["type"] not in LEGACY_PANEL_TYPES, f"{panel['title']}: {panel['type']}"
        refs = [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]
        for ref in refs:
            if ref is None:
                continue
            assert isinstance(ref, dict), f"{panel['title']}: refer to data sources by uid, not {ref!r}"
            if ref["uid"] in BUILTIN_DATASOURCES:
                continue
            assert ref["uid"] in provisioned, f"{panel['title']}: unknown data source uid {ref['uid']!r}"
            assert ref.get("type", provisioned[ref["uid"]]["type"]) == provisioned[ref["uid"]]["type"]


# --- the grouping variable and the interval -------------------------------------------

# The choices a person has, by their label; `auto` is Grafana's $__interval (one group per
# pixel of the panel), which InfluxDB's backend fills in (query.go Build()).
GROUPING_OPTIONS = {"1s": "1s", "auto": "$__interval", "10s": "10s", "1m": "1m", "5m": "5m"}


def grouping_variable(dashboard: dict[str, Any]) -> dict[str, Any]:
    (variable,) = dashboard["templating"]["list"]
    return variable


@pytest.mark.parametrize("name", ["upb_iot_data.json", "battery_dashboard.json"])
def test_grouping_variable_defaults_to_the_seeds_1s_and_offers_auto(name: str) -> None:
    variable = grouping_variable(load_dashboard(name))
    assert variable["name"] == "grouping"
    # Not `interval`: `$interval` is a macro the InfluxDB backend replaces itself.
    assert variable["name"] not in {"interval", "timeFilter", "__interval"}
    # A custom variable, not type `interval`: an interval variable's auto divides the range
    # by a fixed step count (scenes IntervalVariable.getAutoRefreshInteval), whatever the
    # panel's width; `$__interval` is computed per panel from its width.
    assert variable["type"] == "custom"
    assert custom_options(variable["query"]) == GROUPING_OPTIONS
    assert variable["current"] == {"selected": True, "text": "1s", "value": "1s"}, "the seed's 1 s by default"
    assert [(o["text"], o["value"]) for o in variable["options"]] == list(GROUPING_OPTIONS.items())
    assert [o["text"] for o in variable["options"] if o["selected"]] == ["1s"]
    assert not variable.get("multi") and not variable.get("includeAll")
    # The options are what the model of Grafana resolves too.
    assert dashboard_variables(load_dashboard(name)) == {"grouping": "1s"}
    assert dashboard_variables(load_dashboard(name), {"grouping": "auto"}) == {"grouping": "$__interval"}


@pytest.mark.parametrize("name", ["upb_iot_data.json", "battery_dashboard.json"])
def test_graphs_group_by_the_variable_with_a_1s_floor(name: str) -> None:
    graph = panel_of_type(load_dashboard(name), "timeseries")
    (target,) = graph["targets"]
    assert parse_query(target)["group"][0] == "time($grouping)"
    # Min interval: $__interval never goes below 1 s (calculateInterval's lower limit).
    assert graph["interval"] == "1s"
    # Without maxDataPoints Grafana takes the panel's width (SceneQueryRunner,
    # maxDataPointsFromWidth), so auto means about one group per pixel.
    assert "maxDataPoints" not in graph
    # Grafana regex-escapes a variable that sits between two `/` (interpolateQueryExpr):
    # `$__interval` would arrive as `\$__interval`. Nothing after the variable opens one.
    after = target["query"].split("$grouping", 1)[1]
    assert "/" not in after
    assert influx_format("$__interval", "grouping", target["query"]) == "$__interval"


@pytest.mark.parametrize(
    ("query", "escaped"),
    [
        ("SELECT mean(value) FROM /^.+$/ WHERE $timeFilter GROUP BY time($grouping)", False),
        ("SELECT mean(value) FROM /^$grouping$/ WHERE $timeFilter", True),
        ("SELECT mean(value) FROM x WHERE a =~ /^$grouping/ AND b =~ /c/", True),
        ("SELECT mean(value) FROM x GROUP BY time($grouping)", False),
    ],
)
def test_the_model_escapes_a_variable_inside_a_regular_expression(query: str, escaped: bool) -> None:
    assert (influx_format("$__interval", "grouping", query) == r"\$__interval") is escaped
    assert influx_format("10s", "grouping", query) == "10s", "numbers are never escaped"


# --- UPB IoT Data ----------------------------------------------------------------------


def test_upb_iot_data_dashboard() -> None:
    d = load_dashboard("upb_iot_data.json")
    assert d["title"] == "UPB IoT Data"
    assert d["uid"] == "upb-iot-data"
    assert d["schemaVersion"] == SCHEMA_VERSION
    assert d["time"] == {"from": "now-6h", "to": "now"}
    assert d["refresh"] == "30s"
    assert d["refresh"] in d["timepicker"]["refresh_intervals"]
    assert [v["name"] for v in d["templating"]["list"]] == ["grouping"], "regular expressions select series"
    assert sorted(p["type"] for p in panels(d)) == ["table", "timeseries"]
    graph = panel_of_type(d, "timeseries")
    (target,) = graph["targets"]
    assert target["datasource"]["uid"] == "influxdb-iot"
    q = parse_query(target)
    assert q["select"] == 'mean("value")', "arithmetic mean of the stored value"
    assert q["group"] == ["time($grouping)"], "groups of the grouping interval (1 s by default)"
    assert q["where"] == {"\"location\" = 'UPB'", "$timeFilter"}, "UPB only, dashboard time range"
    assert q["fill"] == "none", "no empty groups: table rows exist only where some series has data"
    assert target["alias"] in ("$measurement", "$m", "[[measurement]]"), "STATION.METRIC"


def test_upb_table_reuses_the_graphs_result() -> None:
    d = load_dashboard("upb_iot_data.json")
    graph, table = panel_of_type(d, "timeseries"), panel_of_type(d, "table")
    # The built-in -- Dashboard -- data source: no query of its own, the graph's frames.
    assert table["datasource"] == {"type": "datasource", "uid": "-- Dashboard --"}
    (target,) = table["targets"]
    assert target["panelId"] == graph["id"]
    assert target["datasource"] == table["datasource"]
    assert not target.get("withTransforms"), "the graph's frames as queried (it has no transformations)"
    assert "transformations" not in graph
    # Same width as the graph: the auto interval the graph used suits the table too.
    assert table["gridPos"]["w"] == graph["gridPos"]["w"]


def test_upb_table_joins_every_series_into_one_row_per_instant() -> None:
    table = panel_of_type(load_dashboard("upb_iot_data.json"), "table")
    assert table["transformations"] == [
        {"id": "joinByField", "options": {"byField": "Time", "mode": "outer"}}
    ]
    frames = [
        Frame([Field("Time", "time", [1000, 2000]), Field("RPi_1.TEMP", "number", [20.0, 21.0])]),
        Frame([Field("Time", "time", [2000, 3000]), Field("RPi_2.BAT", "number", [80.0, 79.0])]),
    ]
    (out,) = apply_transformations(frames, table["transformations"])
    assert out.columns == ["Time", "RPi_1.TEMP", "RPi_2.BAT"]
    assert out.rows() == [
        {"Time": 1000, "RPi_1.TEMP": 20.0, "RPi_2.BAT": None},
        {"Time": 2000, "RPi_1.TEMP": 21.0, "RPi_2.BAT": 80.0},
        {"Time": 3000, "RPi_1.TEMP": None, "RPi_2.BAT": 79.0},
    ]


@pytest.mark.parametrize(
    ("measurement", "shown"),
    [
        ("RPi_1.TEMP", True),
        ("Zone.3.HUMID", True),
        ("RPi_1.BAT", True),
        ("RPi_1", False),
        (".TEMP", False),
        ("RPi_1.", False),
    ],
)
def test_upb_regex_matches_every_station_metric(measurement: str, shown: bool) -> None:
    graph = panel_of_type(load_dashboard("upb_iot_data.json"), "timeseries")
    # InfluxDB (Go regexp) finds a match anywhere; re.search does the same.
    assert bool(parse_query(graph["targets"][0])["regex"].search(measurement)) is shown


# --- Battery Dashboard ------------------------------------------------------------------


def battery_queries() -> tuple[dict[str, Any], dict[str, Any]]:
    d = load_dashboard("battery_dashboard.json")
    (graph_target,) = panel_of_type(d, "timeseries")["targets"]
    (table_target,) = panel_of_type(d, "table")["targets"]
    return parse_query(graph_target), parse_query(table_target)


def test_battery_dashboard() -> None:
    d = load_dashboard("battery_dashboard.json")
    assert d["title"] == "Battery Dashboard"
    assert d["uid"] == "battery-dashboard"
    assert d["schemaVersion"] == SCHEMA_VERSION
    assert d["time"] == {"from": "now-48h", "to": "now"}
    assert d["refresh"] == "30m"
    assert d["refresh"] in d["timepicker"]["refresh_intervals"]
    assert [v["name"] for v in d["templating"]["list"]] == ["grouping"]
    assert sorted(p["type"] for p in panels(d)) == ["table", "timeseries"]
    (target,) = panel_of_type(d, "timeseries")["targets"]
    assert target["datasource"]["uid"] == "influxdb-iot"
    assert target["resultFormat"] == "time_series"
    q = parse_query(target)
    assert q["select"] == 'mean("value")'
    assert q["group"][0] == "time($grouping)"
    assert q["where"] == {"$timeFilter"}, "any location"
    # $tag_station only resolves for tags in GROUP BY; location keeps two devices that
    # share a station name from being averaged together.
    assert set(q["group"][1:]) == {'"station"', '"location"'}
    assert q["fill"] == "none"
    assert target["alias"] in ("$tag_station", "[[tag_station]]"), "named after the station"


def test_battery_statistics_are_one_influxdb_aggregation_per_device() -> None:
    graph, table = battery_queries()
    (target,) = panel_of_type(load_dashboard("battery_dashboard.json"), "table")["targets"]
    assert target["datasource"]["uid"] == "influxdb-iot"
    assert target["resultFormat"] == "table"
    # The header's statistics, named by InfluxQL itself.
    assert table["select"] == (
        'last("value") AS "Current Value", min("value") AS "Minimum Value", '
        'max("value") AS "Maximum Value", mean("value") AS "Average Value"'
    )
    # Over the whole range (no GROUP BY time): one row per location and station.
    assert set(table["group"]) == {'"station"', '"location"'}
    assert table["fill"] is None
    # The same devices as the graph: same measurements, same range.
    assert table["regex"].pattern == graph["regex"].pattern
    assert table["where"] == graph["where"]


@pytest.mark.parametrize(
    ("measurement", "shown"),
    [
        ("RPi_1.BAT", True),
        ("Zone.3.BAT", True),
        ("RPi_1.BATTERY", False),
        ("RPi_1.BAT_V", False),
        ("RPi_1.SUBBAT", False),
        ("RPi_1.bat", False),
        ("RPi_1.BAT.raw", False),
        ("BAT", False),
        (".BAT", False),
    ],
)
def test_battery_regex_matches_bat_and_nothing_else(measurement: str, shown: bool) -> None:
    for q in battery_queries():
        assert bool(q["regex"].search(measurement)) is shown


@pytest.mark.parametrize("tag_order", [["location", "station"], ["station", "location"]])
def test_battery_table_columns(tag_order: list[str]) -> None:
    table = panel_of_type(load_dashboard("battery_dashboard.json"), "table")
    (organize,) = table["transformations"]
    assert organize["id"] == "organize"
    # The backend's table frame: Time, the tags (Go map order: either), the value columns.
    tags = {"location": ["UPB", "Farm"], "station": ["RPi_1", "RPi_1"]}
    frame = Frame(
        [
            Field("Time", "time", [1000, 1000]),
            *(Field(key, "string", tags[key]) for key in tag_order),
            Field("Current Value", "number", [80.0, 45.0]),
            Field("Minimum Value", "number", [79.0, 44.5]),
            Field("Maximum Value", "number", [90.0, 45.0]),
            Field("Average Value", "number", [85.0, 44.75]),
        ]
    )
    (out,) = apply_transformations([frame], table["transformations"])
    # The header of the spec, then the location that tells apart two stations named alike.
    assert out.columns == [*BATTERY_COLUMNS, "Location"]
    assert out.rows() == [
        dict(zip([*BATTERY_COLUMNS, "Location"], ["RPi_1", 80.0, 79.0, 90.0, 85.0, "UPB"], strict=True)),
        dict(zip([*BATTERY_COLUMNS, "Location"], ["RPi_1", 45.0, 44.5, 45.0, 44.75, "Farm"], strict=True)),
    ]
    assert table["options"]["sortBy"] == [{"desc": False, "displayName": "Time Series"}]


def test_battery_table_says_what_differs_from_the_1s_series() -> None:
    table = panel_of_type(load_dashboard("battery_dashboard.json"), "table")
    text = table["description"]
    assert "at most one reading per second" in text
    for column in BATTERY_COLUMNS[1:]:
        assert column.split()[0] in text, column


# --- stack.yml: the files reach Grafana -------------------------------------------------


def grafana_service() -> tuple[dict[str, Any], dict[str, Any]]:
    # A clear failure until the stack component lands: these mounts are part of this one.
    assert STACK_FILE.exists(), f"{STACK_FILE} is missing: Grafana's provisioning is mounted there"
    stack = load_yaml(STACK_FILE)
    assert "grafana" in stack["services"], "stack.yml has no `grafana` service"
    return stack, stack["services"]["grafana"]


def mounts(stack: dict[str, Any], service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(container target, source, kind) for every volume and config of a service.

    kind is "bind" (source: host path), "volume" (source: volume name) or "config"
    (source: host file of the swarm config). Short and long syntax are both accepted.
    """
    out: list[tuple[str, str, str]] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            source, target = volume.get("source", ""), volume["target"]
            kind = volume.get("type", "volume")
        out.append((target, source, kind))
    for config in service.get("configs", []):
        name, target = (
            (config, f"/{config}")
            if isinstance(config, str)
            else (config["source"], config.get("target", f"/{config['source']}"))
        )
        definition = stack.get("configs", {}).get(name)
        assert definition and "file" in definition, f"config {name!r} must come from a repository file"
        out.append((target, definition["file"], "config"))
    return out


def host_file(stack: dict[str, Any], service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file Grafana sees at container_path (the deepest mount covering it)."""
    best: tuple[int, Path] | None = None
    path = PurePosixPath(container_path)
    for target, source, kind in mounts(stack, service):
        target_path = PurePosixPath(target)
        if kind == "volume" or not (path == target_path or target_path in path.parents):
            continue
        if kind == "config" and path != target_path:
            continue
        depth = len(target_path.parts)
        if best is None or depth > best[0]:
            host = (REPO_ROOT / source).resolve() / path.relative_to(target_path)
            best = (depth, host)
    return best[1] if best else None


def test_stack_mounts_provisioning_where_grafana_reads_it() -> None:
    stack, service = grafana_service()
    wanted = {
        CONTAINER_DATASOURCES: DATASOURCES_FILE,
        CONTAINER_PROVIDERS: PROVIDERS_FILE,
        **{f"{CONTAINER_DASHBOARDS}/{p.name}": p for p in dashboard_files()},
    }
    for container_path, repo_file in wanted.items():
        assert host_file(stack, service, container_path) == repo_file.resolve(), container_path


def test_stack_keeps_grafana_data_on_a_named_volume() -> None:
    # Dashboard edits, users and the provisioning checksums live in /var/lib/grafana.
    stack, service = grafana_service()
    named = [(t, s) for t, s, kind in mounts(stack, service) if kind == "volume" and t == CONTAINER_DATA]
    assert named, f"{CONTAINER_DATA} must be a named volume so a redeploy keeps the edits"
    assert named[0][1] in (stack.get("volumes") or {}), "the volume must be declared at the top level"


def test_stack_publishes_grafana_on_80_with_the_assistant_login() -> None:
    _, service = grafana_service()
    published = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            published.append((int(port["published"]), int(port["target"])))
        else:
            host, _, container = str(port).rpartition(":")
            published.append((int(host.rpartition(":")[2]), int(container.split("/")[0])))
    assert published == [(80, 3000)]
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    assert env.get("GF_SECURITY_ADMIN_USER") == "assistant"
    # The password comes from a Docker secret (default grafanaIDP2023, set by run.sh).
    password_file = env.get("GF_SECURITY_ADMIN_PASSWORD__FILE", "")
    assert password_file.startswith("/run/secrets/"), "admin password through a Docker secret"
    secret_names = {
        s if isinstance(s, str) else s.get("target", s["source"]) for s in service.get("secrets", [])
    }
    assert password_file.removeprefix("/run/secrets/") in secret_names
    assert str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() == "false"
    assert str(env.get("GF_USERS_ALLOW_SIGN_UP", "false")).lower() == "false"
