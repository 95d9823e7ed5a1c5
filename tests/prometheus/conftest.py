"""A real Prometheus running the platform's configuration against real servers.

Tests here only read from it, so one platform serves the whole package: Prometheus applies
discovered targets on a fixed 5 s tick, a cost worth paying once rather than per test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.mqtt_client import Publisher
from tests.prometheus.platform_files import ALERTS, AM_CONFIG, local_config
from tests.prometheus.scraped import AuthServerProcess, ScrapedPlatform
from tests.servers import (
    AdapterProcess,
    AlertmanagerServer,
    BrokerExporterProcess,
    InfluxServer,
    ManagedServer,
    MariaDBServer,
    MosquittoServer,
    PrometheusServer,
    free_port,
    tail,
    wait_for,
)

MESSAGES = 20
NUMBERS_PER_MESSAGE = 2
FAILED_LOGINS = 3

_servers: list[ManagedServer] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    # The package-scoped servers are not in the shared fixtures' list; show their logs too.
    if report.failed and call.when in ("setup", "call"):
        for server in _servers:
            report.sections.append((f"{server.name} log", tail(server.log_path, 80)))


def _start(server: ManagedServer) -> None:
    _servers.append(server)
    server.start()


@pytest.fixture(scope="package")
def scraped(
    tmp_path_factory: pytest.TempPathFactory, influx: InfluxServer, mariadb: MariaDBServer
) -> Iterator[ScrapedPlatform]:
    """The adapter and the auth server after known traffic, scraped by Prometheus with the
    real config and rules.

    Kong and Grafana cannot be installed here; their jobs point at closed ports, which also
    gives the ComponentDown rule real failed scrapes.
    """
    database = "t_prometheus_scraped"
    mysql_database = "t_prometheus_scraped"
    mariadb.create_database(mysql_database)
    workdir = tmp_path_factory.mktemp("scraped")
    broker = MosquittoServer(workdir / "mosquitto")
    adapter = AdapterProcess(workdir / "adapter", broker, influx, database)
    auth_server = AuthServerProcess(workdir / "auth_server", mariadb, mysql_database, influx)
    exporter = BrokerExporterProcess(workdir / "broker_exporter", broker)
    alertmanager = AlertmanagerServer(workdir / "alertmanager", AM_CONFIG.read_text())
    port = free_port()
    down = {job: f"127.0.0.1:{free_port()}" for job in ("kong", "grafana")}
    targets = {
        "adapter": f"127.0.0.1:{adapter.metrics_port}",
        "auth_server": f"127.0.0.1:{auth_server.port}",
        "influxdb": f"127.0.0.1:{influx.port}",
        "prometheus": f"127.0.0.1:{port}",
        "broker_exporter": f"127.0.0.1:{exporter.metrics_port}",
        "alertmanager": f"127.0.0.1:{alertmanager.port}",
        **down,
    }
    prometheus = PrometheusServer(
        workdir / "prometheus", local_config(targets), {"alerts.yml": ALERTS.read_text()}, port
    )
    try:
        for server in (broker, adapter, auth_server, exporter, alertmanager, prometheus):
            _start(server)
        yield _publish_and_wait(
            prometheus=prometheus,
            adapter=adapter,
            auth_server=auth_server,
            influx=influx,
            database=database,
            broker=broker,
            exporter=exporter,
            alertmanager=alertmanager,
            down_jobs=frozenset(down),
        )
    finally:
        for server in reversed(_servers):
            server.stop()
        _servers.clear()
        mariadb.drop_database(mysql_database)


def _publish_and_wait(
    *,
    prometheus: PrometheusServer,
    adapter: AdapterProcess,
    auth_server: AuthServerProcess,
    influx: InfluxServer,
    database: str,
    broker: MosquittoServer,
    exporter: BrokerExporterProcess,
    alertmanager: AlertmanagerServer,
    down_jobs: frozenset[str],
) -> ScrapedPlatform:
    publisher = Publisher(broker.port)
    published_from = time.time()
    for i in range(MESSAGES):
        station = "UPB/RPi_1" if i % 2 else "Lab/RPi_2"
        publisher.publish(station, json.dumps({"TEMP": 20 + i / 10, "HUMID": 40 + i, "label": "x"}))
    publisher.publish("UPB/RPi_1", "not json")  # rejected: not_json
    publisher.publish("UPB/RPi_1/extra", json.dumps({"TEMP": 1}))  # rejected: bad_topic
    publisher.publish("UPB/RPi_1", json.dumps({"status": "ok"}))  # valid, nothing to store
    publisher.wait()
    publisher.close()
    points = MESSAGES * NUMBERS_PER_MESSAGE
    wait_for(
        lambda: (
            adapter.metric("adapter_messages_received_total") == MESSAGES + 3
            and adapter.metric("adapter_points_written_total") == points
        ),
        30,
        "the adapter to store every point",
        adapter.proc,
        adapter.log_path,
    )
    # The adapter's counter is what Prometheus will see; the database says it is the truth.
    assert influx.count_points(database) == points
    assert auth_server.login("admin", auth_server.admin_password) == 200
    for _ in range(FAILED_LOGINS):
        assert auth_server.login("admin", "not the password") == 401

    def scraped_since(job: str) -> bool:
        # A scrape after the traffic ended, and two samples at least, so rate() has
        # something to work on in the dashboard's queries.
        last = prometheus.query(f'timestamp(up{{job="{job}"}})')
        samples = prometheus.query(f'count_over_time(up{{job="{job}"}}[1m])')
        return (
            bool(last and samples)
            and float(last[0]["value"][1]) > stored_at
            and float(samples[0]["value"][1]) >= 2
        )

    # The broker's statistics include the messages above once it published them (every 10 s).
    wait_for(
        lambda: (exporter.metric("mosquitto_publish_messages_received_total") or 0) >= MESSAGES + 3,
        30,
        "the broker's statistics",
        exporter.proc,
        exporter.log_path,
    )
    stored_at = time.time()
    for job in ("adapter", "auth_server", "broker_exporter"):
        wait_for(
            lambda job=job: scraped_since(job), 30, f"a scrape of {job}", prometheus.proc, prometheus.log_path
        )
    return ScrapedPlatform(
        prometheus=prometheus,
        adapter=adapter,
        auth_server=auth_server,
        exporter=exporter,
        alertmanager=alertmanager,
        points=points,
        received=MESSAGES + 3,
        not_numeric=MESSAGES + 1,
        published_from=published_from,
        stored_at=stored_at,
        failed_logins=FAILED_LOGINS,
        down_jobs=down_jobs,
    )
