"""Fixtures of the auth server tests: the app on a real MariaDB (its own database per test) and
a real InfluxDB (its own database per test), and an `api` helper that logs in and calls it."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

import pymysql
import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import TestResponse

from auth_server import create_app

# AuthServerProcess and clean_environ live beside the other servers (benchmarks start them too).
from tests.servers import AuthServerProcess, InfluxServer, MariaDBServer, clean_environ

__all__ = ["AuthServerProcess", "clean_environ"]

ADMIN = "admin"


def new_password() -> str:
    return secrets.token_urlsafe(18)


@pytest.fixture
def mysql_database(mariadb: MariaDBServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A MySQL database of this test alone (names are at most 64 characters)."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    name = f"auth_{re.sub(r'[^A-Za-z0-9_]', '_', request.node.name)[:40]}_{digest}"
    mariadb.create_database(name)
    yield name
    mariadb.drop_database(name)


class Sql:
    """Statements straight to a test database, as an operator (or an older version) would."""

    def __init__(self, mariadb: MariaDBServer, database: str) -> None:
        self.conn = pymysql.connect(
            host="127.0.0.1",
            port=mariadb.port,
            user=mariadb.user,
            password=mariadb.password,
            database=database,
            cursorclass=pymysql.cursors.DictCursor,
            autocommit=True,
        )

    def __call__(self, statement: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.conn.cursor() as cur:
            cur.execute(statement, args)
            return list(cur.fetchall())

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def sql(mariadb: MariaDBServer, mysql_database: str) -> Iterator[Sql]:
    """The test's own accounts database."""
    connection = Sql(mariadb, mysql_database)
    yield connection
    connection.close()


@pytest.fixture
def settings(
    mariadb: MariaDBServer, mysql_database: str, influx: InfluxServer, database: str
) -> dict[str, str]:
    """The auth server's environment for this test (same variable names as in the stack)."""
    return {
        "MYSQL_HOST": "127.0.0.1",
        "MYSQL_PORT": str(mariadb.port),
        "MYSQL_USER": mariadb.user,
        "MYSQL_PASSWORD": mariadb.password,
        "MYSQL_DATABASE": mysql_database,
        "JWT_SECRET": secrets.token_hex(32),
        "ADMIN_USERNAME": ADMIN,
        "ADMIN_PASSWORD": new_password(),
        "INFLUXDB_HOST": "127.0.0.1",
        "INFLUXDB_PORT": str(influx.port),
        "INFLUXDB_DATABASE": database,
        "STARTUP_TIMEOUT": "20",
    }


@pytest.fixture
def app(settings: dict[str, str]) -> Flask:
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Api:
    """Calls the API like a client would: log in, keep tokens, send JSON."""

    def __init__(self, client: FlaskClient, settings: Mapping[str, str]) -> None:
        self.client = client
        self.settings = settings
        self._admin_token: str | None = None
        # Every response, so tests can check none of them carries a secret.
        self.responses: list[TestResponse] = []

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        json: Any = None,
        data: bytes | str | None = None,
        **kwargs: Any,
    ) -> TestResponse:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if json is not None:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
        response = self.client.open(path, method=method, headers=headers, **kwargs)
        self.responses.append(response)
        return response

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the app's /metrics, 0 when absent: metric("auth_logins_total", result="success")."""
        text = self.client.get("/metrics").get_data(as_text=True)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def login(self, username: str, password: str) -> TestResponse:
        return self.call("POST", "/api/auth/login", json={"username": username, "password": password})

    def token(self, username: str, password: str) -> str:
        response = self.login(username, password)
        assert response.status_code == 200, response.get_json()
        return response.get_json()["access_token"]

    @property
    def admin_token(self) -> str:
        if self._admin_token is None:
            self._admin_token = self.token(self.settings["ADMIN_USERNAME"], self.settings["ADMIN_PASSWORD"])
        return self._admin_token

    def create_account(
        self,
        username: str,
        password: str,
        role: str = "device",
        permissions: list[dict[str, Any]] | None = None,
        **fields: Any,
    ) -> TestResponse:
        body = {"username": username, "password": password, "role": role, **fields}
        if permissions is not None:
            body["permissions"] = permissions
        return self.call("POST", "/api/accounts", token=self.admin_token, json=body)

    def device(self, username: str, *permissions: tuple[str, str, bool, bool]) -> tuple[str, str]:
        """Create a device with (location, station, read, write) rights; (password, token)."""
        password = new_password()
        perms = [{"location": loc, "station": st, "read": r, "write": w} for loc, st, r, w in permissions]
        response = self.create_account(username, password, permissions=perms)
        assert response.status_code == 201, response.get_json()
        return password, self.token(username, password)


@pytest.fixture
def api(client: FlaskClient, settings: dict[str, str]) -> Api:
    return Api(client, settings)
