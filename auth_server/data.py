"""The HTTP data API: a device writes and reads the series its account has rights to.

Writes follow the MQTT payload rules through the adapter's own implementation
(`adapter.contract.parse_message` and `line_protocol`, with the same `Limits` and series
budget), and are all-or-nothing: one rejected element of a backlog array, or one point past
a series budget, rejects the whole request before anything is written.
"""

from __future__ import annotations

import re
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from adapter.contract import (
    Drop,
    Reject,
    SeriesBudget,
    TimestampError,
    line_protocol,
    parse_message,
    parse_timestamp,
    split_topic,
    valid_name,
)
from adapter.influx import SeriesBudgetKeeper, TransientWriteError
from auth_server.auth import current_account, login_required
from auth_server.config import AuthConfig
from auth_server.errors import ApiError
from auth_server.influx import InfluxClient, InfluxRejectedError, InfluxUnavailableError, quote_identifier
from auth_server.metrics import AuthMetrics
from auth_server.policy import Right

bp = Blueprint("data", __name__, url_prefix="/api/data")

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
_NUMBER_RE = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")

_REJECT_TEXT = {
    Reject.BAD_TOPIC: "location and station must each be one topic level",
    Reject.NOT_JSON: "the body is not valid JSON (RFC 8259; NaN and Infinity are not JSON)",
    Reject.NOT_OBJECT: "the body must be a JSON object, or an array of objects",
    Reject.BAD_TIMESTAMP: "bad timestamp",
    Reject.TOO_LARGE: "the body is larger than MAX_MESSAGE_BYTES",
    Reject.LOCATION_TOO_LONG: "the location is longer than MAX_LOCATION_LENGTH",
    Reject.STATION_TOO_LONG: "the station is longer than MAX_STATION_LENGTH",
    Reject.TOO_MANY_ELEMENTS: "the array has more elements than MAX_BACKLOG_ELEMENTS",
    Reject.TOO_MANY_POINTS: "the body holds more values than MAX_POINTS_PER_MESSAGE",
    Reject.TOO_MANY_KEYS: "an object has more keys than MAX_KEYS_PER_OBJECT",
}
_DROP_TEXT = {
    Drop.DEVICE_SERIES_BUDGET: "this station already has MAX_SERIES_PER_DEVICE metrics",
    Drop.SERIES_BUDGET: "the database already holds MAX_SERIES series",
}


def _influx() -> InfluxClient:
    return current_app.extensions["influx"]


def _series_budget() -> SeriesBudgetKeeper:
    """This process's view of the series budget, kept in step with InfluxDB."""
    keeper = current_app.extensions.get("series_budget")
    if keeper is None:
        config: AuthConfig = current_app.config["AUTH"]
        reader = _influx().series_reader()
        budget = SeriesBudget(config.limits.max_series_per_device, config.limits.max_series)
        keeper = current_app.extensions.setdefault(
            "series_budget", SeriesBudgetKeeper(budget, reader, config.series_refresh_s)
        )
    return keeper


def _refuse(reason: Reject | Drop, status: int, text: str) -> ApiError:
    metrics: AuthMetrics = current_app.extensions["auth_metrics"]
    metrics.data_rejected.labels(reason.value).inc()
    return ApiError(status, text)


def _series(location: str, station: str, right: Right) -> None:
    """400 unless `<location>/<station>` is a valid topic, 403 unless the account has `right`."""
    if split_topic(f"{location}/{station}") is None:
        raise ApiError(
            400,
            "location and station must be topic levels without control, line-separator or "
            "bidirectional characters or a trailing backslash",
        )
    if not current_account().may(right, location, station):
        raise ApiError(403, f"this account may not {right} the series of {location}/{station}")


@bp.post("/<location>/<station>")
@login_required
def write(location: str, station: str) -> Response:
    _series(location, station, Right.WRITE)
    config: AuthConfig = current_app.config["AUTH"]
    parsed = parse_message(
        f"{location}/{station}", request.get_data(cache=False), time.time_ns(), config.limits
    )
    if isinstance(parsed, Reject):
        status = 413 if parsed is Reject.TOO_LARGE else 400
        raise _refuse(parsed, status, f"{_REJECT_TEXT[parsed]}; nothing was stored")
    for index, record in enumerate(parsed.records):
        if record.reject is not None:
            where = f"element {index}: " if len(parsed.records) > 1 else ""
            detail = f" ({record.reject_detail})" if record.reject_detail else ""
            raise _refuse(
                record.reject, 400, f"{where}{_REJECT_TEXT[record.reject]}{detail}; nothing was stored"
            )
    keeper = _series_budget()
    try:
        keeper.ensure_fresh()
    except TransientWriteError as exc:
        current_app.logger.error("reading the series budget from InfluxDB failed: %s", exc)
        raise ApiError(503, "the time-series database is unavailable; nothing was stored, try again") from exc
    refused = keeper.budget.admit(parsed, all_or_nothing=True)
    if refused:
        metric, why = refused[0]
        raise _refuse(why, 400, f"new metric {metric!r} refused: {_DROP_TEXT[why]}; nothing was stored")
    points = parsed.points
    try:
        _influx().write_lines([line_protocol(p) for p in points])
    except InfluxUnavailableError as exc:
        current_app.logger.error("data write to %s/%s failed: %s", location, station, exc)
        raise ApiError(503, "the time-series database is unavailable; nothing was stored, try again") from exc
    except InfluxRejectedError as exc:
        current_app.logger.error("InfluxDB refused points of %s/%s: %s", location, station, exc)
        raise ApiError(502, "the time-series database refused the points") from exc
    metrics: AuthMetrics = current_app.extensions["auth_metrics"]
    metrics.points_written.inc(len(points))
    ignored = [{"key": key, "reason": str(reason)} for r in parsed.records for key, reason in r.ignored]
    return jsonify(stored=len(points), ignored=ignored)


def _time_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    value: Any = raw
    if _NUMBER_RE.match(raw):
        value = float(raw) if "." in raw else int(raw)
    try:
        return parse_timestamp(value)
    except TimestampError as exc:
        raise ApiError(400, f"{name}: {exc} (use ISO 8601 or epoch seconds/milliseconds)") from exc


def _limit_arg() -> int:
    raw = request.args.get("limit")
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


@bp.get("/<location>/<station>")
@login_required
def read(location: str, station: str) -> Response:
    _series(location, station, Right.READ)
    metric = request.args.get("metric")
    if metric is not None and (not valid_name(metric) or len(metric) > 255):
        raise ApiError(
            400,
            "metric must be a name of the message contract (no control, line-separator or bidi characters)",
        )
    start, end, limit = _time_arg("start"), _time_arg("end"), _limit_arg()
    # Values travel as bound parameters; the only text spliced in is a quoted identifier and
    # integers produced here.
    conditions = ['"location" = $location', '"station" = $station']
    if start is not None:
        conditions.append(f"time >= {start}")
    if end is not None:
        conditions.append(f"time <= {end}")
    source = quote_identifier(f"{station}.{metric}") if metric is not None else "/.*/"
    query = f'SELECT "value" FROM {source} WHERE {" AND ".join(conditions)} ORDER BY time DESC LIMIT {limit}'
    try:
        found = _influx().query(query, {"location": location, "station": station})
    except InfluxUnavailableError as exc:
        current_app.logger.error("data read of %s/%s failed: %s", location, station, exc)
        raise ApiError(503, "the time-series database is unavailable, try again") from exc
    prefix = f"{station}."
    series = [
        {
            "metric": s["name"][len(prefix) :] if s["name"].startswith(prefix) else s["name"],
            # newest `limit` points were selected; shown oldest first
            "values": list(reversed(s.get("values", []))),
        }
        for s in sorted(found, key=lambda s: s["name"])
    ]
    return jsonify(location=location, station=station, series=series)
