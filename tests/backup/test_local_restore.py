"""backup.sh and restore.sh end to end in local mode, against the real servers run.sh starts.

Readings go in through the broker and the adapter, and through the auth server's HTTP API;
messages wait in the broker for the stopped adapter's persistent session. Then: backup,
./clean.sh -y (every byte of data gone), a fresh ./run.sh (new secrets), restore: every point,
account and queued message is back.
"""

from __future__ import annotations

import json
import os
import signal
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from backup.manifest import read_manifest
from tests.mqtt_client import Publisher
from tests.servers import wait_for
from tests.stack.test_local_mode import alive, local_env, pids, run

__all__ = ["local_env"]  # the fixture, shared with the local-mode tests

Row = tuple[str, int, str, str, float]


class LocalPlatform:
    """The running local mode of one test: its InfluxDB, auth server, broker and processes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.state = Path(env["IOT_STATE_DIR"]) / "local"
        self.influx_url = f"http://127.0.0.1:{env['IOT_INFLUXDB_PORT']}"
        self.api_url = f"http://127.0.0.1:{env['IOT_AUTH_PORT']}/api"
        self.mqtt_port = int(env["IOT_MQTT_PORT"])

    def rows(self, prefix: str) -> list[Row]:
        """Every stored point of the stations named prefix*: (measurement, ns, location, station, value)."""
        response = requests.post(
            f"{self.influx_url}/query",
            data={"db": "IoT_Devices", "epoch": "ns", "q": f"SELECT * FROM /^{prefix}/"},
            timeout=30,
        )
        response.raise_for_status()
        rows: list[Row] = []
        for result in response.json()["results"]:
            for series in result.get("series", []):
                columns = series["columns"]
                for values in series["values"]:
                    point = dict(zip(columns, values, strict=True))
                    rows.append(
                        (series["name"], point["time"], point["location"], point["station"], point["value"])
                    )
        return sorted(rows)

    def secret(self, name: str) -> str:
        return (self.state / "secrets" / name).read_text().strip()

    def login(self, username: str, password: str) -> str | None:
        response = requests.post(
            f"{self.api_url}/auth/login", json={"username": username, "password": password}, timeout=10
        )
        return response.json()["access_token"] if response.status_code == 200 else None

    def call(self, method: str, path: str, token: str, body: Any = None) -> requests.Response:
        return requests.request(
            method,
            f"{self.api_url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    def stop(self, component: str) -> None:
        """Stops one of run.sh's processes as clean.sh does (TERM to its process group)."""
        pid = pids_of(self.state)[component]
        os.killpg(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), 30, f"{component} to stop")


def pids_of(state: Path) -> dict[str, int]:
    return pids(state.parent)


def readings(prefix: str, stations: int, per_station: int, start: datetime) -> list[tuple[str, str]]:
    """Messages as devices send them: ISO timestamps with an offset and microseconds, epoch
    seconds, a backlog array, three numeric fields and a string that is not stored."""
    messages = []
    for s in range(stations):
        topic = f"{'UPB' if s % 2 else 'Lab-2'}/{prefix}{s}"
        for i in range(per_station):
            at = start + timedelta(seconds=i, microseconds=17 * s)
            fields = {"BAT": 100 - i % 100, "TEMP": 20 + i / 7, "HUMID": float(s), "status": "ok"}
            if i % 3 == 0:
                payload: Any = {**fields, "timestamp": at.astimezone().isoformat()}
            elif i % 3 == 1:
                payload = {**fields, "timestamp": at.timestamp()}
            else:  # a backlog array of one element
                payload = [{**fields, "timestamp": at.isoformat().replace("+00:00", "Z")}]
            messages.append((topic, json.dumps(payload)))
    return messages


def publish(platform: LocalPlatform, messages: list[tuple[str, str]]) -> None:
    publisher = Publisher(platform.mqtt_port)
    try:
        publisher.publish_all(messages)
        publisher.wait(60)
    finally:
        publisher.close()


def archive_members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return [member.name.split("/", 1)[1] for member in tar.getmembers() if "/" in member.name]


def backup(env: dict[str, str], out: Path, *args: str) -> Path:
    before = set(out.glob("*.tar")) if out.exists() else set()
    done = run("backup.sh", env, *args, str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    (archive,) = set(out.glob("*.tar")) - before
    assert archive.stat().st_mode & 0o777 == 0o600
    return archive


@pytest.fixture
def platform(local_env: dict[str, str]) -> Iterator[LocalPlatform]:
    started = run("run.sh", local_env)
    assert started.returncode == 0, started.stdout + started.stderr
    yield LocalPlatform(local_env)
    run("clean.sh", local_env, "-y")


class Ingestion(threading.Thread):
    """Publishes readings of its own stations without pause until stopped: ingestion that a
    backup must not interrupt."""

    def __init__(self, platform: LocalPlatform, prefix: str) -> None:
        super().__init__(daemon=True)
        self.platform, self.prefix = platform, prefix
        self.sent = 0
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        start = datetime(2026, 3, 1, tzinfo=UTC)
        try:
            publisher = Publisher(self.platform.mqtt_port)
            try:
                while not self.halt.is_set():
                    payload = {
                        "BAT": self.sent % 100,
                        "timestamp": (start + timedelta(seconds=self.sent)).isoformat(),
                    }
                    publisher.publish(f"UPB/{self.prefix}", json.dumps(payload))
                    self.sent += 1
                    time.sleep(0.005)
                publisher.wait(60)
            finally:
                publisher.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


def test_backup_clean_run_restore_brings_back_points_accounts_and_queue(
    platform: LocalPlatform, local_env: dict[str, str], tmp_path: Path
) -> None:
    prefix = f"bk{uuid.uuid4().hex[:6]}_"
    start = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    through_mqtt = readings(prefix, stations=4, per_station=150, start=start)
    publish(platform, through_mqtt)
    wait_for(lambda: len(platform.rows(prefix)) == 4 * 150 * 3, 60, "the readings in InfluxDB")

    # An account with rights, and a reading written with it over HTTP.
    admin_password = platform.secret("auth_admin_password")
    admin = platform.login("admin", admin_password)
    assert admin is not None
    device = {"username": f"{prefix}device", "password": uuid.uuid4().hex, "role": "device"}
    rights = [{"location": "UPB", "station": f"{prefix}http", "read": True, "write": True}]
    created = platform.call("POST", "/accounts", admin, {**device, "permissions": rights})
    assert created.status_code == 201, created.text
    token = platform.login(device["username"], device["password"])
    assert token is not None
    written = platform.call(
        "POST", f"/data/UPB/{prefix}http", token, {"BAT": 42.5, "timestamp": "2026-01-05T06:07:08.5+02:00"}
    )
    assert written.status_code in (200, 201, 204), written.text

    # A state file only its owner may read holds a secret (as the rendered Alertmanager
    # configuration does): never in state/, not even --with-secrets.
    private = platform.state / "rendered-with-a-password.yml"
    private.write_text("password: x\n")
    private.chmod(0o600)

    # A backup while readings keep coming: nothing stops, nothing is lost.
    running = pids_of(platform.state)
    ingestion = Ingestion(platform, f"{prefix}live")
    ingestion.start()
    wait_for(lambda: ingestion.sent > 50, 30, "ingestion under way")
    online = backup(local_env, tmp_path / "backups", "--with-secrets")
    ingestion.halt.set()
    ingestion.join(90)
    assert ingestion.error is None and ingestion.sent > 50
    wait_for(lambda: len(platform.rows(f"{prefix}live")) == ingestion.sent, 60, "every live reading stored")
    assert pids_of(platform.state) == running
    members = archive_members(online)
    assert {"MANIFEST", "SHA256SUMS", "mysql/iot_accounts.sql.gz", "mosquitto/mosquitto.db"} <= set(members)
    assert "secrets/auth_admin_password" in members
    assert "state/settings.env" in members and "state/rendered-with-a-password.yml" not in members
    assert read_manifest(online)["state.left_out"].startswith("rendered-with-a-password.yml ")

    # The adapter goes away; its persistent session collects what devices publish meanwhile.
    platform.stop("adapter")
    queued = readings(f"{prefix}q", stations=2, per_station=40, start=start + timedelta(days=1))
    publish(platform, queued)
    assert platform.rows(f"{prefix}q") == []
    archive = backup(local_env, tmp_path / "backups")
    expected = platform.rows(prefix)
    assert len(expected) == 4 * 150 * 3 + 1 + ingestion.sent
    manifest = read_manifest(archive)
    assert manifest["mode"] == "local" and manifest["components"] == "mosquitto influxdb mysql"
    assert manifest["secrets"].startswith("not included")
    assert all(int(manifest[f"{c}.bytes"]) > 0 for c in ("influxdb", "mysql", "mosquitto"))
    assert not any(m.startswith("secrets") for m in archive_members(archive))

    # Everything gone, then a new installation: new secrets, no data, no account.
    cleaned = run("clean.sh", local_env, "-y")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert not platform.state.exists()
    fresh = run("run.sh", local_env)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert platform.rows(prefix) == []
    assert platform.login(device["username"], device["password"]) is None
    assert platform.secret("auth_admin_password") != admin_password

    # Without a terminal to ask, and without -y, nothing happens.
    refused = run("restore.sh", local_env, str(archive))
    assert refused.returncode != 0 and "no terminal to ask" in refused.stderr
    assert platform.rows(prefix) == []

    restored = run("restore.sh", local_env, "-y", str(archive))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    # The queued messages reach the restored database through the adapter run.sh restarted.
    delivered = 2 * 40 * 3
    wait_for(lambda: len(platform.rows(prefix)) == len(expected) + delivered, 60, "the queued readings")
    rows = platform.rows(prefix)
    assert [r for r in rows if not r[0].startswith(f"{prefix}q")] == expected
    assert len([r for r in rows if r[0].startswith(f"{prefix}q")]) == delivered

    # The accounts as they were, passwords included; the new installation's admin password is not theirs.
    token = platform.login(device["username"], device["password"])
    assert token is not None
    read = platform.call("GET", f"/data/UPB/{prefix}http", token)
    assert read.status_code == 200
    assert [v[1] for s in read.json()["series"] for v in s["values"]] == [42.5]
    assert platform.login("admin", admin_password) is not None
    assert platform.login("admin", platform.secret("auth_admin_password")) is None

    # Running it again is safe: the same data, no duplicate.
    again = run("restore.sh", local_env, "--yes", str(archive))
    assert again.returncode == 0, again.stdout + again.stderr
    wait_for(lambda: len(platform.rows(prefix)) == len(expected) + delivered, 60, "the same rows again")


def test_secrets_of_an_archive_set_up_a_new_installation(
    platform: LocalPlatform, local_env: dict[str, str], tmp_path: Path
) -> None:
    admin_password = platform.secret("auth_admin_password")
    archive = backup(local_env, tmp_path / "backups", "--with-secrets")
    assert read_manifest(archive)["secrets"].startswith("included: ")

    # A running installation's secrets are in use: --secrets never replaces them.
    state_secret = platform.state / "secrets" / "jwt_secret"
    state_secret.write_text("another value\n")
    refused = run("restore.sh", local_env, "--secrets", str(archive))
    assert refused.returncode != 0 and "jwt_secret" in refused.stderr
    assert state_secret.read_text() == "another value\n"

    assert run("clean.sh", local_env, "-y").returncode == 0
    put = run("restore.sh", local_env, "--secrets", str(archive))
    assert put.returncode == 0, put.stdout + put.stderr
    assert platform.secret("auth_admin_password") == admin_password
    assert (platform.state / "secrets").stat().st_mode & 0o777 == 0o700
    started = run("run.sh", local_env)
    assert started.returncode == 0, started.stdout + started.stderr
    restored = run("restore.sh", local_env, "-y", str(archive))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    # The admin's secret and its account agree again.
    assert platform.login("admin", admin_password) is not None
    assert "secrets/ has those of the admin accounts" in restored.stdout


def test_backup_refuses_when_local_mode_does_not_run(local_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "backups"
    done = run("backup.sh", local_env, str(out))
    assert done.returncode != 0
    assert "local mode has not run here" in done.stderr
    assert list(out.iterdir()) == []
