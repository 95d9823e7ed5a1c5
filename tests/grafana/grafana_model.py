"""What Grafana does with a dashboard's InfluxQL panels, redone in Python so tests can execute it.

Grafana cannot run on the test machines, so the dashboards are proven by running their
queries against a real InfluxDB. This module reproduces, for what the dashboards use, the
steps Grafana 11 takes between the JSON and the pixels (the Grafana sources named below
are the reference; every function says which one it mirrors):

1. the time range of the dashboard (`now-6h` … `now`) is resolved at query time, and the
   panel's `$__interval` is computed from that range and the panel's width in pixels
   (`rangeutil.ts` `calculateInterval`, called by scenes' `SceneQueryRunner`);
2. dashboard variables are interpolated in one pass (scenes `sceneInterpolator`), then
   the macros (`$timeFilter`, `$__interval`, `$interval`, `$__interval_ms`) are
   substituted, by the Go backend (`pkg/tsdb/influxdb/models/query.go` `Build()`) or, in
   browser access, by a second frontend pass (`datasource.ts` `classicQuery`);
3. the query goes to InfluxDB's `/query` with `epoch=ms`;
4. the answer becomes frames: one per (series, column) named by the target's `alias`
   (`pkg/tsdb/influxdb/influxql/util` `FormatFrameName`), or one table frame
   (`buffered/response_parser.go` `transformRowsForTable`);
5. a panel on the `-- Dashboard --` data source gets another panel's frames instead of
   querying (`public/app/plugins/datasource/dashboard/datasource.ts`);
6. the panel's transformations run on those frames (`packages/grafana-data/src/
   transformations/transformers`: joinByField, reduce, organize).

Anything outside that subset (another variable type, an unknown transformation or
reducer, a data source it does not know) raises `UnsupportedError`, so a dashboard edit can
never be "proven" by a helper that silently ignored part of it.

Where the sources were read: grafana/grafana's repository is too large to be fetched on the
test machines, so its files were read from a code index that holds several versions of each
(the 11.x InfluxDB data source, the Go InfluxQL backend, rangeutil.ts, the -- Dashboard --
data source); the scenes library Grafana 11.3 dashboards run on (grafana/scenes, tag
v5.20.3, October 2024) was read at its tag. Where versions differ (the InfluxDB format
function), this model follows the one that escapes in more cases.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class UnsupportedError(ValueError):
    """The dashboard uses a Grafana feature this helper does not reproduce (extend it)."""


class Mode(Enum):
    """The two ways Grafana turns a raw InfluxQL target into the text InfluxDB receives.

    BACKEND: Grafana ≥ 10 with the data source in proxy access (this stack). The frontend
    interpolates dashboard variables once and leaves `$__interval`/`$__interval_ms` as
    written for the backend (`datasource.ts` `applyTemplateVariables`); the Go backend's
    `Build()` then renders `$timeFilter` as absolute epoch milliseconds,
    `time >= 1700000000000ms and time <= 1700021600000ms`, and the interval macros.
    CLASSIC: the browser-access path (`datasource.ts` `classicQuery`): two frontend passes
    over the text (`InfluxQueryModel.render(true)`, then `templateSrv.replace` with
    `timeFilter` added), and a relative range stays relative,
    `time >= now() - 6h and time <= now()`.
    Both must select the same data; the tests run every query both ways.
    """

    BACKEND = "backend"
    CLASSIC = "classic"


_RELATIVE = re.compile(r"^now(?:-(\d+)([smhdw]))?$")


@dataclass(frozen=True)
class TimeRange:
    """A dashboard's `time` object ({"from": "now-6h", "to": "now"}) at one instant."""

    raw_from: str
    raw_to: str
    now_ms: int

    def resolve(self, raw: str) -> int:
        """Grafana's dateMath for the forms dashboards here use: `now` and `now-<n><unit>`."""
        m = _RELATIVE.match(raw)
        if m is None:
            # Calendar units (M, y), rounding (`/d`) and absolute dates are not needed yet.
            raise UnsupportedError(f"time expression {raw!r}: only now and now-<n>[smhdw] are reproduced")
        if m[1] is None:
            return self.now_ms
        return self.now_ms - int(m[1]) * MS[m[2]]

    @property
    def from_ms(self) -> int:
        return self.resolve(self.raw_from)

    @property
    def to_ms(self) -> int:
        return self.resolve(self.raw_to)


def time_filter(time_range: TimeRange, mode: Mode) -> str:
    """`$timeFilter` as Grafana renders it (see Mode)."""
    if mode is Mode.BACKEND:
        # query.go renderTimeFilter / epochMStoInfluxTime
        return f"time >= {time_range.from_ms}ms and time <= {time_range.to_ms}ms"
    since = _classic_time(time_range, time_range.raw_from)
    until = _classic_time(time_range, time_range.raw_to)
    return f"time >= {since} and time <= {until}"


def _classic_time(time_range: TimeRange, raw: str) -> str:
    # datasource.ts getInfluxTime: `now` and now-<n>[dhms] stay relative, the rest is ms.
    if raw == "now":
        return "now()"
    m = re.match(r"^now-(\d+)([dhms])$", raw)
    if m:
        return f"now() - {int(m[1])}{m[2]}"
    return f"{time_range.resolve(raw)}ms"


def format_interval(interval_ms: int) -> str:
    """grafana-plugin-sdk-go gtime.FormatInterval: the largest whole unit, e.g. 20000 → 20s."""
    for unit_ms, suffix in (
        (31_536_000_000, "y"),
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ):
        if interval_ms >= unit_ms:
            return f"{interval_ms // unit_ms}{suffix}"
    return f"{max(interval_ms, 1)}ms"


# rangeutil.ts roundInterval: (upper bound, exclusive → interval), both in milliseconds; 1 y beyond.
_ROUND_STEPS = (
    (10, 1),
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1500, 1000),
    (3500, 2000),
    (7500, 5000),
    (12500, 10_000),
    (17500, 15_000),
    (25000, 20_000),
    (45000, 30_000),
    (90000, 60_000),
    (210_000, 120_000),
    (450_000, 300_000),
    (750_000, 600_000),
    (1_050_000, 900_000),
    (1_500_000, 1_200_000),
    (2_700_000, 1_800_000),
    (5_400_000, 3_600_000),
    (9_000_000, 7_200_000),
    (16_200_000, 10_800_000),
    (32_400_000, 21_600_000),
    (86_400_000, 43_200_000),
    (604_800_000, 86_400_000),
    (1_814_400_000, 604_800_000),
    (3_628_800_000, 2_592_000_000),
)
_INTERVAL_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def round_interval(interval_ms: float) -> int:
    """rangeutil.ts roundInterval: the "nice" interval Grafana picks for a raw range/points."""
    for bound, rounded in _ROUND_STEPS:
        if interval_ms < bound:
            return rounded
    return 31_536_000_000


def interval_to_ms(text: str) -> int:
    """rangeutil.ts intervalToMs for the units dashboards here use (`1s`, `500ms`, `2m`...)."""
    m = re.fullmatch(r"(\d+)(ms|[smhdw])", text)
    if m is None:
        raise UnsupportedError(f"interval {text!r}: only <n>ms and <n>[smhdw] are reproduced")
    return int(m[1]) * _INTERVAL_UNITS_MS[m[2]]


def calculate_interval(time_range: TimeRange, max_data_points: int, low_limit: str | None) -> int:
    """`$__interval` in milliseconds, as rangeutil.ts calculateInterval computes it.

    Scenes' SceneQueryRunner (prepareRequests) calls it with maxDataPoints = the panel's
    width in pixels (the panel JSON sets no maxDataPoints) and the lower limit = the
    panel's `interval` ("Min interval"), else the data source's `timeInterval`.
    """
    raw = (time_range.to_ms - time_range.from_ms) / max_data_points
    interval = round_interval(raw)
    return max(interval, interval_to_ms(low_limit)) if low_limit else interval


# --- dashboard variables ----------------------------------------------------------------

# Grafana's VARIABLE_REGEX (scenes variables/constants.ts, app/features/variables/utils.ts):
# $name, [[name]] / [[name:fmt]], ${name} / ${name.path} / ${name:fmt}.
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")
# grafana-data escapeRegex.
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


def escape_regex(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m[0], value)


def influx_format(value: str, name: str, query: str) -> str:
    r"""InfluxDB's format function for a single-value variable in a raw query
    (datasource.ts interpolateQueryExpr, Grafana 11): numbers as they are; any other value
    regex-escaped when the variable sits between two `/` (a regular expression), else as
    it is. A `$__interval` inside a regular expression would arrive as `\$__interval`.
    Later releases escape only inside a literal after `=~`, `!~` or FROM, a subset of
    this rule: what passes here unescaped passes there too."""
    if re.match(r"\s*[-+]?(\d|\.\d)", value):  # parseFloat(value) is a number
        return value
    if re.search(rf"/(?:\^)?(.*)(\${re.escape(name)})(.*)(?:\$)?/", query):
        return escape_regex(value)
    return value


def interpolate(
    text: str, values: Mapping[str, str], format_query: str | None = None, dashboard: Iterable[str] = ()
) -> str:
    """One pass of Grafana's interpolation (scenes sceneInterpolator, templateSrv.replace).

    Every reference to a name in `values` is replaced once. The replacement is never scanned
    again: a variable whose value is `$__interval` leaves `$__interval` in the text for the
    next stage. Names not in `values` stay as written. Dashboard variables (`dashboard`)
    go through the InfluxDB format function of the raw query `format_query`.
    """
    dashboard_names = set(dashboard)

    def replace(m: re.Match[str]) -> str:
        name = m[1] or m[2] or m[4]
        if name not in values:
            return m[0]
        if m[3] or m[5] or m[6]:
            raise UnsupportedError(f"{m[0]!r}: variable formats and field paths are not reproduced")
        value = values[name]
        if name in dashboard_names and format_query is not None:
            return influx_format(value, name, format_query)
        return value

    return _VARIABLE.sub(replace, text)


def dashboard_variables(
    dashboard: dict[str, Any], choices: Mapping[str, str] | None = None
) -> dict[str, str]:
    """name → value of every dashboard variable: the option whose text is in `choices`
    (e.g. {"grouping": "auto"}), else the saved `current` one, as a person would see it."""
    out: dict[str, str] = {}
    choices = choices or {}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "custom" or variable.get("multi") or variable.get("includeAll"):
            raise UnsupportedError(f"variable {variable.get('name')!r}: only single-value custom ones")
        options = custom_options(variable["query"])
        wanted = choices.get(variable["name"], variable["current"]["text"])
        if wanted not in options:
            raise AssertionError(f"{variable['name']}: no option {wanted!r} in {sorted(options)}")
        out[variable["name"]] = options[wanted]
    unknown = set(choices) - set(out)
    if unknown:
        raise AssertionError(f"no such variables: {sorted(unknown)}")
    return out


def custom_options(query: str) -> dict[str, str]:
    r"""text → value of a custom variable's options (scenes CustomVariable getValueOptions):
    comma-separated, `\,` for a comma, `text : value` for a label that differs."""
    options: dict[str, str] = {}
    for part in re.findall(r"(?:\\,|[^,])+", query):
        text = part.replace("\\,", ",")
        m = re.fullmatch(r"(.+)\s:\s(.+)", text, re.S)
        label, value = (m[1].strip(), m[2].strip()) if m else (text.strip(), text.strip())
        options[label] = value
    return options


# Whatever still looks like a Grafana variable after substitution: $name, ${name}, [[name]].
_LEFTOVER = re.compile(r"\$\{?\w+\}?|\[\[[^\]]+\]\]")


def render_query(
    query: str,
    time_range: TimeRange,
    interval_ms: int,
    mode: Mode,
    variables: Mapping[str, str] | None = None,
) -> str:
    """A raw InfluxQL target's `query` as InfluxDB receives it (see Mode for the two paths).

    BACKEND: the frontend pass keeps `$__interval`/`$__interval_ms` for the backend; then
    Build()'s order: `$timeFilter`, `$interval`, `$__interval_ms`, `$__interval` (safe:
    neither of the last two is a prefix of the other once the `$` is included).
    CLASSIC: both frontend passes see the scoped `__interval`, `__interval_ms` and
    `interval` (classicQuery: "backward compatibility"); the second also `timeFilter`.
    """
    variables = dict(variables or {})
    interval_text = format_interval(interval_ms)
    if mode is Mode.BACKEND:
        scoped = {"__interval": "$__interval", "__interval_ms": "$__interval_ms"}
        text = interpolate(query, {**scoped, **variables}, query, variables)
        text = text.replace("$timeFilter", time_filter(time_range, mode))
        text = text.replace("$interval", interval_text)
        text = text.replace("$__interval_ms", str(interval_ms))
        text = text.replace("$__interval", interval_text)
    else:
        scoped = {"__interval": interval_text, "__interval_ms": str(interval_ms), "interval": interval_text}
        text = interpolate(query, {**scoped, **variables}, query, variables)
        text = interpolate(text, {**scoped, **variables, "timeFilter": time_filter(time_range, mode)})
    leftover = _LEFTOVER.search(text)
    if leftover:
        raise UnsupportedError(f"{leftover[0]!r} in {query!r}: not a variable of this dashboard")
    return text


# util.go legendFormat: `$word` or `[[anything]]`.
_ALIAS_TOKEN = re.compile(r"\$(\w+)|\[\[([\s\S]+?)\]\]")


def series_name(
    alias: str, measurement: str, column: str, tags: dict[str, str], interval_ms: int = 1000
) -> str:
    """The display name of one frame, as util.FormatFrameName computes it.

    `$m`/`$measurement` → the measurement, `$col` → the column (`mean`), `$tag_<key>` →
    that tag's value (only tags in GROUP BY exist), `$<n>` → the n-th (0-based) part of
    the measurement split on dots, `$__interval(_ms)`; anything else stays as written.
    Without an alias Grafana uses `<measurement>.<column> { k: v, ... }`.
    """
    if not alias:
        name = f"{measurement}.{column}"
        if tags:
            # Go iterates the tag map in random order; sorted is one of the orders it can show.
            name += " { " + ", ".join(f"{k}: {v}" for k, v in sorted(tags.items())) + " }"
        return name
    segments = measurement.split(".")

    fixed = {
        "m": measurement,
        "measurement": measurement,
        "col": column,
        "__interval": format_interval(interval_ms),
        "__interval_ms": str(interval_ms),
    }

    def replace(m: re.Match[str]) -> str:
        token = m[1] if m[1] is not None else m[2]
        if token in fixed:
            return fixed[token]
        if token.isdigit():
            pos = int(token)
            return segments[pos] if pos < len(segments) else m[0]
        if token.startswith("tag_") and token[4:] in tags:
            return tags[token[4:]]
        return m[0]

    return _ALIAS_TOKEN.sub(replace, alias)


# --- data frames ------------------------------------------------------------------------


@dataclass
class Field:
    """One column of a frame; `name` is the display name the panel shows.

    `labels` are the InfluxDB tags of the series (GROUP BY tags), which the backend puts on
    the value field (`data.NewField("Value", row.Tags, ...)`): two series with the same
    display name stay two fields with different labels.
    """

    name: str
    kind: str  # "time" | "number" | "string"
    values: list[Any]
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Frame:
    fields: list[Field] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.fields]

    def rows(self) -> list[dict[str, Any]]:
        """The frame as a table: one dict per row, keyed by display name."""
        length = len(self.fields[0].values) if self.fields else 0
        return [{f.name: f.values[i] for f in self.fields} for i in range(length)]


def frames_from_response(
    body: dict[str, Any], alias: str, interval_ms: int = 1000, result_format: str = "time_series"
) -> list[Frame]:
    """InfluxDB's JSON answer (epoch=ms) → Grafana frames (buffered/response_parser.go).

    time_series (transformRowsForTimeSeries): one frame per (series, non-time column) with
    a `Time` and a value field named by the alias and labelled with the series' tags.
    table (transformRowsForTable): one frame, the rows of every series one after the other:
    `Time`, one string field per tag of the first series, one field per value column named
    after the column (its `AS` alias). Go iterates the tags in random order; this helper
    puts them in sorted order, one of those orders (a panel must not depend on it).
    """
    results = body.get("results", [])
    if not results:
        return []
    if "error" in results[0]:
        raise AssertionError(f"InfluxDB error: {results[0]['error']}")
    all_series: list[dict[str, Any]] = results[0].get("series", [])
    if result_format == "table":
        return _table_frames(all_series)
    if result_format != "time_series":
        raise UnsupportedError(f"resultFormat {result_format!r}")
    frames: list[Frame] = []
    for series in all_series:
        columns: list[str] = series["columns"]
        if "time" not in (c.lower() for c in columns):
            raise UnsupportedError("series without a time column (SHOW queries) are not panel data")
        tags: dict[str, str] = series.get("tags") or {}
        times = [int(row[0]) for row in series["values"]]
        for index, column in enumerate(columns):
            if column == "time":
                continue
            name = series_name(alias, series["name"], column, tags, interval_ms)
            values = [row[index] for row in series["values"]]
            frames.append(Frame([Field("Time", "time", times), Field(name, "number", values, dict(tags))]))
    return frames


def _table_frames(all_series: list[dict[str, Any]]) -> list[Frame]:
    if not all_series:
        return []
    columns: list[str] = all_series[0]["columns"]
    if columns[0] != "time":
        raise UnsupportedError("table results without a leading time column")
    rows = [(series.get("tags") or {}, row) for series in all_series for row in series["values"]]
    fields = [Field("Time", "time", [int(row[0]) for _, row in rows])]
    tag_keys = sorted(all_series[0].get("tags") or {})
    fields += [Field(key, "string", [tags[key] for tags, _ in rows]) for key in tag_keys]
    fields += [Field(column, "number", [row[i] for _, row in rows]) for i, column in enumerate(columns) if i]
    return [Frame(fields)]


# --- transformations --------------------------------------------------------------------


def _non_null(values: Iterable[Any]) -> list[float]:
    # Grafana's doStandardCalcs skips null, undefined and NaN for every statistic.
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _last_not_null(values: Sequence[Any]) -> Any:
    present = _non_null(values)
    return present[-1] if present else None


def _first_not_null(values: Sequence[Any]) -> Any:
    present = _non_null(values)
    return present[0] if present else None


def _mean(values: Sequence[Any]) -> Any:
    present = _non_null(values)
    return sum(present) / len(present) if present else None


# fieldReducer.ts: id → (display name, calculation) for the standard reducers.
REDUCERS: dict[str, tuple[str, Callable[[Sequence[Any]], Any]]] = {
    "lastNotNull": ("Last *", _last_not_null),
    "last": ("Last", lambda v: v[-1] if v else None),
    "firstNotNull": ("First *", _first_not_null),
    "first": ("First", lambda v: v[0] if v else None),
    "min": ("Min", lambda v: min(_non_null(v), default=None)),
    "max": ("Max", lambda v: max(_non_null(v), default=None)),
    "mean": ("Mean", _mean),
    "sum": ("Total", lambda v: sum(_non_null(v))),
    "count": ("Count", len),
}


def join_by_field(frames: list[Frame], options: dict[str, Any]) -> list[Frame]:
    """joinByField.ts (alias seriesToColumns): one frame, one row per distinct key value."""
    if len(frames) <= 1:
        return frames  # Grafana returns a single frame untouched
    by = options.get("byField")
    mode = options.get("mode", "outer")
    if mode not in ("outer", "inner"):
        raise UnsupportedError(f"joinByField mode {mode!r}")

    def key_field(frame: Frame) -> Field:
        for f in frame.fields:
            if (by is None and f.kind == "time") or f.name == by:
                return f
        raise AssertionError(f"frame {frame.columns} has no join field {by or 'of type time'}")

    key_sets = [set(key_field(f).values) for f in frames]
    keys = sorted(set.union(*key_sets) if mode == "outer" else set.intersection(*key_sets))
    first_key = key_field(frames[0])
    joined = Frame([Field(first_key.name, first_key.kind, keys)])
    for frame in frames:
        k = key_field(frame)
        position = {value: i for i, value in enumerate(k.values)}
        for f in frame.fields:
            if f is k:
                continue
            joined.fields.append(
                Field(
                    f.name,
                    f.kind,
                    [f.values[position[key]] if key in position else None for key in keys],
                    f.labels,
                )
            )
    return [joined]


def reduce_(frames: list[Frame], options: dict[str, Any]) -> list[Frame]:
    """reduce.ts in its default mode, seriesToRows: one row per non-time field of every frame."""
    if options.get("mode", "seriesToRows") != "seriesToRows" or options.get("fields"):
        raise UnsupportedError(f"reduce options {options}")
    reducer_ids: list[str] = options.get("reducers") or []
    unknown = [r for r in reducer_ids if r not in REDUCERS]
    if unknown:
        raise UnsupportedError(f"reducers {unknown}")
    if not reducer_ids:
        return frames
    if not frames:
        return []
    out = Frame([Field("Field", "string", [])] + [Field(REDUCERS[r][0], "number", []) for r in reducer_ids])
    for frame in frames:
        for f in frame.fields:
            if f.kind == "time":
                continue
            out.fields[0].values.append(f.name)
            for target, reducer in zip(out.fields[1:], reducer_ids, strict=True):
                target.values.append(REDUCERS[reducer][1](f.values))
    return [out]


def organize(frames: list[Frame], options: dict[str, Any]) -> list[Frame]:
    """organize.ts: drop (excludeByName), reorder (indexByName), rename (renameByName)."""
    exclude: dict[str, bool] = options.get("excludeByName") or {}
    index: dict[str, int] = options.get("indexByName") or {}
    rename: dict[str, str] = options.get("renameByName") or {}
    out = []
    for frame in frames:
        kept = [f for f in frame.fields if not exclude.get(f.name)]
        if index:
            kept.sort(key=lambda f: index.get(f.name, len(index)))
        out.append(Frame([Field(rename.get(f.name) or f.name, f.kind, f.values, f.labels) for f in kept]))
    return out


TRANSFORMATIONS: dict[str, Callable[[list[Frame], dict[str, Any]], list[Frame]]] = {
    "joinByField": join_by_field,
    "seriesToColumns": join_by_field,  # the id joinByField had before Grafana 9
    "reduce": reduce_,
    "organize": organize,
}


def apply_transformations(frames: list[Frame], transformations: list[dict[str, Any]]) -> list[Frame]:
    for step in transformations:
        if step.get("disabled"):
            continue
        if step["id"] not in TRANSFORMATIONS:
            raise UnsupportedError(f"transformation {step['id']!r}")
        frames = TRANSFORMATIONS[step["id"]](frames, step.get("options") or {})
    return frames


# --- one dashboard refresh --------------------------------------------------------------

# The built-in data source that hands one panel's result to another (dashboard/constants.ts).
SHARED_DASHBOARD_QUERY = "-- Dashboard --"
# A dashboard is 24 grid columns wide (gridPos.w).
GRID_COLUMNS = 24


@dataclass(frozen=True)
class SentQuery:
    """One query a refresh sent to InfluxDB."""

    panel_id: int
    ref_id: str
    text: str
    interval_ms: int


@dataclass
class Refresh:
    """What one refresh of a dashboard sent and showed."""

    queries: list[SentQuery] = field(default_factory=list)
    # panel id → its frames before its transformations (what `-- Dashboard --` hands on
    # without withTransforms) and after them (what the panel shows).
    data: dict[int, list[Frame]] = field(default_factory=dict)
    shown: dict[int, list[Frame]] = field(default_factory=dict)


def panel_width_px(panel: dict[str, Any], dashboard_width_px: int) -> int:
    return dashboard_width_px * panel["gridPos"]["w"] // GRID_COLUMNS


def refresh(
    dashboard: dict[str, Any],
    execute: Callable[[str], dict[str, Any]],
    *,
    now_ms: int,
    mode: Mode,
    dashboard_width_px: int = 1000,
    choices: Mapping[str, str] | None = None,
    time: tuple[str, str] | None = None,
) -> Refresh:
    """Run every panel of `dashboard` once, as one refresh in Grafana does.

    `execute(text)` sends one InfluxQL query and returns InfluxDB's JSON (epoch=ms).
    Panels on an InfluxDB data source run their targets; a panel on `-- Dashboard --`
    sends nothing and takes the source panel's result (dashboard/datasource.ts: the
    source's data provider, its transformed data only with `withTransforms`). Every
    panel's `$__interval` comes from its own width (`dashboard_width_px` * w / 24).
    `choices` picks variable options by their text; `time` overrides the dashboard range.
    """
    raw_from, raw_to = time or (dashboard["time"]["from"], dashboard["time"]["to"])
    time_range = TimeRange(raw_from, raw_to, now_ms)
    variables = dashboard_variables(dashboard, choices)
    result = Refresh()
    shared: list[dict[str, Any]] = []
    for panel in panels_of(dashboard):
        ds = panel.get("datasource") or {}
        if ds.get("uid") == SHARED_DASHBOARD_QUERY:
            shared.append(panel)
            continue
        if ds.get("type") != "influxdb":
            raise UnsupportedError(f"panel {panel['title']!r}: data source {ds!r}")
        interval_ms = calculate_interval(
            time_range, panel_width_px(panel, dashboard_width_px), panel.get("interval")
        )
        frames: list[Frame] = []
        for target in panel.get("targets", []):
            if target.get("hide"):
                continue
            if not target.get("rawQuery"):
                raise UnsupportedError(f"panel {panel['title']!r}: only raw InfluxQL targets")
            text = render_query(target["query"], time_range, interval_ms, mode, variables)
            result.queries.append(SentQuery(panel["id"], target["refId"], text, interval_ms))
            frames += frames_from_response(
                execute(text), target.get("alias", ""), interval_ms, target.get("resultFormat", "time_series")
            )
        result.data[panel["id"]] = frames
        result.shown[panel["id"]] = apply_transformations(frames, panel.get("transformations", []))
    for panel in shared:
        (target,) = panel["targets"]
        source = target["panelId"]
        if source not in result.data:
            raise UnsupportedError(f"panel {panel['title']!r}: source panel {source} runs no query")
        frames = result.shown[source] if target.get("withTransforms") else result.data[source]
        result.data[panel["id"]] = frames
        result.shown[panel["id"]] = apply_transformations(frames, panel.get("transformations", []))
    return result


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data, including those nested in rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.extend(panel.get("panels", []))
        if panel.get("type") != "row":
            out.append(panel)
    return out
