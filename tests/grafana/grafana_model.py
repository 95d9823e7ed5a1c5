"""What Grafana does with a panel's InfluxQL target, redone in Python so tests can execute it.

Grafana cannot run on the test machines, so the dashboards are proven by running their
queries against a real InfluxDB. This module reproduces, for what the dashboards use, the
steps Grafana 11 takes between the JSON and the pixels (the Grafana sources named below
are the reference; every function says which one it mirrors):

1. the time range of the dashboard (`now-6h` … `now`) is resolved at query time;
2. macros in the raw query are substituted (`$timeFilter`, `$__interval`, `$interval`,
   `$__interval_ms`), in the order of `pkg/tsdb/influxdb/models/query.go` `Build()`;
3. the query goes to InfluxDB's `/query` with `epoch=ms`;
4. each (series, column) of the answer becomes one frame named by the target's `alias`
   (`pkg/tsdb/influxdb/influxql/util` `FormatFrameName`);
5. the panel's transformations run on those frames (`packages/grafana-data/src/
   transformations/transformers`: joinByField, reduce, organize).

Anything outside that subset (a template variable, an unknown transformation or
reducer) raises `UnsupportedError`, so a dashboard edit can never be "proven" by a helper
that silently ignored part of it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


class UnsupportedError(ValueError):
    """The dashboard uses a Grafana feature this helper does not reproduce (extend it)."""


class Mode(Enum):
    """How Grafana renders `$timeFilter` for InfluxQL.

    BACKEND: Grafana ≥ 10 (feature `influxdbBackendMigration`, GA and on by default):
    the Go backend renders absolute epoch milliseconds, `time >= 1700000000000ms and
    time <= 1700021600000ms`.
    CLASSIC: the pre-migration browser path (`datasource.ts` `getTimeFilter`), kept for
    data sources in browser access or with the toggle off: a relative range stays
    relative, `time >= now() - 6h and time <= now()`.
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


# Whatever still looks like a Grafana variable after substitution: $name, ${name}, [[name]].
_LEFTOVER = re.compile(r"\$\{?\w+\}?|\[\[[^\]]+\]\]")


def render_query(query: str, time_range: TimeRange, interval_ms: int, mode: Mode) -> str:
    """A raw InfluxQL target's `query` with Grafana's macros substituted.

    The order is Build()'s: `$interval` is replaced before `$__interval_ms`, which is
    safe because neither is a prefix of the other once the `$` is included.
    """
    text = query.replace("$timeFilter", time_filter(time_range, mode))
    text = text.replace("$interval", format_interval(interval_ms))
    text = text.replace("$__interval_ms", str(interval_ms))
    text = text.replace("$__interval", format_interval(interval_ms))
    leftover = _LEFTOVER.search(text)
    if leftover:
        raise UnsupportedError(
            f"{leftover[0]!r} in {query!r}: template variables are not reproduced by this helper"
        )
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
    """One column of a frame; `name` is the display name the panel shows."""

    name: str
    kind: str  # "time" | "number" | "string"
    values: list[Any]


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


def frames_from_response(body: dict[str, Any], alias: str, interval_ms: int = 1000) -> list[Frame]:
    """InfluxDB's JSON answer (epoch=ms) → Grafana frames, as transformRowsForTimeSeries does:
    one frame per (series, non-time column) with a `Time` and a named value field."""
    results = body.get("results", [])
    if not results:
        return []
    if "error" in results[0]:
        raise AssertionError(f"InfluxDB error: {results[0]['error']}")
    frames: list[Frame] = []
    for series in results[0].get("series", []):
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
            frames.append(Frame([Field("Time", "time", times), Field(name, "number", values)]))
    return frames


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
                Field(f.name, f.kind, [f.values[position[key]] if key in position else None for key in keys])
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
        out.append(Frame([Field(rename.get(f.name) or f.name, f.kind, f.values) for f in kept]))
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
