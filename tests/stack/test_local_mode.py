"""Local mode end to end: ./run.sh where no Docker engine answers, a reading published with
mosquitto_pub lands in InfluxDB, ./clean.sh leaves no process and no state behind; with
IOT_BIND_ADDRESS=0.0.0.0 only the broker and the API listen beyond loopback, and no secret
is on a command line or in run.sh's output."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.cmdline import command_lines, leaks
from tests.servers import REPO_ROOT, free_port, listening_addresses, port_open, require_binary, wait_for

# The core, plus the accounts database and auth server that auth_server/local.sh adds.
COMPONENTS = ("mosquitto", "influxdb", "adapter", "mariadb", "auth_server")
PORTS = ("IOT_MQTT_PORT", "IOT_INFLUXDB_PORT", "IOT_ADAPTER_METRICS_PORT", "IOT_MYSQL_PORT", "IOT_AUTH_PORT")


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that is gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def local_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Free ports and a private state folder, so this never meets a real local installation;
    DOCKER_HOST points at a socket nobody serves: "no Docker engine answers"."""
    env = {
        **os.environ,
        "IOT_STATE_DIR": str(tmp_path / "state"),
        "IOT_MQTT_PORT": str(free_port()),
        "IOT_INFLUXDB_PORT": str(free_port()),
        "IOT_INFLUXDB_RPC_PORT": str(free_port()),
        "IOT_ADAPTER_METRICS_PORT": str(free_port()),
        "IOT_MYSQL_PORT": str(free_port()),
        "IOT_AUTH_PORT": str(free_port()),
        "DOCKER_HOST": f"unix://{tmp_path}/no-docker-engine.sock",
        "DEBUG_DATA_FLOW": "true",
    }
    yield env
    # Whatever happened, nothing of this test keeps running.
    for pid_file in (tmp_path / "state" / "local" / "pids").glob("*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)


def run(script: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # No terminal on stdin, as in CI: clean.sh cannot ask, and must not delete data then.
    return subprocess.run(
        [str(REPO_ROOT / script), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def pids(state: Path) -> dict[str, int]:
    return {
        name: int((state / "local" / "pids" / f"{name}.pid").read_text().split()[0]) for name in COMPONENTS
    }


def stored(env: dict[str, str], station: str) -> list[list[object]]:
    response = requests.post(
        f"http://127.0.0.1:{env['IOT_INFLUXDB_PORT']}/query",
        data={"db": "IoT_Devices", "q": f'SELECT "value", "location", "station" FROM "{station}.BAT"'},
        timeout=5,
    )
    response.raise_for_status()
    series = response.json()["results"][0].get("series", [])
    return series[0]["values"] if series else []


def test_run_publish_store_clean(local_env: dict[str, str]) -> None:
    state = Path(local_env["IOT_STATE_DIR"])
    started = run("run.sh", local_env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "No Docker engine answers" in started.stdout
    assert "local processes" in started.stdout
    # It tells the user how to publish, on the port it really uses.
    assert f"mosquitto_pub -h 127.0.0.1 -p {local_env['IOT_MQTT_PORT']}" in started.stdout
    running = pids(state)
    assert all(alive(pid) for pid in running.values())

    station = f"stacktest_{uuid.uuid4().hex[:8]}"
    publish = [require_binary("mosquitto_pub"), "-h", "127.0.0.1", "-p", local_env["IOT_MQTT_PORT"]]
    reading = '{"BAT": 99, "TEMP": 21.5, "name": "lab"}'
    subprocess.run([*publish, "-q", "1", "-t", f"UPB/{station}", "-m", reading], check=True, timeout=30)
    wait_for(lambda: bool(stored(local_env, station)), 30, "the published reading in InfluxDB")
    ((_, value, location, tag_station),) = stored(local_env, station)
    assert (value, location, tag_station) == (99, "UPB", station)
    log = (state / "local" / "logs" / "adapter.log").read_text()
    assert f"UPB.{station}.BAT 99" in log

    # Running it again changes nothing: the same processes keep running.
    again = run("run.sh", local_env)
    assert again.returncode == 0, again.stdout + again.stderr
    for name in COMPONENTS:
        assert f"{name} is already running (pid {running[name]})" in again.stdout
    assert pids(state) == running

    cleaned = run("clean.sh", local_env, "-y")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert [pid for pid in running.values() if alive(pid)] == []
    assert not state.exists()
    for port in PORTS:
        assert not port_open(int(local_env[port])), port


def test_clean_keeps_local_data_unless_told_otherwise(local_env: dict[str, str]) -> None:
    state = Path(local_env["IOT_STATE_DIR"])
    # Devices on the network may reach the broker (and the API, which has no Kong here)...
    local_env["IOT_BIND_ADDRESS"] = "0.0.0.0"
    started = run("run.sh", local_env, "--local")
    assert started.returncode == 0, started.stdout + started.stderr
    running = pids(state)
    # ... but InfluxDB (no authentication), its RPC port, the adapter's metrics and MariaDB
    # stay on loopback, whatever IOT_BIND_ADDRESS says.
    listening = {
        port: listening_addresses(int(local_env[port])) for port in (*PORTS, "IOT_INFLUXDB_RPC_PORT")
    }
    assert listening == {
        "IOT_MQTT_PORT": {"0.0.0.0"},
        "IOT_AUTH_PORT": {"0.0.0.0"},
        "IOT_INFLUXDB_PORT": {"127.0.0.1"},
        "IOT_INFLUXDB_RPC_PORT": {"127.0.0.1"},
        "IOT_ADAPTER_METRICS_PORT": {"127.0.0.1"},
        "IOT_MYSQL_PORT": {"127.0.0.1"},
    }
    assert "InfluxDB     http://127.0.0.1:" in started.stdout
    # Where the secrets are, never their values: not in the output, not in any process's
    # arguments (every process runs now: they are long-lived).
    secrets = [path.read_text().strip() for path in (state / "local" / "secrets").iterdir()]
    assert len(secrets) >= 3
    assert leaks([started.stdout, started.stderr, *command_lines().values()], secrets) == []
    assert "secrets/auth_admin_password" in started.stdout
    # Neither -y nor a terminal to ask: the processes stop, the data stays.
    cleaned = run("clean.sh", local_env)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert "keeping it" in cleaned.stdout
    assert [pid for pid in running.values() if alive(pid)] == []
    assert (state / "local" / "influxdb" / "meta").is_dir()
    assert not (state / "local" / "pids").exists()
    # Restarting uses the kept data; then everything goes.
    assert run("run.sh", local_env, "--local").returncode == 0
    assert run("clean.sh", local_env, "--yes").returncode == 0
    assert not state.exists()
