"""Alert delivery end to end on real servers: InfluxDB stops, Prometheus (the shipped
configuration and rules) fires, Debian's Alertmanager (the configuration run.sh renders with a
webhook) notifies a webhook this test runs, with the alerts' labels and annotations; InfluxDB
comes back, and the resolved notification arrives.

To keep it short, the test's copies change only timings: scrape and evaluation intervals (1 s,
as every Prometheus test here), the rules' `for:`, and the Alertmanager's group_wait,
group_interval and repeat_interval. test_only_timings_differ proves that nothing else does.
"""

from __future__ import annotations

import copy
import json
import queue
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.alertmanager.rendered import load, render
from tests.mqtt_client import Publisher
from tests.prometheus.platform_files import ALERTS, SCRAPE_JOB_NAMES, local_config
from tests.servers import (
    AdapterProcess,
    AlertmanagerServer,
    InfluxServer,
    MosquittoServer,
    PrometheusServer,
    free_port,
)

SHORT_FOR = "3s"
AM_TIMINGS = {"group_wait": "1s", "group_interval": "2s", "repeat_interval": "1h"}


def fast_rules() -> dict[str, Any]:
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    return rules


def fast_alertmanager(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    for route in (config["route"], *config["route"].get("routes", [])):
        for key, value in AM_TIMINGS.items():
            if key in route or route is config["route"]:
                route[key] = value
    return config


def without_timings(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: without_timings(v) for k, v in data.items() if k not in {"for", *AM_TIMINGS}}
    if isinstance(data, list):
        return [without_timings(v) for v in data]
    return data


def test_only_timings_differ(tmp_path: Path) -> None:
    shipped_rules = yaml.safe_load(ALERTS.read_text())
    assert without_timings(fast_rules()) == without_timings(shipped_rules)
    assert fast_rules() != shipped_rules
    path, _ = render(tmp_path, ALERT_WEBHOOK_URL="http://127.0.0.1:9/hook")
    shipped_am = load(path)
    assert without_timings(fast_alertmanager(shipped_am)) == without_timings(shipped_am)


class Webhook:
    """An HTTP server on 127.0.0.1 that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: queue.Queue[dict[str, Any]] = queue.Queue()
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                bodies.put(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, status: str, alertname: str, job: str, timeout_s: float = 90) -> dict[str, Any]:
        """The first notified alert with this name, job and status (others are skipped)."""
        while True:
            body = self.bodies.get(timeout=timeout_s)
            for alert in body["alerts"]:
                labels = alert["labels"]
                if (
                    labels["alertname"] == alertname
                    and labels.get("job") == job
                    and alert["status"] == status
                ):
                    return {"body": body, "alert": alert}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def test_influxdb_outage_reaches_the_webhook_and_so_does_its_end(
    *,
    tmp_path: Path,
    broker: MosquittoServer,
    own_influx: InfluxServer,
    make_adapter: Callable[..., AdapterProcess],
    make_prometheus: Callable[..., PrometheusServer],
    webhook: Webhook,
) -> None:
    adapter = make_adapter(broker, own_influx, "t_alert_delivery")
    rendered, _ = render(tmp_path / "state", ALERT_WEBHOOK_URL=webhook.url)
    alertmanager = AlertmanagerServer(
        tmp_path / "alertmanager", yaml.safe_dump(fast_alertmanager(load(rendered)))
    )
    alertmanager.start()
    try:
        prometheus_port = free_port()
        targets = {job: f"127.0.0.1:{free_port()}" for job in SCRAPE_JOB_NAMES}  # not running here
        targets |= {
            "adapter": f"127.0.0.1:{adapter.metrics_port}",
            "influxdb": f"127.0.0.1:{own_influx.port}",
            "prometheus": f"127.0.0.1:{prometheus_port}",
            "alertmanager": f"127.0.0.1:{alertmanager.port}",
        }
        prometheus = make_prometheus(
            local_config(targets), {"alerts.yml": yaml.safe_dump(fast_rules())}, port=prometheus_port
        )
        prometheus.query("up")

        own_influx.stop()
        # A reading while InfluxDB is away: the adapter keeps retrying it.
        publisher = Publisher(broker.port)
        publisher.publish("UPB/RPi_1", json.dumps({"BAT": 99, "timestamp": "2026-01-02T03:04:05Z"}))
        publisher.wait(30)
        publisher.close()

        down = webhook.wait_for("firing", "ComponentDown", "influxdb")
        assert down["body"]["receiver"] == "operators"
        assert down["alert"]["labels"] == {
            "alertname": "ComponentDown",
            "job": "influxdb",
            "instance": targets["influxdb"],
            "severity": "critical",
        }
        annotations = down["alert"]["annotations"]
        assert annotations["summary"] == f"influxdb ({targets['influxdb']}) is down"
        assert "`docker service ps iot_influxdb`" in annotations["description"]

        retries = webhook.wait_for("firing", "AdapterWriteRetries", "adapter")
        assert retries["alert"]["labels"]["severity"] == "warning"
        assert retries["alert"]["annotations"]["summary"] == (
            f"Adapter {targets['adapter']} keeps retrying InfluxDB writes"
        )

        own_influx.start()
        resolved = webhook.wait_for("resolved", "ComponentDown", "influxdb")
        assert resolved["alert"]["labels"] == down["alert"]["labels"]
        assert resolved["alert"]["endsAt"] > resolved["alert"]["startsAt"]
        # The Alertmanager holds the alerts too, for Grafana or amtool to show.
        assert any(a["labels"]["alertname"] == "AdapterWriteRetries" for a in alertmanager.alerts())
    finally:
        alertmanager.stop()
