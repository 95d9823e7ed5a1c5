"""kong/kong.yml, checked without Kong (it cannot run here): its structure and plugin settings
against Kong 3.8's schemas, and its routes against the auth server's real Flask routes."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from flask import Flask
from werkzeug.exceptions import MethodNotAllowed, NotFound

from auth_server import create_app
from auth_server.config import AuthConfig
from auth_server.ops import INTERNAL_PATHS
from tests.servers import REPO_ROOT, InfluxServer, MariaDBServer

KONG_YML = REPO_ROOT / "kong" / "kong.yml"
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}

# Field names of Kong 3.8's entity and plugin schemas (kong/db/schema/entities/*.lua and
# kong/plugins/<name>/schema.lua of the 3.8.0 tag), for the entities and plugins used here.
SERVICE_FIELDS = {
    "name", "retries", "protocol", "host", "port", "path", "connect_timeout", "write_timeout",
    "read_timeout", "tags", "client_certificate", "tls_verify", "tls_verify_depth", "ca_certificates",
    "enabled", "url", "routes", "plugins",
}  # fmt: skip
ROUTE_FIELDS = {
    "name", "protocols", "https_redirect_status_code", "strip_path", "preserve_host", "request_buffering",
    "response_buffering", "tags", "snis", "sources", "destinations", "methods", "hosts", "paths", "headers",
    "regex_priority", "path_handling", "expression", "priority", "plugins",
}  # fmt: skip
PERIODS = ("second", "minute", "hour", "day", "month", "year")
PLUGIN_CONFIG_FIELDS = {
    "rate-limiting": {
        *PERIODS, "limit_by", "header_name", "path", "policy", "fault_tolerant", "redis",
        "hide_client_headers", "error_code", "error_message", "sync_rate",
    },
    "request-size-limiting": {"allowed_payload_size", "size_unit", "require_content_length"},
    "prometheus": {
        "per_consumer", "status_code_metrics", "ai_metrics", "latency_metrics", "bandwidth_metrics",
        "upstream_health_metrics",
    },
}  # fmt: skip
SIZE_UNITS = {"bytes": 1, "kilobytes": 1024, "megabytes": 1024 * 1024}


@pytest.fixture(scope="module")
def kong() -> dict[str, Any]:
    return yaml.safe_load(KONG_YML.read_text())


@pytest.fixture(scope="module")
def flask_app(mariadb: MariaDBServer, influx: InfluxServer) -> Flask:
    mariadb.create_database("kong_routes")
    return create_app(
        {
            "MYSQL_HOST": "127.0.0.1",
            "MYSQL_PORT": str(mariadb.port),
            "MYSQL_USER": mariadb.user,
            "MYSQL_PASSWORD": mariadb.password,
            "MYSQL_DATABASE": "kong_routes",
            "JWT_SECRET": "k" * 32,
            "INFLUXDB_PORT": str(influx.port),
        }
    )


def _routes(kong: dict[str, Any]) -> list[dict[str, Any]]:
    return [route for service in kong["services"] for route in service.get("routes", [])]


def _plugins(entity: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for p in entity.get("plugins", []) if p["name"] == name]


def test_declarative_structure(kong: dict[str, Any]) -> None:
    assert kong["_format_version"] == "3.0"
    assert set(kong) <= {"_format_version", "_transform", "services", "plugins"}
    assert len(kong["services"]) == 1
    service = kong["services"][0]
    # The stack's service name and the auth server's default port.
    assert service["url"] == f"http://auth_server:{AuthConfig().auth_port}"
    assert set(service) <= SERVICE_FIELDS
    names = [service["name"]] + [r["name"] for r in _routes(kong)]
    assert len(names) == len(set(names)), "entity names must be unique"
    for route in _routes(kong):
        assert set(route) <= ROUTE_FIELDS, route["name"]
        # The auth server's routes start with /api/: Kong must forward the path unchanged.
        assert route["strip_path"] is False, route["name"]
        assert route["paths"], route["name"]
        for path in route["paths"]:
            # A regex path (`~...`) is anchored at its start: a prefix match too.
            assert path.removeprefix("~").startswith("/api/"), f"{route['name']}: only /api/... is public"
            if path.startswith("~"):
                re.compile(path[1:])
            else:
                # Kong refuses a plain path that is not in its normalized form.
                assert kong_normalize(path) == path
            assert "//" not in path, "Kong refuses empty path segments"
        assert set(route.get("methods", [])) <= HTTP_METHODS


def test_plugin_names_and_fields_exist_in_kong_3(kong: dict[str, Any]) -> None:
    entities = [kong, *kong["services"], *_routes(kong)]
    used = [p for entity in entities for p in entity.get("plugins", [])]
    assert {p["name"] for p in used} == set(PLUGIN_CONFIG_FIELDS)
    for plugin in used:
        assert set(plugin) <= {"name", "config", "enabled", "tags", "protocols"}
        unknown = set(plugin.get("config", {})) - PLUGIN_CONFIG_FIELDS[plugin["name"]]
        assert not unknown, f"{plugin['name']}: unknown config fields {unknown}"


def test_rate_limits_are_valid_and_login_is_stricter(kong: dict[str, Any]) -> None:
    service = kong["services"][0]
    (service_limit,) = _plugins(service, "rate-limiting")
    (login,) = [r for r in _routes(kong) if r["name"] == "api-login"]
    (login_limit,) = _plugins(login, "rate-limiting")
    for config in (service_limit["config"], login_limit["config"]):
        # DB-less Kong offers only the local and redis policies; we have no redis.
        assert config["policy"] == "local"
        assert config["limit_by"] == "ip"
        limits = [(p, config[p]) for p in PERIODS if p in config]
        assert limits, "at least one period"
        assert all(isinstance(v, int) and v > 0 for _, v in limits)
        # Kong's own check: a longer period may not allow fewer requests than a shorter one.
        values = [v for _, v in limits]
        assert values == sorted(values)
    for period in PERIODS:
        if period in login_limit["config"]:
            assert login_limit["config"][period] < service_limit["config"].get(period, float("inf"))
    assert "minute" in login_limit["config"]


def test_body_limit_equals_the_auth_servers_own(kong: dict[str, Any]) -> None:
    (size_limit,) = _plugins(kong["services"][0], "request-size-limiting")
    config = size_limit["config"]
    assert config["size_unit"] in SIZE_UNITS
    assert isinstance(config["allowed_payload_size"], int)
    assert config["allowed_payload_size"] * SIZE_UNITS[config["size_unit"]] == AuthConfig().max_message_bytes


def test_prometheus_is_global(kong: dict[str, Any]) -> None:
    (prometheus,) = _plugins(kong, "prometheus")
    assert prometheus["config"]["status_code_metrics"] is True
    assert prometheus["config"]["latency_metrics"] is True


def _sample_path(rule: str) -> str:
    """A concrete request path for a Flask rule: each <variable> becomes `x`."""
    return re.sub(r"<[^<>]+>", "x", rule)


# --- A model of Kong 3.8's router for paths, written from its behaviour (kong/tools/uri.lua
# `normalize` and `escape`, kong/router/{atc,transform}.lua of the 3.8.0 tag) -----------------

# RFC 3986 reserved characters (and `%`): Kong keeps their percent-encodings, upper-cased.
KONG_RESERVED = frozenset("!*'();:@&=+$,/?%#[]")
# What Kong's escape() leaves as it is in the path it forwards upstream.
KONG_UNESCAPED = re.compile(r"[!#$&'()*+,/:;=?@\[\]A-Za-z0-9\-_.~%]")


def kong_normalize(path: str) -> str:
    """The path Kong matches routes on (and forwards, escaped): percent-encodings of
    characters outside KONG_RESERVED decoded, the others upper-cased, `.`/`..` segments
    resolved, `//` merged. Characters stand for bytes (latin-1), as in Lua strings."""

    def decode(m: re.Match[str]) -> str:
        char = chr(int(m[1], 16))
        return m[0].upper() if char in KONG_RESERVED else char

    path = re.sub(r"%([0-9A-Fa-f]{2})", decode, path)
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment in (".", ".."):
            if segment == ".." and out:
                out.pop()
            if last:
                out.append("")
        elif segment or last:
            out.append(segment)
    return "/" + "/".join(out)


def kong_escape(path: str) -> str:
    return "".join(c if KONG_UNESCAPED.fullmatch(c) else f"%{ord(c):02X}" for c in path)


def _kong_route_for(kong: dict[str, Any], path: str, method: str) -> dict[str, Any] | None:
    """The route Kong would pick for a request path (query string included or not): on the
    normalized path, regex paths (anchored at the start) rank above plain prefixes, longer
    prefixes above shorter ones, and the method must be allowed."""
    normalized = kong_normalize(path.split("?", 1)[0])
    candidates = []
    for route in _routes(kong):
        if method not in route.get("methods", HTTP_METHODS):
            continue
        for p in route["paths"]:
            if p.startswith("~"):
                if re.match(p[1:], normalized):
                    candidates.append(((1, 0), route))
            elif normalized.startswith(p):
                candidates.append(((0, len(p)), route))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def kong_forwarded_path(path: str) -> str:
    """What Kong sends upstream for this request path (strip_path false, service path /)."""
    raw_path, sep, query = path.partition("?")
    return kong_escape(kong_normalize(raw_path)) + sep + query


@pytest.mark.parametrize(
    ("sent", "normalized"),
    [
        ("/api/auth/login", "/api/auth/login"),
        ("/api//auth///login", "/api/auth/login"),
        ("/api/./auth/x/../login", "/api/auth/login"),
        ("/api/%61uth/log%69n", "/api/auth/login"),
        ("/api/%2e%2E/api/auth/login", "/api/auth/login"),
        ("/api/auth%2flogin", "/api/auth%2Flogin"),
        ("/api/auth%3blogin", "/api/auth%3Blogin"),
        ("/api/auth/login/", "/api/auth/login/"),
        ("/api/auth/login/.", "/api/auth/login/"),
        ("/api/..", "/"),
    ],
)
def test_the_router_model(sent: str, normalized: str) -> None:
    assert kong_normalize(sent) == normalized


# Ways to write the login path. Each is sent to the real auth server both as Kong would forward
# it and as sent (were Kong to forward it unchanged): wherever the login view answers, Kong
# must have taken the login route with its stricter limit.
LOGIN_SPELLINGS = [
    "/api/auth/login",
    "/api/auth/login?next=/",
    "//api/auth/login",
    "/api//auth/login",
    "/api/auth//login",
    "/api/./auth/login",
    "/api/auth/./login",
    "/api/x/../auth/login",
    "/api/auth/x/../login",
    "/api/%2E/auth/login",
    "/api/x/%2e%2e/auth/login",
    "/%61pi/auth/login",
    "/api/%61uth/login",
    "/api/auth/log%69n",
    "/api/auth/%6C%6F%67%69%6E",
    "/api/auth%2Flogin",
    "/api/auth%2flogin",
    "/api%2Fauth%2Flogin",
    "/api%2fauth/login",
    "/api/auth%2F%2Flogin",
    "/api/auth%2F./login",
    "/api/auth%252Flogin",
    "/api/auth/login%2F",
    "/api/auth/login/",
    "/api/auth/login;x",
    "/api/auth/login%3Fx",
    "/api/auth/login%00",
    "/API/auth/login",
    "/api/auth/Login",
]


def _runs_the_login_view(flask_app: Flask, path: str, n: int) -> bool:
    # A fresh name and address each time, so the login throttle never answers instead.
    response = flask_app.test_client().post(
        path,
        json={"username": f"nobody-{n}", "password": "wrong-password"},
        environ_base={"REMOTE_ADDR": f"198.51.100.{n % 250}"},
    )
    return response.status_code == 401 and response.get_json() == {"error": "invalid username or password"}


@pytest.mark.parametrize("spelling", LOGIN_SPELLINGS)
def test_every_spelling_of_the_login_is_limited_as_login(
    kong: dict[str, Any], flask_app: Flask, spelling: str
) -> None:
    n = LOGIN_SPELLINGS.index(spelling)
    route = _kong_route_for(kong, spelling, "POST")
    for upstream in {kong_forwarded_path(spelling), spelling}:
        if route is not None and _runs_the_login_view(flask_app, upstream, n):
            assert route["name"] == "api-login", f"{spelling} reaches the login as {upstream}"


def test_the_reproductions_take_the_login_route_or_none() -> None:
    kong = yaml.safe_load(KONG_YML.read_text())
    # Kong keeps %2F encoded: the regex path catches it (it once took the /api/ route).
    for spelling in ("/api/auth%2Flogin", "/api/auth%2flogin"):
        assert _kong_route_for(kong, spelling, "POST")["name"] == "api-login"
    # No /api/ prefix after normalization: Kong has no route for it at all (404).
    assert _kong_route_for(kong, "/api%2Fauth%2Flogin", "POST") is None
    # Other routes are not swallowed by the regex.
    assert _kong_route_for(kong, "/api/auth/me", "GET")["name"] == "api"
    assert _kong_route_for(kong, "/api/accounts/login", "POST")["name"] == "api"


def test_every_kong_route_reaches_a_real_route(kong: dict[str, Any], flask_app: Flask) -> None:
    rules = list(flask_app.url_map.iter_rules())
    adapter = flask_app.url_map.bind("auth_server")
    for route in _routes(kong):
        for prefix in route["paths"]:
            for method in route.get("methods", []):
                if prefix.startswith("~"):
                    matching = [r for r in rules if re.match(prefix[1:], _sample_path(r.rule))]
                else:
                    matching = [r for r in rules if r.rule.startswith(prefix)]
                served = [r for r in matching if method in (r.methods or ())]
                assert served, f"Kong route {route['name']} {method} {prefix} reaches no Flask route"
                if not prefix.startswith("~") and not prefix.endswith("/"):
                    # An exact path: Flask must serve that very path and method.
                    try:
                        adapter.match(prefix, method=method)
                    except (NotFound, MethodNotAllowed):
                        pytest.fail(f"Kong route {route['name']}: Flask does not serve {method} {prefix}")


def test_every_public_route_is_behind_kong_and_nothing_else(kong: dict[str, Any], flask_app: Flask) -> None:
    public = 0
    for rule in flask_app.url_map.iter_rules():
        path = _sample_path(rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            route = _kong_route_for(kong, path, method)
            if rule.rule in INTERNAL_PATHS:
                assert route is None, f"internal {rule.rule} must not be routed by Kong"
            else:
                assert route is not None, f"{method} {rule.rule} is not reachable through Kong"
                public += 1
    assert public >= 9
    # And the login goes through the stricter route.
    assert _kong_route_for(kong, "/api/auth/login", "POST")["name"] == "api-login"


def test_stack_keeps_the_admin_api_off_and_metrics_on_the_status_listener() -> None:
    stack = yaml.safe_load((REPO_ROOT / "stack.yml").read_text())
    kong = stack["services"]["kong"]
    env = kong["environment"]
    assert env["KONG_DATABASE"] == "off"
    assert env["KONG_ADMIN_LISTEN"] == "off"
    assert env["KONG_STATUS_LISTEN"].endswith(":8100")
    # 8080, or 8443 in the secure profile (run.sh sets the variable; tests/stack checks both).
    published = {str(p["published"]) for p in kong.get("ports", [])}
    assert published == {"${KONG_PUBLISHED_PORT:-8080}"}
    mounted = {c["target"] for c in kong.get("configs", [])}
    assert env["KONG_DECLARATIVE_CONFIG"] in mounted
    sources = {c["source"] for c in kong.get("configs", [])}
    assert any(stack["configs"][s]["file"] in ("./kong/kong.yml", "kong/kong.yml") for s in sources)


def test_the_auth_server_trusts_exactly_one_proxy_kong() -> None:
    """Kong appends the address it saw to X-Forwarded-For (kong/runloop/handler.lua, 3.8.0):
    that entry, and nothing a client wrote before it, names the client to throttle logins by."""
    stack = yaml.safe_load((REPO_ROOT / "stack.yml").read_text())
    environment = stack["services"]["auth_server"]["environment"]
    assert environment["TRUSTED_PROXY_HOPS"] == "1"
    assert AuthConfig.from_env({"JWT_SECRET": "k" * 32}).trusted_proxy_hops == 0  # no proxy by default
    # Its networks hold Kong, Prometheus (which sends no such header) and the servers the auth
    # server itself calls: no other client can write the header Kong's entry is read from.
    networks = set(stack["services"]["auth_server"]["networks"])
    others = {
        name
        for name, service in stack["services"].items()
        if name != "auth_server" and networks & set(service.get("networks", []))
    }
    assert others == {"kong", "prometheus", "mysql", "influxdb", "mqtt_broker"}
