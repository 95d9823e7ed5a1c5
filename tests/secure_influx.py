"""The secure profile's InfluxDB for tests: a real influxd with authentication on, and its
users made by database/init_influx_db.sh (an admin, writers for the adapter and the auth
server, a read-only user for Grafana) with their passwords in files, as in the stack."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import requests

from tests.cmdline import CommandLineRecorder
from tests.servers import REPO_ROOT, InfluxServer

SCRIPT = REPO_ROOT / "database" / "init_influx_db.sh"
DATABASE = "IoT_Devices"
# The secure profile's InfluxDB setting (stack.secure.yml): a user with only READ may create
# a continuous query writing into the same database (InfluxQL asks no more of it), and
# InfluxDB would run it; without the service, nothing runs it.
NO_CONTINUOUS_QUERIES = "[continuous_queries]\n  enabled = false\n"
# INFLUX_USERS of the stack: name -> the right it gets on IoT_Devices.
USERS = {"adapter": "ALL", "auth_server": "ALL", "grafana": "READ"}
# What the stack's rights show as in SHOW GRANTS.
SHOWN_AS = {"READ": "READ", "WRITE": "WRITE", "ALL": "ALL PRIVILEGES"}

# Who sends a request: a user of Accounts by name, explicit (name, password), or None.
User = str | tuple[str, str] | None


class Accounts:
    """Password files for the admin and the INFLUX_USERS of the stack, and the script's env."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "secrets"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.passwords = {name: uuid.uuid4().hex for name in ("admin", *USERS)}
        for name, password in self.passwords.items():
            # As a Docker secret created by hand often is: with a final newline.
            (self.dir / name).write_text(password + "\n")

    def file(self, name: str) -> Path:
        return self.dir / name

    def rotate(self, name: str) -> None:
        self.passwords[name] = uuid.uuid4().hex
        self.file(name).write_text(self.passwords[name])

    def env(self, port: int | None = None, **extra: str) -> dict[str, str]:
        """The script's environment, as the stack's InfluxDB service has it."""
        env = {
            **os.environ,
            "INFLUXDB_HTTP_AUTH_ENABLED": "true",
            "INFLUX_ADMIN_USER": "admin",
            "INFLUX_ADMIN_PASSWORD_FILE": str(self.file("admin")),
            "INFLUX_USERS": " ".join(f"{name}:{right}:{self.file(name)}" for name, right in USERS.items()),
            **extra,
        }
        if port is not None:
            env["INFLUX_PORT"] = str(port)
        return env

    def auth(self, name: str) -> tuple[str, str]:
        return name, self.passwords[name]


def run_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


class SecureInflux:
    """An InfluxDB with authentication, and the accounts its users were made with."""

    def __init__(self, server: InfluxServer, accounts: Accounts, recorder: CommandLineRecorder) -> None:
        self.server = server
        self.accounts = accounts
        # Every curl the set-up started, with its command line.
        self.recorder = recorder

    def stop(self) -> None:
        self.server.stop()

    def _auth(self, user: User) -> tuple[str, str] | None:
        return self.accounts.auth(user) if isinstance(user, str) else user

    def query(self, q: str, user: User = "admin", method: str = "POST") -> requests.Response:
        """An InfluxQL query as `user` (None: without credentials)."""
        params = {"db": DATABASE, "q": q}
        return requests.request(
            method,
            f"{self.server.url}/query",
            params=params if method == "GET" else None,
            data=params if method != "GET" else None,
            auth=self._auth(user),
            timeout=30,
        )

    def rows(self, q: str) -> list[list[Any]]:
        """The first series' rows of an admin query ([] when there is none)."""
        series = self.query(q).json()["results"][0].get("series", [])
        return series[0].get("values", []) if series else []

    def write(self, lines: str, user: User) -> requests.Response:
        """Line protocol (seconds) as `user`."""
        return requests.post(
            f"{self.server.url}/write",
            params={"db": DATABASE, "precision": "s"},
            data=lines,
            auth=self._auth(user),
            timeout=30,
        )

    def points(self, measurement: str = "RPi_1.BAT") -> list[list[Any]]:
        return self.rows(f'SELECT "value" FROM "{measurement}"')

    def users(self) -> dict[str, bool]:
        """{user: admin?}"""
        return {name: admin for name, admin in self.rows("SHOW USERS")}

    def grants(self, user: str) -> list[list[str]]:
        """[database, privilege] of every database the user has a right on."""
        return [row for row in self.rows(f'SHOW GRANTS FOR "{user}"') if row[1] != "NO PRIVILEGES"]


def start_secure_influx(workdir: Path) -> SecureInflux:
    """A started influxd with authentication on and no continuous queries (the secure
    profile's settings), set up by the script; one reading (RPi_1.BAT = 99) stored."""
    server = InfluxServer(workdir / "influxd", auth_enabled=True, extra_config=NO_CONTINUOUS_QUERIES)
    server.start()
    accounts = Accounts(workdir)
    recorder = CommandLineRecorder(workdir / "recorded", ["curl"])
    result = run_script(recorder.env(accounts.env(server.port)))
    secure = SecureInflux(server, accounts, recorder)
    if result.returncode != 0:
        server.stop()
        raise AssertionError(f"database/init_influx_db.sh failed: {result.stderr}")
    reading = "RPi_1.BAT,location=UPB,station=RPi_1 value=99 1700000000"
    assert secure.write(reading, "adapter").status_code == 204
    return secure
