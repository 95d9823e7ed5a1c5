"""Shared fixtures: real Mosquitto and InfluxDB processes, and the real adapter."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mqtt_client import Publisher
from tests.secure_influx import SecureInflux, start_secure_influx
from tests.servers import (
    AdapterProcess,
    InfluxServer,
    ManagedServer,
    MariaDBServer,
    MosquittoServer,
    PrometheusServer,
    tail,
)

_started: list[ManagedServer] = []


def _track(server: ManagedServer) -> ManagedServer:
    _started.append(server)
    return server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    # Show the servers' logs next to a failure: that is where the cause usually is.
    if report.failed and call.when in ("setup", "call"):
        for server in _started:
            report.sections.append((f"{server.name} log", tail(server.log_path, 80)))


@pytest.fixture(scope="session")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One influxd for the session; tests isolate themselves with their own database."""
    server = InfluxServer(tmp_path_factory.mktemp("influxd"))
    server.start()
    _track(server)
    yield server
    server.stop()


@pytest.fixture
def own_influx(tmp_path: Path) -> Iterator[InfluxServer]:
    """An influxd of this test alone, for tests that stop it."""
    server = InfluxServer(tmp_path / "influxd")
    server.start()
    _track(server)
    yield server
    server.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoServer]:
    server = MosquittoServer(tmp_path / "mosquitto")
    server.start()
    _track(server)
    yield server
    server.stop()


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    """A database name unique to this test (InfluxDB names may hold any character)."""
    return "t_" + re.sub(r"\W", "_", request.node.name)[:80]


@pytest.fixture
def make_adapter(tmp_path: Path) -> Iterator[Callable[..., AdapterProcess]]:
    """Start the real adapter against given servers: make_adapter(broker, influx, db, **env)."""
    adapters: list[AdapterProcess] = []

    def make(
        mqtt: MosquittoServer, influx: InfluxServer, database: str, start: bool = True, **env: str
    ) -> AdapterProcess:
        proc = AdapterProcess(tmp_path / f"adapter{len(adapters)}", mqtt, influx, database, **env)
        adapters.append(proc)
        _track(proc)
        if start:
            proc.start()
        return proc

    yield make
    for proc in adapters:
        proc.stop()


@pytest.fixture
def publisher(broker: MosquittoServer) -> Iterator[Publisher]:
    pub = Publisher(broker.port)
    yield pub
    pub.close()


@pytest.fixture(autouse=True)
def _forget_servers() -> Iterator[None]:
    yield
    _started[:] = [s for s in _started if s.proc is not None and s.proc.poll() is None]


@pytest.fixture
def make_prometheus(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Start a real Prometheus: make_prometheus(config_text, files={"alerts.yml": ...}, port=None)."""
    servers: list[PrometheusServer] = []

    def make(
        config_text: str, files: dict[str, str] | None = None, port: int | None = None
    ) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus{len(servers)}", config_text, files, port)
        servers.append(server)
        _track(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    """One MariaDB for the session; tests isolate themselves with their own database."""
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb"))
    server.start()
    _track(server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def secure_influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureInflux]:
    """The secure profile's InfluxDB (authentication on, users set up by the init script), for
    the session: tests must not change its users or rights (they use `start_secure_influx`)."""
    server = start_secure_influx(tmp_path_factory.mktemp("secure-influx"))
    _track(server.server)
    yield server
    server.stop()
