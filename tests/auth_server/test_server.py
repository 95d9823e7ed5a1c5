"""`python -m auth_server` as the image runs it (gunicorn), and the files its image holds."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.auth_server.conftest import ADMIN, new_password
from tests.conftest import _track
from tests.servers import REPO_ROOT, ManagedServer, free_port

DOCKERFILE = REPO_ROOT / "auth_server" / "Dockerfile"


def _clean_environ() -> dict[str, str]:
    """This process's environment without anything the auth server reads."""
    ours = re.compile(r"^(MYSQL_|JWT_|ADMIN_|INFLUXDB_|AUTH_|MQTT_|ADAPTER_MQTT_|PYTHONPATH$)")
    return {k: v for k, v in os.environ.items() if not ours.match(k)}


class AuthServerProcess(ManagedServer):
    """The auth server as a process: `python -m auth_server`, i.e. gunicorn."""

    name = "auth_server"

    def __init__(self, workdir: Path, settings: dict[str, str]) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **_clean_environ(),
            **settings,
            "AUTH_HOST": "127.0.0.1",
            "AUTH_PORT": str(self.port),
            "AUTH_THREADS": "4",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
        }

    def command(self) -> list[str]:
        return [sys.executable, "-m", "auth_server"]

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False


@pytest.fixture
def server(tmp_path: Path, settings: dict[str, str]) -> Iterator[AuthServerProcess]:
    process = AuthServerProcess(tmp_path / "auth_server", settings)
    process.start()
    _track(process)
    yield process
    process.stop()


def test_gunicorn_serves_the_api_and_logs_no_secret(
    server: AuthServerProcess, settings: dict[str, str]
) -> None:
    url = server.url
    bad = requests.post(
        f"{url}/api/auth/login", json={"username": ADMIN, "password": "wrong-password"}, timeout=5
    )
    assert bad.status_code == 401
    login = requests.post(
        f"{url}/api/auth/login", json={"username": ADMIN, "password": settings["ADMIN_PASSWORD"]}, timeout=5
    )
    assert login.status_code == 200
    admin = {"Authorization": f"Bearer {login.json()['access_token']}"}
    device_password = new_password()
    created = requests.post(
        f"{url}/api/accounts",
        json={
            "username": "g-dev",
            "password": device_password,
            "permissions": [{"location": "UPB", "station": "G", "read": True, "write": True}],
        },
        headers=admin,
        timeout=10,
    )
    assert created.status_code == 201
    token = requests.post(
        f"{url}/api/auth/login", json={"username": "g-dev", "password": device_password}, timeout=5
    ).json()["access_token"]
    device = {"Authorization": f"Bearer {token}"}
    written = requests.post(f"{url}/api/data/UPB/G", json={"T": 21.5}, headers=device, timeout=10)
    assert written.json() == {"stored": 1, "ignored": []}
    read = requests.get(f"{url}/api/data/UPB/G", headers=device, timeout=10).json()
    assert [s["metric"] for s in read["series"]] == ["T"]
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    assert 'auth_logins_total{result="failure"} 1.0' in metrics
    assert "auth_points_written_total 1.0" in metrics

    server.stop()  # SIGTERM: gunicorn finishes in-flight requests and exits
    assert server.proc is not None and server.proc.returncode == 0
    log = server.log_text()
    assert "Booting worker" in log and "POST /api/auth/login" in log  # gunicorn, with an access log
    for secret in (settings["ADMIN_PASSWORD"], device_password, settings["JWT_SECRET"], token):
        assert secret not in log
    assert "Bearer" not in log


def test_bad_configuration_exits_with_a_clear_message(settings: dict[str, str]) -> None:
    env = {**_clean_environ(), **settings, "JWT_SECRET": "too-short", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "auth_server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "JWT_SECRET must be at least 32 bytes" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_unreachable_mysql_stops_the_start(settings: dict[str, str]) -> None:
    env = {
        **_clean_environ(),
        **settings,
        "MYSQL_PORT": str(free_port()),
        "STARTUP_TIMEOUT": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-m", "auth_server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "not reachable within 1s" in result.stdout + result.stderr


def test_the_image_files_are_enough_to_run(tmp_path: Path) -> None:
    """Copy exactly what the Dockerfile copies into /app, then import and build the app there."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert re.search(r"^USER (?!root)\w+$", text, re.M)
    assert 'CMD ["python", "-m", "auth_server"]' in text
    assert re.search(r"^WORKDIR /app$", text, re.M)
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    copies = re.findall(r"^COPY (.+)$", text, re.M)
    assert copies
    for line in copies:
        *sources, target = line.split()
        for source in sources:
            src, dest = REPO_ROOT / source, app_dir / target
            if src.is_dir():
                shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            elif target.endswith("/"):  # into a directory, as Docker does
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dest / src.name)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dest)
    # The adapter's contract is in the image, the rest of the adapter is not.
    assert (app_dir / "adapter" / "contract.py").is_file()
    assert not (app_dir / "adapter" / "adapter.py").exists()
    probe = (
        "import adapter.contract, auth_server, auth_server.__main__, auth_server.data;"
        "assert auth_server.data.parse_message is adapter.contract.parse_message;"
        "import sys; print(auth_server.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=app_dir,
        env=_clean_environ(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(app_dir))
    # Every pinned requirement the image installs is also what the tests run with.
    pins = (REPO_ROOT / "auth_server" / "requirements.txt").read_text().splitlines()
    pins = [p for p in pins if p and not p.startswith("#")]
    assert pins and all(re.match(r"^[A-Za-z0-9_.-]+==\S+$", p) for p in pins)
    assert "COPY auth_server/requirements.txt" in text


def test_sigterm_leaves_no_worker_behind(server: AuthServerProcess) -> None:
    assert server.proc is not None
    children = subprocess.run(
        ["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert children, "gunicorn runs its worker as a child process"
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    for pid in children:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )
