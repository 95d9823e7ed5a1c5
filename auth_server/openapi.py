"""The OpenAPI 3 description of the auth server's HTTP API, served at /api/openapi.json.

A test compares its paths and methods with the Flask routes, so it cannot drift from the code.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from auth_server.passwords import GENERATED_PASSWORD_BYTES
from auth_server.policy import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, USERNAME_RE

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _query_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_AUTH_ERRORS = {
    "401": _error("Missing, invalid or expired token, or the account is disabled or gone"),
}
_ADMIN_ERRORS = {**_AUTH_ERRORS, "403": _error("The account is not an admin")}
_USERNAME = _path_param("username", "The account's username")
_SERIES = [
    _path_param("location", "Location of the device (first MQTT topic level)"),
    _path_param("station", "Station name of the device (second MQTT topic level)"),
]

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "What went wrong, for a person"}},
    },
    "LoginRequest": {
        "type": "object",
        "required": ["username", "password"],
        "properties": {"username": {"type": "string"}, "password": {"type": "string", "format": "password"}},
    },
    "Token": {
        "type": "object",
        "required": ["access_token", "token_type", "expires_in"],
        "properties": {
            "access_token": {"type": "string", "description": "JWT (HS256); send as `Authorization: Bearer`"},
            "token_type": {"type": "string", "enum": ["Bearer"]},
            "expires_in": {"type": "integer", "description": "Seconds until the token expires"},
        },
    },
    "Permission": {
        "type": "object",
        "required": ["location", "station"],
        "properties": {
            "location": {"type": "string", "description": "A location, or `*` for any"},
            "station": {"type": "string", "description": "A station, or `*` for any"},
            "read": {"type": "boolean", "default": False},
            "write": {"type": "boolean", "default": False},
        },
    },
    "Account": {
        "type": "object",
        "properties": {
            "username": {"type": "string"},
            "role": {"type": "string", "enum": ["admin", "device"]},
            "enabled": {"type": "boolean"},
            "permissions": {"type": "array", "items": _ref("Permission")},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "AccountWithPassword": {
        "allOf": [
            _ref("Account"),
            {
                "type": "object",
                "properties": {
                    "password": {
                        "type": "string",
                        "format": "password",
                        "description": (
                            f"Only when the server generated the password ({GENERATED_PASSWORD_BYTES} random "
                            "bytes, URL-safe base64): shown in this answer and never again"
                        ),
                    }
                },
            },
        ]
    },
    "AccountCreate": {
        "type": "object",
        "required": ["username"],
        "additionalProperties": False,
        "description": "Without `password`, the server generates one and returns it once.",
        "properties": {
            "username": {"type": "string", "pattern": USERNAME_RE.pattern},
            "password": {
                "type": "string",
                "format": "password",
                "minLength": MIN_PASSWORD_CHARS,
                "maxLength": MAX_PASSWORD_CHARS,
            },
            "generate_password": {"type": "boolean", "default": False},
            "role": {"type": "string", "enum": ["admin", "device"], "default": "device"},
            "enabled": {"type": "boolean", "default": True},
            "permissions": {"type": "array", "items": _ref("Permission"), "default": []},
        },
    },
    "AccountPatch": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "description": (
            "Only the given fields change; `permissions` replaces the whole list. "
            "`generate_password: true` sets a new generated password, returned once."
        ),
        "properties": {
            "password": {
                "type": "string",
                "format": "password",
                "minLength": MIN_PASSWORD_CHARS,
                "maxLength": MAX_PASSWORD_CHARS,
            },
            "generate_password": {"type": "boolean", "default": False},
            "role": {"type": "string", "enum": ["admin", "device"]},
            "enabled": {"type": "boolean"},
            "permissions": {"type": "array", "items": _ref("Permission")},
        },
    },
    "WriteResult": {
        "type": "object",
        "properties": {
            "stored": {"type": "integer", "description": "Points written to InfluxDB"},
            "ignored": {
                "type": "array",
                "description": "Keys that were not stored (not a finite number, or an unusable name)",
                "items": {
                    "type": "object",
                    "properties": {"key": {"type": "string"}, "reason": {"type": "string"}},
                },
            },
        },
    },
    "Series": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "station": {"type": "string"},
            "series": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "metric": {"type": "string"},
                        "values": {
                            "type": "array",
                            "description": "[RFC 3339 time, value] pairs, oldest first",
                            "items": {"type": "array", "items": {}, "minItems": 2, "maxItems": 2},
                        },
                    },
                },
            },
        },
    },
}

_PATHS: dict[str, Any] = {
    "/api/auth/login": {
        "post": {
            "tags": ["auth"],
            "summary": "Log in with username and password; returns a short-lived bearer token",
            "security": [],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("LoginRequest")}}},
            "responses": {
                "200": _json(_ref("Token"), "Logged in"),
                "400": _error("Body is not a JSON object with string username and password"),
                "401": _error("Wrong username or password, or the account is disabled"),
                "429": {
                    **_error("Earlier failed logins block this attempt; it was not checked"),
                    "headers": {
                        "Retry-After": {
                            "description": "Seconds until an attempt is heard again",
                            "schema": {"type": "integer"},
                        }
                    },
                },
            },
        }
    },
    "/api/auth/refresh": {
        "post": {
            "tags": ["auth"],
            "summary": (
                "Exchange a valid token for a new one without the password (no password hash is "
                "computed), up to JWT_REFRESH_MAX_SECONDS after the password login it descends from"
            ),
            "responses": {
                "200": _json(_ref("Token"), "A new token, for the same account"),
                "401": _error(
                    "Missing, invalid, expired or revoked token, the account is disabled or gone, or "
                    "the password login is older than JWT_REFRESH_MAX_SECONDS (log in again)"
                ),
            },
        }
    },
    "/api/auth/me": {
        "get": {
            "tags": ["auth"],
            "summary": "The account the token belongs to",
            "responses": {"200": _json(_ref("Account"), "The account"), **_AUTH_ERRORS},
        }
    },
    "/api/accounts": {
        "get": {
            "tags": ["accounts"],
            "summary": "All accounts (admin only)",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"accounts": {"type": "array", "items": _ref("Account")}},
                    },
                    "The accounts, by username",
                ),
                **_ADMIN_ERRORS,
            },
        },
        "post": {
            "tags": ["accounts"],
            "summary": "Create an account (admin only); in secure MQTT mode a device becomes a broker client",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("AccountCreate")}}},
            "responses": {
                "201": _json(_ref("AccountWithPassword"), "Created; the Location header names it"),
                "400": _error("Invalid field"),
                **_ADMIN_ERRORS,
                "409": _error("The username is taken or reserved, or two permissions name one series"),
                "503": _error("MySQL or the MQTT broker is unavailable; nothing was created"),
            },
        },
    },
    "/api/accounts/{username}": {
        "parameters": [_USERNAME],
        "get": {
            "tags": ["accounts"],
            "summary": "One account (admin only)",
            "responses": {
                "200": _json(_ref("Account"), "The account"),
                **_ADMIN_ERRORS,
                "404": _error("No such account"),
            },
        },
        "patch": {
            "tags": ["accounts"],
            "summary": "Change password, role, enabled state or permissions (admin only)",
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("AccountPatch")}}},
            "responses": {
                "200": _json(_ref("AccountWithPassword"), "The changed account"),
                "400": _error("Invalid or unknown field, or nothing to change"),
                **_ADMIN_ERRORS,
                "404": _error("No such account"),
                "409": _error("Would leave no enabled admin, or the name is reserved"),
                "503": _error("MySQL or the MQTT broker is unavailable; nothing was changed"),
            },
        },
        "delete": {
            "tags": ["accounts"],
            "summary": "Delete an account (admin only); its live MQTT session is disconnected",
            "responses": {
                "204": {"description": "Deleted"},
                **_ADMIN_ERRORS,
                "404": _error("No such account"),
                "409": _error("This is the last enabled admin"),
                "503": _error("MySQL or the MQTT broker is unavailable; nothing was deleted"),
            },
        },
    },
    "/api/data/{location}/{station}": {
        "parameters": _SERIES,
        "post": {
            "tags": ["data"],
            "summary": "Store a device message: the MQTT payload rules over HTTP, all or nothing",
            "description": (
                "The body is what a device would publish to `<location>/<station>`: one flat JSON object "
                "(numbers are stored, other values ignored; optional `timestamp`, ISO 8601 or epoch "
                "seconds/milliseconds), or an array of such objects (a backlog). If any element is "
                "rejected, nothing is stored."
            ),
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "oneOf": [
                                {"type": "object"},
                                {"type": "array", "items": {"type": "object"}},
                            ]
                        }
                    }
                },
            },
            "responses": {
                "200": _json(_ref("WriteResult"), "Stored"),
                "400": _error("Invalid payload or path; nothing was stored"),
                **_AUTH_ERRORS,
                "403": _error("The account may not write this series; nothing was stored"),
                "413": _error("Body larger than MAX_MESSAGE_BYTES"),
                "503": _error("InfluxDB is unavailable; nothing was stored"),
            },
        },
        "get": {
            "tags": ["data"],
            "summary": "Read stored series of a device",
            "parameters": [
                _query_param(
                    "metric", "Only this metric (default: all metrics of the station)", {"type": "string"}
                ),
                _query_param(
                    "start", "Earliest time, ISO 8601 or epoch seconds/milliseconds", {"type": "string"}
                ),
                _query_param(
                    "end", "Latest time, ISO 8601 or epoch seconds/milliseconds", {"type": "string"}
                ),
                _query_param(
                    "limit",
                    "At most this many (newest) points per metric",
                    {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
                ),
            ],
            "responses": {
                "200": _json(_ref("Series"), "The series, one per metric"),
                "400": _error("Invalid path or query parameter"),
                **_AUTH_ERRORS,
                "403": _error("The account may not read this series"),
                "503": _error("InfluxDB is unavailable"),
            },
        },
    },
    "/healthz": {
        "get": {
            "tags": ["operations"],
            "summary": "Health check (internal: not routed by Kong)",
            "security": [],
            "responses": {
                "200": {"description": "MySQL reachable"},
                "503": {"description": "MySQL unreachable"},
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["operations"],
            "summary": "Prometheus metrics (internal: not routed by Kong)",
            "security": [],
            "responses": {"200": {"description": "Prometheus text exposition format"}},
        }
    },
    "/api/openapi.json": {
        "get": {
            "tags": ["operations"],
            "summary": "This description",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3 document", "content": {JSON: {"schema": {}}}}},
        }
    },
}


@cache
def openapi_spec() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "IoT platform auth server",
            "version": "1.0.0",
            "description": (
                "Accounts, tokens and the HTTP data path of the IoT platform. Public only through Kong "
                '(`/api/...` on port 8080). Every error is a JSON object `{"error": "..."}`.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": _PATHS,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": _SCHEMAS,
        },
    }
