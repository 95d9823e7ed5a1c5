"""The Platform Health dashboard: provisioned identity, coverage, and every query run by a
real Prometheus that scraped the real adapter."""

from __future__ import annotations

from typing import Any

import pytest

from tests.prometheus.platform_files import (
    alert_rules,
    as_sent_by_grafana,
    dashboard,
    dashboard_panels,
    exported_names,
    own_metric_names,
)
from tests.prometheus.scraped import ScrapedPlatform
from tests.servers import ServerError

PROMETHEUS_DATASOURCE = {"type": "prometheus", "uid": "prometheus"}

# What an operator must find on the dashboard → a series some panel has to query.
REQUIRED = {
    "ingest rate": "adapter_messages_received_total",
    "stored points": "adapter_points_written_total",
    "rejects by reason": "adapter_messages_rejected_total",
    "write latency": "adapter_batch_write_seconds_bucket",
    "backlog": "adapter_unacked_messages",
    "devices seen": "adapter_device_last_seen_timestamp_seconds",
    "API request rate and errors": "auth_http_requests_total",
    "failed logins": "auth_logins_total",
    "firing alerts": "ALERTS",
    "components up": "up",
    "broker clients": "mosquitto_clients_connected",
    "broker messages in and out": "mosquitto_publish_messages_received_total",
    "messages the broker dropped": "mosquitto_publish_messages_dropped_total",
    "the broker's queue": "mosquitto_store_messages",
    "broker traffic": "mosquitto_bytes_received_total",
    "broker memory": "mosquitto_heap_bytes",
}


def targets() -> list[dict[str, Any]]:
    return [t for panel in dashboard_panels() for t in panel["targets"]]


def test_dashboard_identity() -> None:
    board = dashboard()
    assert board["uid"] == "platform-health"
    assert board["title"] == "Platform Health"
    # Provisioned dashboards must not carry a database id of another Grafana.
    assert board["id"] is None
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_and_query_uses_the_prometheus_datasource() -> None:
    panels = list(dashboard_panels())
    assert panels
    for panel in panels:
        assert panel["datasource"] == PROMETHEUS_DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == PROMETHEUS_DATASOURCE, panel["title"]


@pytest.mark.parametrize("what", sorted(REQUIRED))
def test_dashboard_shows(what: str) -> None:
    series = REQUIRED[what]
    exprs = [t["expr"] for t in targets()]
    assert any(f"{series}{{" in e or f"{series}[" in e or f"{series})" in e or e == series for e in exprs), (
        f"no panel queries {series} ({what})"
    )


def test_every_query_is_valid_promql(scraped: ScrapedPlatform) -> None:
    errors = {}
    for target in targets():
        expr = as_sent_by_grafana(target["expr"])
        try:
            scraped.prometheus.query(expr)
        except ServerError as exc:
            errors[target["expr"]] = str(exc)
    assert errors == {}


def test_adapter_and_auth_server_panels_show_data(scraped: ScrapedPlatform) -> None:
    """Each panel built only on the adapter's and auth server's series shows something after
    real traffic (Kong's and the alert panels cannot: nothing feeds them here)."""
    empty = []
    for panel in dashboard_panels():
        exprs = [t["expr"] for t in panel["targets"]]
        names = set().union(*map(own_metric_names, exprs))
        if not names or any(other in e for e in exprs for other in ("kong_", "ALERTS")):
            continue
        if not any(scraped.prometheus.query(as_sent_by_grafana(e)) for e in exprs):
            empty.append(panel["title"])
    assert empty == []


def test_series_named_in_dashboard_and_alerts_exist(scraped: ScrapedPlatform) -> None:
    """A misspelt metric is valid PromQL that silently shows nothing: compare every adapter
    and auth server series the dashboard and the rules name with what the real ones export."""
    exported = (
        exported_names(scraped.adapter.metrics_text())
        | exported_names(scraped.auth_server.metrics_text())
        | exported_names(scraped.exporter.metrics_text())
    )
    exprs = [t["expr"] for t in targets()] + [r["expr"] for r in alert_rules()]
    named = {n for e in exprs for n in own_metric_names(e)}
    assert {n.split("_")[0] for n in named} == {"adapter", "auth", "mosquitto"}
    assert named - exported == set()
