"""The secure profile's InfluxDB, against a real influxd with authentication on: the users
database/init_influx_db.sh creates (an admin, writers for the adapter and the auth server, a
read-only user for Grafana), what each may do, and its `--serve` entry point."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cmdline import CommandLineRecorder, command_lines, leaks
from tests.secure_influx import (
    DATABASE,
    NO_CONTINUOUS_QUERIES,
    SCRIPT,
    SHOWN_AS,
    USERS,
    Accounts,
    SecureInflux,
    run_script,
    start_secure_influx,
)
from tests.servers import InfluxServer, ServerError, free_port, port_open, wait_for

STORED = [["2023-11-14T22:13:20Z", 99]]  # the reading start_secure_influx stores
READING = "RPi_1.BAT,location=UPB,station=RPi_1 value=0 1700000000"  # another value, same point


@pytest.fixture
def own(tmp_path: Path) -> Iterator[SecureInflux]:
    """A set-up server of this test alone, for tests that change users or rights."""
    server = start_secure_influx(tmp_path)
    yield server
    server.stop()


def test_creates_the_admin_and_each_user_with_exactly_its_right(secure_influx: SecureInflux) -> None:
    assert secure_influx.users() == {"admin": True, "adapter": False, "auth_server": False, "grafana": False}
    for name, right in USERS.items():
        assert secure_influx.grants(name) == [[DATABASE, SHOWN_AS[right]]], name
    # Every statement went to curl on its standard input; no password on any command line.
    assert len(secure_influx.recorder.runs_of("curl")) >= 10
    assert leaks(secure_influx.recorder.lines(), secure_influx.accounts.passwords.values()) == []


# What a Grafana login could send through the data source: each refused by InfluxDB itself.
REFUSED_FOR_THE_READER = [
    'DROP DATABASE "IoT_Devices"',
    'DROP MEASUREMENT "RPi_1.BAT"',
    'DROP SERIES FROM "RPi_1.BAT"',
    'DELETE FROM "RPi_1.BAT"',
    'DELETE FROM "RPi_1.BAT" WHERE time < now()',
    "DROP SHARD 1",
    'DROP RETENTION POLICY "autogen" ON "IoT_Devices"',
    'ALTER RETENTION POLICY "autogen" ON "IoT_Devices" DURATION 1h DEFAULT',
    'CREATE RETENTION POLICY "short" ON "IoT_Devices" DURATION 1h REPLICATION 1 DEFAULT',
    'SELECT * INTO "copy" FROM "RPi_1.BAT"',
    'SELECT * INTO "IoT_Devices"."autogen"."RPi_1.BAT" FROM "RPi_1.BAT"',
    'CREATE DATABASE "other"',
    "CREATE USER \"intruder\" WITH PASSWORD 'intruder-password' WITH ALL PRIVILEGES",
    'GRANT ALL ON "IoT_Devices" TO "grafana"',
    'GRANT ALL PRIVILEGES TO "grafana"',
    "SET PASSWORD FOR \"admin\" = 'taken-over'",
    'REVOKE ALL ON "IoT_Devices" FROM "adapter"',
    'DROP USER "adapter"',
    "KILL QUERY 1",
]


@pytest.mark.parametrize("statement", REFUSED_FOR_THE_READER)
@pytest.mark.parametrize("method", ["GET", "POST"])  # InfluxDB 1.x runs a DROP even over GET
def test_the_read_only_user_cannot_change_or_drop_anything(
    secure_influx: SecureInflux, statement: str, method: str
) -> None:
    response = secure_influx.query(statement, "grafana", method)
    assert response.status_code == 403, response.text
    assert "not authorized" in response.json()["error"]
    assert secure_influx.points() == STORED
    assert set(secure_influx.users()) == {"admin", *USERS}


def test_the_read_only_user_reads_and_writes_nothing(secure_influx: SecureInflux) -> None:
    answer = secure_influx.query('SELECT "value" FROM "RPi_1.BAT" WHERE "location" = \'UPB\'', "grafana")
    assert answer.status_code == 200
    assert answer.json()["results"][0]["series"][0]["values"] == STORED
    measurements = secure_influx.query("SHOW MEASUREMENTS", "grafana").json()["results"][0]["series"][0]
    assert ["RPi_1.BAT"] in measurements["values"]
    assert secure_influx.write(READING, "grafana").status_code == 403
    assert secure_influx.points() == STORED


@pytest.mark.parametrize(
    ("user", "message"),
    [
        (None, "unable to parse authentication credentials"),
        (("adapter", "not-the-password"), "authorization failed"),
        (("nobody", "whatever-password"), "authorization failed"),
    ],
    ids=["no credentials", "wrong password", "unknown user"],
)
def test_writes_and_queries_need_valid_credentials(
    secure_influx: SecureInflux, user: tuple[str, str] | None, message: str
) -> None:
    refused = [
        secure_influx.write(READING, user),
        secure_influx.query('DROP DATABASE "IoT_Devices"', user),
        secure_influx.query('SELECT * FROM "RPi_1.BAT"', user),
    ]
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert all(message in r.json()["error"] for r in refused)
    assert secure_influx.points() == STORED


def test_writers_write_and_only_the_admin_drops(secure_influx: SecureInflux) -> None:
    line = "RPi_2.BAT,location=UPB,station=RPi_2 value=50 1700000001"
    for writer in ("adapter", "auth_server"):
        assert secure_influx.write(line, writer).status_code == 204, writer
        assert secure_influx.query('DROP DATABASE "IoT_Devices"', writer).status_code == 403, writer
    # Both read: the auth server what its data API serves, and both the series they keep
    # within the series budget (SHOW SERIES); neither may change the database itself.
    for writer in ("adapter", "auth_server"):
        assert secure_influx.query('SELECT * FROM "RPi_2.BAT"', writer).status_code == 200, writer
        assert secure_influx.query("SHOW SERIES", writer).status_code == 200, writer
        assert secure_influx.query("CREATE USER \"x\" WITH PASSWORD 'y'", writer).status_code == 403, writer
    assert secure_influx.points("RPi_2.BAT") == [["2023-11-14T22:13:21Z", 50]]


def test_running_again_resets_passwords_and_rights(own: SecureInflux) -> None:
    # Someone gave the reader more, made the adapter an admin, and rotated the adapter's secret.
    for statement in (
        'GRANT ALL ON "IoT_Devices" TO "grafana"',
        'CREATE DATABASE "scratch"',
        'GRANT WRITE ON "scratch" TO "grafana"',
        'GRANT ALL PRIVILEGES TO "adapter"',
    ):
        assert own.query(statement).status_code == 200, statement
    old_password = own.accounts.passwords["adapter"]
    own.accounts.rotate("adapter")
    again = run_script(own.accounts.env(own.server.port))
    assert again.returncode == 0, again.stderr
    assert "database IoT_Devices exists" in again.stdout
    assert own.grants("grafana") == [[DATABASE, "READ"]]
    assert own.users()["adapter"] is False
    assert own.write(READING, ("adapter", old_password)).status_code == 401
    assert own.write(READING, "adapter").status_code == 204


def test_a_wrong_admin_password_stops_it_with_a_clear_message(own: SecureInflux, tmp_path: Path) -> None:
    (tmp_path / "rotated-admin").write_text("not-the-first-password")
    env = own.accounts.env(own.server.port, INFLUX_ADMIN_PASSWORD_FILE=str(tmp_path / "rotated-admin"))
    result = run_script(env)
    assert result.returncode == 1
    assert "cannot log in as the InfluxDB admin 'admin'" in result.stderr
    assert "not-the-first-password" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ("grafana:READ", "is not name:READ|WRITE|ALL:password-file"),
        ("grafana:OWNER:/dev/null", "unknown right 'OWNER'"),
        ("admin:READ:/etc/hostname", "a name other than the admin's"),
        ('gra"fana:READ:/etc/hostname', "is not name:READ|WRITE|ALL:password-file"),
        ("grafana:READ:/no/such/file", "cannot read the password file /no/such/file"),
    ],
)
def test_refuses_bad_user_lists(secure_influx: SecureInflux, users: str, message: str) -> None:
    # Each is refused before any statement changes a user.
    result = run_script(secure_influx.accounts.env(secure_influx.server.port, INFLUX_USERS=users))
    assert result.returncode == 1
    assert message in result.stderr
    assert secure_influx.grants("grafana") == [[DATABASE, "READ"]]


def test_without_authentication_it_creates_no_user(influx: InfluxServer, tmp_path: Path) -> None:
    env = {
        **Accounts(tmp_path).env(influx.port),
        "INFLUXDB_HTTP_AUTH_ENABLED": "false",
        "INFLUXDB_DATABASE": "t_no_users",
    }
    result = run_script(env)
    assert result.returncode == 0, result.stderr
    assert "created database t_no_users" in result.stdout
    assert influx.series("SHOW USERS", "t_no_users")[0].get("values") is None


@pytest.mark.parametrize("continuous_queries", [True, False], ids=["InfluxDB default", "secure profile"])
def test_continuous_queries_are_off_because_a_reader_may_create_one(
    tmp_path: Path, continuous_queries: bool
) -> None:
    """InfluxQL asks only READ of a CREATE CONTINUOUS QUERY that writes into the same
    database: with the service on (InfluxDB's default) a Grafana login could write, or
    overwrite, readings through one. The secure profile turns the service off."""
    server = InfluxServer(
        tmp_path / "influxd",
        auth_enabled=True,
        extra_config="" if continuous_queries else NO_CONTINUOUS_QUERIES,
    )
    server.start()
    accounts = Accounts(tmp_path)
    secure = SecureInflux(server, accounts, CommandLineRecorder(tmp_path / "recorded", []))
    try:
        assert run_script(accounts.env(server.port)).returncode == 0
        created = secure.query(
            'CREATE CONTINUOUS QUERY "cq" ON "IoT_Devices" BEGIN SELECT max("value") AS "value" '
            'INTO "forged" FROM "RPi_1.BAT" GROUP BY time(1s), * END',
            "grafana",
        )
        assert created.status_code == 200, created.text
        modules = {module["name"] for module in secure.query("SHOW STATS").json()["results"][0]["series"]}
        assert ("cq" in modules) is continuous_queries
        if continuous_queries:
            # The demonstration: readings keep arriving, and the reader's query writes.
            def forged() -> bool:
                line = f"RPi_1.BAT,location=UPB,station=RPi_1 value=1 {int(time.time())}"
                assert secure.write(line, "adapter").status_code == 204
                return secure.points("forged") != []

            wait_for(forged, 30, "the reader's continuous query writing")
    finally:
        server.stop()


# --- `--serve`: the InfluxDB service's entry point in the secure profile -----------------------


class ServedInflux(InfluxServer):
    """influxd started through `init_influx_db.sh --serve`, as the secure stack starts it; or,
    with `serving = False`, started plainly without authentication (the default profile)."""

    def __init__(self, workdir: Path, accounts: Accounts, recorder: CommandLineRecorder) -> None:
        super().__init__(workdir)  # the config file has no authentication in it...
        self.init_port = free_port()
        self.serving = True
        # ... the service's environment turns it on, as stack.secure.yml does.
        self.served_env = recorder.env(
            accounts.env(INFLUXDB_INIT_PORT=str(self.init_port), INFLUXDB_CONTINUOUS_QUERIES_ENABLED="false")
        )

    def start(self, timeout_s: float = 90.0) -> None:
        self.env = self.served_env if self.serving else None
        super().start(timeout_s)

    def command(self) -> list[str]:
        if self.serving:
            return [str(SCRIPT), "--serve", "-config", str(self.config_path)]
        return super().command()

    def ready(self) -> bool:
        served = not self.serving or "init_influx_db: set up; starting influxd" in self.log_text()
        return served and super().ready()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServedInflux, SecureInflux]]:
    accounts = Accounts(tmp_path)
    recorder = CommandLineRecorder(tmp_path / "recorded", ["curl", "influxd"])
    server = ServedInflux(tmp_path / "influxd", accounts, recorder)
    yield server, SecureInflux(server, accounts, recorder)
    server.stop()


def test_serve_sets_up_users_before_anyone_can_connect(served: tuple[ServedInflux, SecureInflux]) -> None:
    server, secure = served
    server.start()
    log = server.log_text()
    assert "created the admin user admin" in log and "user grafana has READ on IoT_Devices" in log
    # The temporary server listened only on 127.0.0.1:INFLUXDB_INIT_PORT and is gone; the real
    # one is the script's own process (exec), with the options it was given.
    assert not port_open(server.init_port)
    assert server.proc is not None
    assert command_lines()[server.proc.pid].split()[1:] == ["-config", str(server.config_path)]
    assert secure.write(READING, None).status_code == 401
    assert secure.write(READING, "adapter").status_code == 204
    assert secure.query('DROP DATABASE "IoT_Devices"', "grafana").status_code == 403
    assert len(secure.recorder.runs_of("influxd")) == 2  # the temporary server, then the real one
    everything = [*secure.recorder.lines(), *command_lines().values()]
    assert leaks(everything, secure.accounts.passwords.values()) == []
    # SIGTERM reaches influxd itself, which stops cleanly.
    server.stop(signal.SIGTERM)
    assert server.proc.returncode == 0


def test_serve_turns_an_open_database_secure_and_keeps_its_data(
    served: tuple[ServedInflux, SecureInflux],
) -> None:
    server, secure = served
    server.serving = False  # first the default profile: no authentication, no users
    server.start()
    server.query(f'CREATE DATABASE "{DATABASE}"')
    assert server.write(DATABASE, "RPi_1.BAT,location=UPB,station=RPi_1 value=99 1700000000000000000").ok
    server.stop()

    server.serving = True
    server.start()
    assert secure.users() == {"admin": True, "adapter": False, "auth_server": False, "grafana": False}
    reader = secure.query('SELECT "value" FROM "RPi_1.BAT"', "grafana")
    assert reader.status_code == 200
    assert reader.json()["results"][0]["series"][0]["values"] == STORED
    assert secure.query('SELECT "value" FROM "RPi_1.BAT"', None).status_code == 401


def test_serve_stops_and_leaves_nothing_running_when_the_set_up_fails(
    served: tuple[ServedInflux, SecureInflux],
) -> None:
    server, _ = served
    server.served_env["INFLUX_USERS"] = "grafana:OWNER:/dev/null"
    with pytest.raises(ServerError, match="exited with code 1"):
        server.start()
    assert "unknown right 'OWNER'" in server.log_text()
    assert not port_open(server.init_port)
    assert not port_open(server.port)
    assert not [line for line in command_lines().values() if str(server.config_path) in line]
