"""Grafana's /metrics is behind basic auth, and the Prometheus job logs in with the same
account: the same user name, the password from the same Docker secret.

Grafana cannot run here. The scrape is proven with the real Prometheus and the shipped
`grafana` job against a stand-in for Grafana's /metrics that answers as Grafana 11 does
once GF_METRICS_BASIC_AUTH_USERNAME and _PASSWORD are set (pkg/api/http_server.go
metricsEndpoint: 401 unless the request's basic-auth pair is exactly that one).
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus.platform_files import CONFIG, load_yaml
from tests.servers import REPO_ROOT, PrometheusServer, free_port, wait_for

STACK_FILE = REPO_ROOT / "stack.yml"
PASSWORD = "s3cret-of-the-metrics-account"


def grafana_job() -> dict[str, Any]:
    (job,) = [j for j in load_yaml(CONFIG)["scrape_configs"] if j["job_name"] == "grafana"]
    return job


def service_secrets(service: dict[str, Any]) -> dict[str, str]:
    """/run/secrets/<target> → the stack's name of the secret mounted there."""
    return {f"/run/secrets/{ref['target']}": ref["source"] for ref in service.get("secrets", [])}


def test_prometheus_reads_the_secret_grafana_checks() -> None:
    stack = load_yaml(STACK_FILE)
    grafana, prometheus = stack["services"]["grafana"], stack["services"]["prometheus"]
    env = grafana["environment"]
    auth = grafana_job()["basic_auth"]
    assert auth["username"] == env["GF_METRICS_BASIC_AUTH_USERNAME"]
    assert "password" not in auth, "the password comes from the secret, never from the file"
    grafana_secret = service_secrets(grafana)[env["GF_METRICS_BASIC_AUTH_PASSWORD__FILE"]]
    assert service_secrets(prometheus)[auth["password_file"]] == grafana_secret
    # Created by run.sh like every other secret, so clean.sh removes it too.
    assert stack["secrets"][grafana_secret] == {"external": True, "name": f"iot_{grafana_secret}"}
    assert grafana_secret in (REPO_ROOT / "run.sh").read_text()


class GrafanaMetricsStandIn:
    """Serves /metrics to one basic-auth pair, 401 to anything else; records each request."""

    def __init__(self, username: str, password: str) -> None:
        expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.answers: list[int] = []
        answers = self.answers

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path == "/metrics" and self.headers.get("Authorization") == expected
                answers.append(200 if ok else 401)
                body = b'grafana_build_info{version="11.3.0"} 1\n' if ok else b"Unauthorized\n"
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # keep the test output clean
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> GrafanaMetricsStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in() -> Iterator[GrafanaMetricsStandIn]:
    with GrafanaMetricsStandIn(grafana_job()["basic_auth"]["username"], PASSWORD) as server:
        yield server


def job_config(target: str, password_file: Path) -> str:
    """prometheus/prometheus.yml's grafana job alone, scraping `target` every second, its
    password file at `password_file` instead of the container's /run/secrets/."""
    job = grafana_job()
    job["static_configs"] = [{"targets": [target]}]
    job["basic_auth"]["password_file"] = str(password_file)
    return yaml.safe_dump(
        {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [job]}
    )


def grafana_up(prometheus: PrometheusServer) -> float | None:
    result = prometheus.query('up{job="grafana"}')
    return float(result[0]["value"][1]) if result else None


@pytest.mark.parametrize(("secret", "up"), [(PASSWORD, 1.0), ("not-the-password", 0.0)])
def test_the_grafana_job_logs_in_with_the_secret(
    stand_in: GrafanaMetricsStandIn,
    make_prometheus: Callable[..., PrometheusServer],
    tmp_path: Path,
    secret: str,
    up: float,
) -> None:
    # Docker writes a secret without a trailing newline; run.sh creates them with printf '%s'.
    password_file = tmp_path / "grafana_metrics_password"
    password_file.write_text(secret)
    prometheus = make_prometheus(job_config(f"127.0.0.1:{stand_in.port}", password_file))
    wait_for(lambda: grafana_up(prometheus) is not None, 30, "a scrape of grafana", prometheus.proc)
    assert grafana_up(prometheus) == up
    assert stand_in.answers and set(stand_in.answers) == {200 if up else 401}
    if up:
        assert prometheus.query('grafana_build_info{job="grafana"}'), "the scraped metrics are stored"
