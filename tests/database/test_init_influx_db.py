"""database/init_influx_db.sh against a real influxd: IoT_Devices with an INF retention, idempotent."""

from __future__ import annotations

import os
import subprocess

from tests.servers import REPO_ROOT, InfluxServer, require_binary

SCRIPT = REPO_ROOT / "database" / "init_influx_db.sh"


def run_script(
    influx: InfluxServer, database: str, *, sourced: bool = False
) -> subprocess.CompletedProcess[str]:
    require_binary("curl")  # what the script talks to InfluxDB with
    env = {**os.environ, "INFLUXDB_DATABASE": database}
    if sourced:
        # As the influxdb image runs it: sourced by its entrypoint, with the port it uses.
        env["INFLUXDB_INIT_PORT"] = str(influx.port)
        command = ["bash", "-c", f'set -e; . "{SCRIPT}"; echo "entrypoint still running"']
    else:
        env["INFLUX_PORT"] = str(influx.port)
        command = [str(SCRIPT)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def retention_policies(influx: InfluxServer, database: str) -> list[list[object]]:
    quoted = database.replace('"', '\\"')
    return influx.series(f'SHOW RETENTION POLICIES ON "{quoted}"', database)[0]["values"]


def databases(influx: InfluxServer) -> list[str]:
    return [row[0] for row in influx.series("SHOW DATABASES", "_internal")[0].get("values", [])]


def test_creates_the_database_with_infinite_retention(influx: InfluxServer, database: str) -> None:
    assert database not in databases(influx)
    first = run_script(influx, database)
    assert first.returncode == 0, first.stderr
    assert f"created database {database}" in first.stdout
    # name, duration, shard group duration, replicas, default: "0s" is InfluxDB's INF.
    assert retention_policies(influx, database) == [["autogen", "0s", "168h0m0s", 1, True]]


def test_running_twice_changes_nothing(influx: InfluxServer, database: str) -> None:
    assert run_script(influx, database).returncode == 0
    assert influx.write(database, "m,location=L,station=S value=1 1").status_code == 204
    before = (databases(influx), retention_policies(influx, database), influx.count_points(database))
    second = run_script(influx, database)
    assert second.returncode == 0, second.stderr
    assert f"database {database} exists" in second.stdout
    assert (databases(influx), retention_policies(influx, database), influx.count_points(database)) == before


def test_puts_back_infinite_retention_on_an_existing_database(influx: InfluxServer, database: str) -> None:
    influx.query(f'CREATE DATABASE "{database}" WITH DURATION 1h')
    assert retention_policies(influx, database)[0][1] == "1h0m0s"
    assert run_script(influx, database).returncode == 0
    assert retention_policies(influx, database)[0][1] == "0s"


def test_works_when_sourced_by_the_image_entrypoint(influx: InfluxServer, database: str) -> None:
    result = run_script(influx, database + '_with "quotes"', sourced=True)
    assert result.returncode == 0, result.stderr
    # Its `set -euo pipefail` and any failure stay in its subshell: the entrypoint goes on.
    assert "entrypoint still running" in result.stdout
    assert database + '_with "quotes"' in databases(influx)


def test_help_and_bad_arguments() -> None:
    shown = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0 and "IoT_Devices" in shown.stdout
    wrong = subprocess.run([str(SCRIPT), "--bogus"], capture_output=True, text=True, check=False)
    assert wrong.returncode == 2 and "usage" in wrong.stderr
