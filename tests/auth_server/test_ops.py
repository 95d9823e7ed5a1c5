"""Health check, Prometheus metrics, and the OpenAPI description kept true to the routes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask

from auth_server import create_app, db
from tests.auth_server.conftest import ADMIN, Api
from tests.servers import MariaDBServer

DOCUMENTED_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def test_healthz_reports_mysql_and_influxdb(api: Api) -> None:
    response = api.call("GET", "/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"mysql": "ok", "influxdb": "ok"}}


def test_healthz_fails_without_mysql(api: Api, mariadb: MariaDBServer, settings: dict[str, str]) -> None:
    assert api.call("GET", "/healthz").status_code == 200
    mariadb.drop_database(settings["MYSQL_DATABASE"])
    response = api.call("GET", "/healthz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"
    # Every other route says so too, as JSON.
    login = api.login(ADMIN, settings["ADMIN_PASSWORD"])
    assert login.status_code == 503
    assert set(login.get_json()) == {"error"}


def test_metrics_count_requests_logins_and_points(api: Api) -> None:
    assert api.metric("auth_logins_total", result="failure") == 0
    _, token = api.device("m-dev", ("UPB", "M", True, True))
    api.login("m-dev", "wrong-password")
    api.login("m-dev", "wrong-password")
    api.call("POST", "/api/data/UPB/M", token=token, json={"A": 1, "B": 2, "C": "x"})
    api.call("GET", "/no/such/path")

    assert api.metric("auth_logins_total", result="failure") == 2
    # the admin's login and the device's
    assert api.metric("auth_logins_total", result="success") == 2
    assert api.metric("auth_points_written_total") == 2
    assert api.metric("auth_http_requests_total", method="POST", route="/api/auth/login", status="401") == 2
    assert (
        api.metric(
            "auth_http_requests_total", method="POST", route="/api/data/<location>/<station>", status="200"
        )
        == 1
    )
    # Unknown paths share one label value instead of one series per path.
    assert api.metric("auth_http_requests_total", method="GET", route="unmatched", status="404") == 1
    count = api.metric("auth_http_request_duration_seconds_count", method="POST", route="/api/auth/login")
    assert count == 4


def test_errors_are_json(api: Api) -> None:
    for method, path, status in [
        ("GET", "/no/such/path", 404),
        ("PUT", "/api/auth/login", 405),
        ("DELETE", "/api/accounts", 405),
    ]:
        response = api.call(method, path)
        assert response.status_code == status
        assert response.is_json
        assert set(response.get_json()) == {"error"}
    assert "POST" in api.call("GET", "/api/auth/login").headers["Allow"]


def _flask_operations(app: Flask) -> set[tuple[str, str]]:
    operations = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method in DOCUMENTED_METHODS:
                operations.add((path, method))
    return operations


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_openapi_describes_exactly_the_routes(app: Flask, api: Api) -> None:
    response = api.call("GET", "/api/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    documented = {
        (path, method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method.upper() in DOCUMENTED_METHODS
    }
    assert documented == _flask_operations(app)


def test_openapi_is_self_consistent(api: Api) -> None:
    spec = api.call("GET", "/api/openapi.json").get_json()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                _resolve(spec, node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    for path, item in spec["paths"].items():
        path_params = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert path_params == set(re.findall(r"{([^}]+)}", path)), path
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation["responses"], (path, method)
            needs_token = operation.get("security") != []
            if needs_token:
                # Every route behind a token documents what happens without one.
                assert "401" in operation["responses"], (path, method)
    login = spec["paths"]["/api/auth/login"]["post"]["responses"]
    assert {"200", "400", "401"} <= set(login)


def test_requests_wait_for_one_of_mysql_max_connections(
    settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server holds far more requests than MySQL takes connections: beyond
    MYSQL_MAX_CONNECTIONS they wait, and after a while get 503 instead of MySQL's refusal."""
    app = create_app({**settings, "MYSQL_MAX_CONNECTIONS": "2", "AUTH_WORKERS": "1"})
    monkeypatch.setattr(db, "CONNECTION_WAIT_S", 0.2)
    pool: db.ConnectionPool = app.extensions["mysql_pool"]
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    # Both connections taken, as two requests in flight would.
    held = [pool.acquire(), pool.acquire()]
    busy = client.get("/healthz")
    assert busy.status_code == 503
    assert busy.get_json()["checks"]["mysql"] == "unavailable: DatabaseUnavailableError"
    released = held.pop()
    released_id = released.thread_id()
    pool.release(released)
    assert client.get("/healthz").status_code == 200
    # The request took the free connection and gave it back, as it was: not a new one.
    again = pool.acquire()
    assert again.thread_id() == released_id
    pool.release(again)
    pool.release(held.pop())
    metrics = Api(client, settings)
    assert metrics.metric("auth_mysql_connections", state="in_use") == 0
    assert metrics.metric("auth_mysql_connections", state="idle") == 2
