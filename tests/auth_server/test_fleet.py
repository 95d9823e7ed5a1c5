"""The request path at fleet scale, as the image runs it (`python -m auth_server`, several
gunicorn workers): pooled MySQL connections that survive a MariaDB restart, account changes
that apply to the very next request under concurrent load, and metrics summed across workers."""

from __future__ import annotations

import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from tests.auth_server.conftest import ADMIN, AuthServerProcess, new_password
from tests.conftest import _track
from tests.servers import InfluxServer, MariaDBServer, wait_for

WORKERS = "2"


@dataclass
class Fleet:
    """A running server and a way to talk to it as the admin and as devices."""

    server: AuthServerProcess
    admin_password: str
    _admin: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def admin(self) -> dict[str, str]:
        if not self._admin:
            self._admin = self.bearer(ADMIN, self.admin_password)
        return self._admin

    def bearer(self, username: str, password: str) -> dict[str, str]:
        login = requests.post(
            f"{self.url}/api/auth/login", json={"username": username, "password": password}, timeout=30
        )
        assert login.status_code == 200, login.text
        return {"Authorization": f"Bearer {login.json()['access_token']}"}

    def device(self, username: str, station: str) -> dict[str, str]:
        password = new_password()
        created = requests.post(
            f"{self.url}/api/accounts",
            json={
                "username": username,
                "password": password,
                "permissions": [{"location": "FLEET", "station": station, "read": True, "write": True}],
            },
            headers=self.admin(),
            timeout=30,
        )
        assert created.status_code == 201, created.text
        return self.bearer(username, password)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = requests.get(f"{self.url}/metrics", timeout=10).text
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def _settings(mariadb: MariaDBServer, database: str, influx: InfluxServer, influx_db: str) -> dict[str, str]:
    return {
        "MYSQL_HOST": "127.0.0.1",
        "MYSQL_PORT": str(mariadb.port),
        "MYSQL_USER": mariadb.user,
        "MYSQL_PASSWORD": mariadb.password,
        "MYSQL_DATABASE": database,
        "JWT_SECRET": secrets.token_hex(32),
        "ADMIN_USERNAME": ADMIN,
        "ADMIN_PASSWORD": new_password(),
        "INFLUXDB_HOST": "127.0.0.1",
        "INFLUXDB_PORT": str(influx.port),
        "INFLUXDB_DATABASE": influx_db,
        "STARTUP_TIMEOUT": "30",
        "AUTH_WORKERS": WORKERS,
    }


@pytest.fixture
def start_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    started: list[AuthServerProcess] = []

    def start(settings: dict[str, str]) -> Fleet:
        server = AuthServerProcess(tmp_path / f"auth_server{len(started)}", settings)
        server.start(timeout_s=60)
        _track(server)
        started.append(server)
        return Fleet(server, settings["ADMIN_PASSWORD"])

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def fleet_settings(
    mariadb: MariaDBServer, mysql_database: str, influx: InfluxServer, database: str
) -> dict[str, str]:
    return _settings(mariadb, mysql_database, influx, database)


@pytest.fixture
def fleet(start_fleet: Callable[..., Fleet], fleet_settings: dict[str, str]) -> Fleet:
    return start_fleet(fleet_settings)


@dataclass
class Outcome:
    started: float
    status: int  # 0: no answer (connection refused, timeout)


class Load:
    """Threads sending one request each, again and again, until stopped; every outcome kept."""

    def __init__(self, send: Callable[[requests.Session], int], threads: int) -> None:
        self._send = send
        self._stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = self._send(session)
                except requests.RequestException:
                    status = 0
                self.outcomes.append(Outcome(started, status))

    def since(self, moment: float) -> list[int]:
        return [o.status for o in list(self.outcomes) if o.started > moment]

    def wait_for(self, moment: float, count: int, timeout_s: float = 60) -> list[int]:
        """The statuses of at least `count` requests started after `moment`."""
        wait_for(lambda: len(self.since(moment)) >= count, timeout_s, "requests of the load")
        return self.since(moment)


def _write(fleet: Fleet, station: str, headers: dict[str, str]) -> Callable[[requests.Session], int]:
    url = f"{fleet.url}/api/data/FLEET/{station}"
    body = {"timestamp": "2026-03-01T10:00:00.250+02:00", "T": 21.5, "H": 40, "state": "ok"}
    return lambda session: session.post(url, json=body, headers=headers, timeout=30).status_code


def _me(fleet: Fleet, headers: dict[str, str]) -> Callable[[requests.Session], int]:
    return lambda session: session.get(f"{fleet.url}/api/auth/me", headers=headers, timeout=30).status_code


def _connections_opened(mariadb: MariaDBServer) -> int:
    with mariadb.root() as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Connections'")
        return int(cur.fetchone()[1])


def test_concurrent_writes_are_each_stored_once(fleet: Fleet, influx: InfluxServer, database: str) -> None:
    """Many clients writing at once through both workers (their writes grouped into fewer
    InfluxDB requests, auth_server.influx.GroupWriter): every write is answered 200 and stored
    in its own device's series, and the metric counts what was stored."""
    clients, writes = 16, 25
    devices = [fleet.device(f"group-{n}", f"G{n}") for n in range(clients)]
    before = fleet.metrics().get(("auth_points_written_total", frozenset()), 0.0)
    statuses: list[int] = []

    def client(n: int) -> None:
        url = f"{fleet.url}/api/data/FLEET/G{n}"
        with requests.Session() as session:
            for k in range(writes):
                body = {"timestamp": 1_700_000_000_000 + k, "T": k, "H": n, "state": "ok"}
                statuses.append(session.post(url, json=body, headers=devices[n], timeout=30).status_code)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses == [200] * (clients * writes)
    counts = influx.series('SELECT count("value") FROM /^G[0-9]+\\./ WHERE "location" = \'FLEET\'', database)
    assert {s["name"]: s["values"][0][1] for s in counts} == {
        f"G{n}.{metric}": writes for n in range(clients) for metric in ("T", "H")
    }
    written = fleet.metrics()[("auth_points_written_total", frozenset())] - before
    assert written == clients * writes * 2


def test_requests_reuse_pooled_mysql_connections(fleet: Fleet, mariadb: MariaDBServer) -> None:
    headers = fleet.device("pool-dev", "P1")
    before = _connections_opened(mariadb)
    with Load(_me(fleet, headers), threads=4) as load:
        statuses = load.wait_for(0, 200)
    assert set(statuses) == {200}
    # The few connections the pools open (4 requests at once, 2 workers), not one per request;
    # other tests' servers on this MariaDB open some too, meanwhile.
    assert _connections_opened(mariadb) - before < 40
    samples = fleet.metrics()
    assert samples[("auth_mysql_connections", frozenset({("state", "in_use")}))] == 0
    idle = samples[("auth_mysql_connections", frozenset({("state", "idle")}))]
    assert 1 <= idle <= 20  # MYSQL_MAX_CONNECTIONS's default, shared by the workers


@pytest.mark.parametrize(
    "change",
    ["disable", "delete", "revoke write right", "revoke read right", "operator edits the row"],
)
def test_an_account_change_applies_to_the_very_next_request_under_load(
    fleet: Fleet, mariadb: MariaDBServer, mysql_database: str, change: str
) -> None:
    """Devices load the server (both workers, pooled connections) while the admin changes one
    of them: every request of that device started after the change returns is refused; the
    other devices go on."""
    victim = fleet.device("victim", "V")
    bystander = fleet.device("bystander", "B")
    uses_read = change == "revoke read right"
    victim_request = (
        (lambda s: s.get(f"{fleet.url}/api/data/FLEET/V", headers=victim, timeout=30).status_code)
        if uses_read
        else _write(fleet, "V", victim)
    )
    with (
        Load(victim_request, threads=4) as victims,
        Load(_write(fleet, "B", bystander), threads=2) as others,
        Load(_me(fleet, victim), threads=2) as victim_me,
    ):
        assert set(victims.wait_for(0, 20)) == {200}
        if change == "operator edits the row":
            # As in phpMyAdmin: straight to the table, no API call, no cache to notify.
            with (
                pymysql.connect(
                    host="127.0.0.1",
                    port=mariadb.port,
                    user=mariadb.user,
                    password=mariadb.password,
                    database=mysql_database,
                    autocommit=True,
                ) as conn,
                conn.cursor() as cur,
            ):
                cur.execute("UPDATE accounts SET enabled = 0 WHERE username = 'victim'")
        elif change == "disable":
            _admin_call(fleet, "PATCH", {"enabled": False})
        elif change == "delete":
            _admin_call(fleet, "DELETE", None)
        else:
            right = {"location": "FLEET", "station": "V", "read": not uses_read, "write": uses_read}
            _admin_call(fleet, "PATCH", {"permissions": [right]})
        changed = time.monotonic()
        after = victims.wait_for(changed, 40)
        me_after = victim_me.wait_for(changed, 20)
        bystander_after = others.wait_for(changed, 20)
    refused = {403} if change.startswith("revoke") else {401}
    assert set(after) == refused, after
    # A rights change leaves the account (and its token) valid; the others end it.
    assert set(me_after) == ({200} if change.startswith("revoke") else {401})
    assert set(bystander_after) == {200}


def _admin_call(fleet: Fleet, method: str, body: dict | None) -> None:
    response = requests.request(
        method, f"{fleet.url}/api/accounts/victim", json=body, headers=fleet.admin(), timeout=30
    )
    assert response.status_code in (200, 204), response.text


def test_requests_recover_after_a_mariadb_restart_without_a_server_restart(
    tmp_path: Path, start_fleet: Callable[..., Fleet], influx: InfluxServer, database: str
) -> None:
    own = MariaDBServer(tmp_path / "mariadb")  # restarted here: not the session's
    own.start()
    _track(own)
    own.create_database("restart")
    fleet = start_fleet(_settings(own, "restart", influx, database))
    headers = fleet.device("restart-dev", "R")
    pid = fleet.server.proc.pid if fleet.server.proc else 0
    with Load(_write(fleet, "R", headers), threads=4) as load:
        assert set(load.wait_for(0, 40)) == {200}
        own.stop()
        down = time.monotonic()
        during = load.wait_for(down, 20)
        own.start()
        up = time.monotonic()
        # Every pooled connection is dead now: each is noticed and replaced, not served as an error
        # for long. Wait for a run of successes, then check nothing else came after it.
        wait_for(lambda: load.since(up)[-20:] == [200] * 20, 60, "writes to succeed again")
        recovered = time.monotonic()
        after = load.wait_for(recovered, 40)
    # While MariaDB was down the server answered 503 (try later), never 500 or a dropped connection.
    assert set(during) <= {503, 200}
    assert 503 in during
    assert set(after) == {200}
    assert fleet.server.proc is not None and fleet.server.proc.poll() is None
    assert fleet.server.proc.pid == pid
    assert "Traceback" not in fleet.server.log_text()
    own.stop()


def _per_worker(directory: Path, metric: str, route: str) -> dict[str, float]:
    """`metric`'s value for `route` in each worker's file of the multiprocess directory."""
    values: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
            if f'"{metric}"' in key and f'"{route}"' in key:
                values[pid] = values.get(pid, 0.0) + value
    return values


def _private_metrics_dir(server: AuthServerProcess) -> Path:
    """The directory the server made for itself: the one holding its workers' files."""
    assert server.proc is not None
    master = server.proc.pid
    workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    found = {
        path.parent
        for pid in workers
        for path in Path(tempfile.gettempdir()).glob(f"auth-server-metrics-*/*_{pid}.db")
    }
    assert len(found) == 1, found
    return found.pop()


@pytest.mark.parametrize("named", [True, False], ids=["PROMETHEUS_MULTIPROC_DIR", "private directory"])
def test_metrics_are_summed_across_workers(
    tmp_path: Path, start_fleet: Callable[..., Fleet], fleet_settings: dict[str, str], named: bool
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    # What an earlier run left there must not add to this one's counts.
    stale = MmapedDict(str(directory / "counter_1.db"))
    key = mmap_key("auth_http_requests", "auth_http_requests_total", ["method"], ["POST"], "")
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    extra = {"PROMETHEUS_MULTIPROC_DIR": str(directory)} if named else {}
    fleet = start_fleet({**fleet_settings, **extra})
    if named:
        assert not (directory / "counter_1.db").exists()
    else:
        directory = _private_metrics_dir(fleet.server)
    headers = fleet.device("metrics-dev", "M")
    route = "/api/data/<location>/<station>"
    # Until both workers have served some (the kernel picks the worker of each connection).
    with Load(_write(fleet, "M", headers), threads=6) as load:
        wait_for(
            lambda: (
                len([v for v in _per_worker(directory, "auth_http_requests_total", route).values() if v]) >= 2
            ),
            60,
            "both workers to serve writes",
        )
    made = len(load.outcomes)
    assert {o.status for o in load.outcomes} == {200}
    samples = fleet.metrics()
    labels = frozenset({("method", "POST"), ("route", route), ("status", "200")})
    assert samples[("auth_http_requests_total", labels)] == made
    assert samples[("auth_points_written_total", frozenset())] == 2 * made  # T and H; "state" is a string
    assert samples[("auth_mysql_connections", frozenset({("state", "in_use")}))] == 0
    fleet.server.stop()
    # A directory the operator named is kept (only emptied at start); a private one is removed.
    assert directory.is_dir() == named
