"""`python -m auth_server` as the image runs it (gunicorn), and the files its image holds."""

from __future__ import annotations

import ast
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.auth_server.conftest import ADMIN, AuthServerProcess, clean_environ, new_password
from tests.conftest import _track
from tests.servers import REPO_ROOT, free_port

DOCKERFILE = REPO_ROOT / "auth_server" / "Dockerfile"


@pytest.fixture
def make_server(tmp_path: Path, settings: dict[str, str]) -> Iterator[Callable[..., AuthServerProcess]]:
    started: list[AuthServerProcess] = []

    def make(**extra: str) -> AuthServerProcess:
        process = AuthServerProcess(tmp_path / f"auth_server{len(started)}", {**settings, **extra})
        process.start()
        _track(process)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


@pytest.fixture
def server(make_server: Callable[..., AuthServerProcess]) -> AuthServerProcess:
    return make_server()


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
    # gunicorn hands the raw path on: an encoded slash is refused, not decoded into the login.
    encoded = requests.post(
        f"{url}/api/auth%2Flogin", json={"username": ADMIN, "password": settings["ADMIN_PASSWORD"]}, timeout=5
    )
    assert encoded.status_code == 400
    assert "access_token" not in encoded.text
    generated = requests.post(f"{url}/api/accounts", json={"username": "g-gen"}, headers=admin, timeout=10)
    generated_password = generated.json()["password"]

    server.stop()  # SIGTERM: gunicorn finishes in-flight requests and exits
    assert server.proc is not None and server.proc.returncode == 0
    log = server.log_text()
    assert "Booting worker" in log and "POST /api/auth/login" in log  # gunicorn, with an access log
    # gevent patched the standard library before anything used it (auth_server/__init__.py).
    assert "MonkeyPatchWarning" not in log
    secrets = (settings["ADMIN_PASSWORD"], device_password, generated_password, settings["JWT_SECRET"], token)
    for secret in secrets:
        assert secret not in log
    assert "Bearer" not in log


@pytest.mark.parametrize("mode", ["failures", "all", "off"])
def test_the_access_log_shows_what_auth_access_log_asks(
    make_server: Callable[..., AuthServerProcess], mode: str
) -> None:
    server = make_server(AUTH_ACCESS_LOG=mode)
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{server.url}/api/auth/me", timeout=5).status_code == 401
    server.stop()
    log = server.log_text()
    assert "Booting worker" in log
    ok_line, refused_line = '"GET /healthz HTTP/1.1" 200', '"GET /api/auth/me HTTP/1.1" 401'
    assert (ok_line in log) is (mode == "all")
    assert (refused_line in log) is (mode != "off")


def test_bad_configuration_exits_with_a_clear_message(settings: dict[str, str]) -> None:
    env = {**clean_environ(), **settings, "JWT_SECRET": "too-short", "PYTHONPATH": str(REPO_ROOT)}
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
        **clean_environ(),
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
        # What the interpreter loaded by itself at start (site hooks) is not the server's.
        "import sys; started = set(sys.modules);"
        "import adapter.contract, auth_server, auth_server.__main__, auth_server.data;"
        "assert auth_server.data.parse_message is adapter.contract.parse_message;"
        "import sys; print(auth_server.__file__);"
        # Every installed distribution the server imports, for the check against the pins.
        "import importlib.metadata as m; owners = m.packages_distributions();"
        "new = set(sys.modules) - started;"
        "print(sorted({d for name in new for d in owners.get(name.split('.')[0], [])}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=app_dir,
        env=clean_environ(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    location, imported = result.stdout.strip().splitlines()
    assert location.startswith(str(app_dir))
    # Every pinned requirement the image installs is also what the tests run with.
    pins = (REPO_ROOT / "auth_server" / "requirements.txt").read_text().splitlines()
    pins = [p for p in pins if p and not p.startswith("#")]
    assert pins and all(re.match(r"^[A-Za-z0-9_.-]+==\S+$", p) for p in pins)
    assert "COPY auth_server/requirements.txt" in text
    # ... and everything the server imports is pinned there (the image has nothing else; the
    # test environment has more, e.g. packaging for pytest, which gunicorn's gevent worker needs).
    pinned = {_distribution(p.split("==")[0]) for p in pins}
    assert {_distribution(d) for d in ast.literal_eval(imported)} - pinned == set()


def _distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 normalized


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


# --- Slow clients, without Kong in front (local mode) --------------------------------------


# Ways to hang on the server: each opens a connection and stops part-way through a request.
# The data write carries a device's real token, so the view itself waits for the body.
def slow_starts(device_token: str) -> dict[str, bytes]:
    head = "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    login, write = head.format("/api/auth/login"), head.format("/api/data/UPB/S")
    return {
        "silent": b"",
        "half a request line": b"POST /api/auth/lo",
        "headers without their end": login.encode(),
        "half a login body": f'{login}Content-Length: 1000\r\n\r\n{{"username": "adm'.encode(),
        "half a data write": (
            f'{write}Authorization: Bearer {device_token}\r\nContent-Length: 200000\r\n\r\n[{{"T": 1}},'
        ).encode(),
    }


def _device_token(server: AuthServerProcess, settings: dict[str, str]) -> str:
    admin = requests.post(
        f"{server.url}/api/auth/login",
        json={"username": ADMIN, "password": settings["ADMIN_PASSWORD"]},
        timeout=20,
    ).json()["access_token"]
    perms = [{"location": "UPB", "station": "S", "read": True, "write": True}]
    created = requests.post(
        f"{server.url}/api/accounts",
        json={"username": "slow-dev", "permissions": perms},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=20,
    ).json()
    login = {"username": "slow-dev", "password": created["password"]}
    return requests.post(f"{server.url}/api/auth/login", json=login, timeout=20).json()["access_token"]


def _open_slow_clients(port: int, starts: dict[str, bytes], count: int) -> list[tuple[str, socket.socket]]:
    clients = []
    for i in range(count):
        shape = list(starts)[i % len(starts)]
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(starts[shape])
        sock.settimeout(None)  # blocking again: MSG_DONTWAIT below must not wait
        clients.append((shape, sock))
    return clients


def _still_waiting(sock: socket.socket) -> bool:
    """Open, and nothing sent back yet (no answer, no close)."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    return False


@pytest.mark.parametrize("count", [8, 60, 800])
def test_slow_clients_do_not_hold_up_the_others(
    make_server: Callable[..., AuthServerProcess], settings: dict[str, str], count: int
) -> None:
    """8 half-sent requests once blocked every other request for 91 s (8 threads). Now, with
    `count` of them hanging, other clients are still answered, while the slow ones wait. With
    800, 160 are data writes with a valid token, more than MySQL's 151 connections: a view
    waiting for a body holds none (the health check needs one)."""
    server = make_server(AUTH_CLIENT_TIMEOUT="60")
    slow = _open_slow_clients(server.port, slow_starts(_device_token(server, settings)), count)
    try:
        for _ in range(3):
            # A generous bound per request: a blocked server would not answer at all.
            assert requests.get(f"{server.url}/healthz", timeout=20).status_code == 200
            body = {"username": ADMIN, "password": settings["ADMIN_PASSWORD"]}
            assert requests.post(f"{server.url}/api/auth/login", json=body, timeout=20).status_code == 200
        # They were served while every slow client was still connected and waiting.
        assert [shape for shape, sock in slow if not _still_waiting(sock)] == []
    finally:
        for _, sock in slow:
            sock.close()


def test_slow_clients_are_cut_off_after_the_client_timeout(
    make_server: Callable[..., AuthServerProcess], settings: dict[str, str]
) -> None:
    server = make_server(AUTH_CLIENT_TIMEOUT="2")
    starts = slow_starts(_device_token(server, settings))
    slow = _open_slow_clients(server.port, starts, len(starts))
    answers: dict[str, bytes] = {}
    try:
        for shape, sock in slow:
            sock.settimeout(30)  # far beyond AUTH_CLIENT_TIMEOUT: the server must act first
            data = b""
            while chunk := sock.recv(4096):  # until the server closes the connection
                data += chunk
            answers[shape] = data
    finally:
        for _, sock in slow:
            sock.close()
    # A slow head is dropped quietly; a body that stops coming gets 408 Request Timeout.
    assert {shape: answer.split(b"\r\n", 1)[0] for shape, answer in answers.items()} == {
        "silent": b"",
        "half a request line": b"",
        "headers without their end": b"",
        "half a login body": b"HTTP/1.1 408 REQUEST TIMEOUT",
        "half a data write": b"HTTP/1.1 408 REQUEST TIMEOUT",
    }
    assert requests.get(f"{server.url}/healthz", timeout=20).status_code == 200
