"""The processes of the scraped platform that the shared fixtures do not provide, and what
the tests know about the traffic sent to them."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.servers import (
    REPO_ROOT,
    AdapterProcess,
    AlertmanagerServer,
    BrokerExporterProcess,
    InfluxServer,
    ManagedServer,
    MariaDBServer,
    PrometheusServer,
    free_port,
)


class AuthServerProcess(ManagedServer):
    """The real auth server, run as in its image: `python -m auth_server` (gunicorn)."""

    name = "auth_server"

    def __init__(
        self, workdir: Path, mariadb: MariaDBServer, mysql_database: str, influx: InfluxServer
    ) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_password = secrets.token_urlsafe(18)
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "MYSQL_HOST": "127.0.0.1",
            "MYSQL_PORT": str(mariadb.port),
            "MYSQL_USER": mariadb.user,
            "MYSQL_PASSWORD": mariadb.password,
            "MYSQL_DATABASE": mysql_database,
            "JWT_SECRET": secrets.token_hex(32),
            "ADMIN_USERNAME": "admin",
            "ADMIN_PASSWORD": self.admin_password,
            "INFLUXDB_HOST": "127.0.0.1",
            "INFLUXDB_PORT": str(influx.port),
            "INFLUXDB_DATABASE": "t_prometheus_auth",
            "AUTH_HOST": "127.0.0.1",
            "AUTH_PORT": str(self.port),
            "STARTUP_TIMEOUT": "30",
        }

    def command(self) -> list[str]:
        return [sys.executable, "-m", "auth_server"]

    def start(self, timeout_s: float = 60.0) -> None:
        self.cwd = REPO_ROOT  # `python -m auth_server` from the repository root, as its image runs it
        super().start(timeout_s)

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=0.5).status_code == 200
        except requests.RequestException:
            return False

    def login(self, username: str, password: str) -> int:
        body = {"username": username, "password": password}
        return requests.post(f"{self.url}/api/auth/login", json=body, timeout=10).status_code

    def metrics_text(self) -> str:
        return requests.get(f"{self.url}/metrics", timeout=2).text


@dataclass(frozen=True)
class ScrapedPlatform:
    prometheus: PrometheusServer
    adapter: AdapterProcess
    auth_server: AuthServerProcess
    exporter: BrokerExporterProcess
    alertmanager: AlertmanagerServer
    points: int  # numeric values published, i.e. points the adapter must have stored
    received: int  # every message published, valid or not
    not_numeric: int  # values ignored because they are not numbers
    published_from: float  # Unix time before the first message
    stored_at: float  # Unix time once all traffic was handled (points stored, logins answered)
    failed_logins: int
    down_jobs: frozenset[str]  # jobs whose component cannot run here: their targets stay down
