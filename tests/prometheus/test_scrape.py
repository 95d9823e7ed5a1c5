"""Debian's Prometheus, with the platform's config and rules, scraping the real adapter and
the real auth server."""

from __future__ import annotations

import re
import time
from datetime import datetime

from tests.prometheus.platform_files import alert_rules
from tests.prometheus.scraped import ScrapedPlatform
from tests.servers import PrometheusServer, wait_for


def value(prometheus: PrometheusServer, expr: str) -> float:
    """The single value of `expr` now; fails when it selects nothing or several series."""
    result = prometheus.query(expr)
    assert len(result) == 1, f"{expr} → {result}"
    return float(result[0]["value"][1])


def wait_scraped_after(prometheus: PrometheusServer, job: str, moment: float) -> None:
    """Until Prometheus holds a sample of `job` scraped after `moment` (Unix time)."""

    def scraped() -> bool:
        result = prometheus.query(f'timestamp(up{{job="{job}"}})')
        return bool(result) and float(result[0]["value"][1]) > moment

    wait_for(scraped, 30, f"a scrape of {job}", prometheus.proc, prometheus.log_path)


def test_stored_points_through_prometheus_equal_what_was_published(scraped: ScrapedPlatform) -> None:
    prometheus = scraped.prometheus
    # The first scrape after the adapter stored everything must hold the final counts.
    wait_scraped_after(prometheus, "adapter", scraped.stored_at)

    assert value(prometheus, 'adapter_points_written_total{job="adapter"}') == scraped.points
    assert value(prometheus, 'adapter_messages_received_total{job="adapter"}') == scraped.received
    rejected = {
        r["metric"]["reason"]: float(r["value"][1])
        for r in prometheus.query('adapter_messages_rejected_total{job="adapter"} > 0')
    }
    assert rejected == {"not_json": 1, "bad_topic": 1}
    ignored = 'adapter_values_ignored_total{job="adapter",reason="not_numeric"}'
    assert value(prometheus, ignored) == scraped.not_numeric
    for location, station in (("UPB", "RPi_1"), ("Lab", "RPi_2")):
        selector = f'{{location="{location}",station="{station}"}}'
        seen = value(prometheus, f"adapter_device_last_seen_timestamp_seconds{selector}")
        assert scraped.published_from <= seen <= scraped.stored_at


def test_logins_and_api_responses_through_prometheus_equal_what_was_sent(scraped: ScrapedPlatform) -> None:
    prometheus = scraped.prometheus
    wait_scraped_after(prometheus, "auth_server", scraped.stored_at)

    logins = {
        r["metric"]["result"]: float(r["value"][1])
        for r in prometheus.query('auth_logins_total{job="auth_server"}')
    }
    assert logins == {"success": 1, "failure": scraped.failed_logins}
    responses = {
        r["metric"]["status"]: float(r["value"][1])
        for r in prometheus.query('auth_http_requests_total{job="auth_server",route="/api/auth/login"}')
    }
    assert responses == {"200": 1, "401": scraped.failed_logins}


def test_every_job_is_scraped_where_its_component_runs(scraped: ScrapedPlatform) -> None:
    prometheus = scraped.prometheus
    jobs = {
        "adapter",
        "auth_server",
        "influxdb",
        "prometheus",
        "broker_exporter",
        "alertmanager",
        *scraped.down_jobs,
    }
    for job in jobs:
        wait_scraped_after(prometheus, job, scraped.stored_at)
    up = {r["metric"]["job"]: float(r["value"][1]) for r in prometheus.query("up")}
    assert up == {job: 0.0 if job in scraped.down_jobs else 1.0 for job in jobs}


def unix_time(rfc3339: str) -> float:
    """Prometheus' RFC 3339 times carry nanoseconds; datetime takes microseconds."""
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", rfc3339).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed).timestamp()


def test_alert_rules_evaluate_without_errors_on_real_metrics(scraped: ScrapedPlatform) -> None:
    prometheus = scraped.prometheus
    wait_scraped_after(prometheus, "adapter", scraped.stored_at)
    scraped_at = time.time()

    def rules() -> list[dict]:
        return [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]

    def evaluated_since_scrape() -> bool:
        return all(unix_time(r["lastEvaluation"]) > scraped_at for r in rules())

    wait_for(evaluated_since_scrape, 30, "every rule to be evaluated", prometheus.proc, prometheus.log_path)
    loaded = {r["name"]: (r["health"], r.get("lastError", "")) for r in rules()}
    assert set(loaded) == {rule["alert"] for rule in alert_rules()}
    assert {name: h for name, h in loaded.items() if h[0] != "ok"} == {}


def test_broker_statistics_through_prometheus(scraped: ScrapedPlatform) -> None:
    prometheus = scraped.prometheus
    wait_scraped_after(prometheus, "broker_exporter", scraped.stored_at)
    job = '{job="broker_exporter"}'
    assert value(prometheus, f"mosquitto_exporter_connected{job}") == 1
    # The test's publisher, the adapter, the exporter; the auth server does not use MQTT here.
    assert value(prometheus, f"mosquitto_clients_connected{job}") >= 2
    # Every message published was received by the broker (nothing retained, all QoS 1).
    assert value(prometheus, f"mosquitto_publish_messages_received_total{job}") >= scraped.received
    assert value(prometheus, f"mosquitto_heap_bytes{job}") > 0


def test_prometheus_finds_the_alertmanager(scraped: ScrapedPlatform) -> None:
    active = scraped.prometheus.api("alertmanagers")["activeAlertmanagers"]
    assert [a["url"] for a in active] == [f"http://127.0.0.1:{scraped.alertmanager.port}/api/v2/alerts"]


def test_component_down_is_pending_for_unreachable_targets(scraped: ScrapedPlatform) -> None:
    prometheus = scraped.prometheus

    def pending_jobs() -> set[str]:
        return {r["metric"]["job"] for r in prometheus.query('ALERTS{alertname="ComponentDown"}')}

    wait_for(
        lambda: pending_jobs() >= scraped.down_jobs, 30, "ComponentDown", prometheus.proc, prometheus.log_path
    )
    alerts = prometheus.query('ALERTS{alertname="ComponentDown"}')
    # Pending, not firing: the rule waits 2 minutes before it fires.
    assert {(a["metric"]["job"], a["metric"]["alertstate"]) for a in alerts} == {
        (job, "pending") for job in scraped.down_jobs
    }
