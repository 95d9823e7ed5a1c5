"""Operations endpoints: health check, Prometheus metrics, the OpenAPI description."""

from __future__ import annotations

import pymysql
from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from auth_server.db import DatabaseUnavailableError, get_db
from auth_server.influx import InfluxClient
from auth_server.metrics import AuthMetrics
from auth_server.openapi import openapi_spec

bp = Blueprint("ops", __name__)

# Not routed by Kong: only the swarm health check and Prometheus, inside the stack, use these.
INTERNAL_PATHS = frozenset({"/healthz", "/metrics"})


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Healthy when MySQL answers: without it nothing works, and a restart may help. InfluxDB
    is reported but does not fail the check (restarting us would not bring it back)."""
    checks: dict[str, str] = {}
    try:
        with get_db().cursor() as cur:
            # The accounts table, not `SELECT 1`: a pooled connection outlives its database.
            cur.execute("SELECT 1 FROM accounts LIMIT 1")
        checks["mysql"] = "ok"
    except (DatabaseUnavailableError, pymysql.MySQLError) as exc:
        checks["mysql"] = f"unavailable: {exc.__class__.__name__}"
    influx: InfluxClient = current_app.extensions["influx"]
    checks["influxdb"] = "ok" if influx.ping() else "unavailable"
    healthy = checks["mysql"] == "ok"
    return jsonify(status="ok" if healthy else "unavailable", checks=checks), 200 if healthy else 503


@bp.get("/metrics")
def metrics() -> Response:
    auth_metrics: AuthMetrics = current_app.extensions["auth_metrics"]
    return Response(generate_latest(auth_metrics.exposition_registry()), content_type=CONTENT_TYPE_LATEST)


@bp.get("/api/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_spec())
