"""The monitoring files under test and small readers for them (paths, queries, metric names)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import REPO_ROOT

PROMETHEUS_DIR = REPO_ROOT / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
AM_CONFIG = REPO_ROOT / "alertmanager" / "alertmanager.yml"
DASHBOARD = REPO_ROOT / "grafana_db" / "grafana_provisioning" / "grafana_dashboards" / "platform_health.json"

# Grafana replaces these before a query reaches Prometheus; values as for a 3 h dashboard.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "3h"}

# Metric families of this platform's own services, checked against what they really export.
OWN_PREFIXES = ("adapter_", "auth_", "mosquitto_")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def local_config(targets: Mapping[str, str]) -> str:
    """prometheus/prometheus.yml with each job scraping one local address, every second.

    Job names, metrics paths and rule files stay those of the real file; only discovery
    (Swarm DNS, service names) becomes the address of a server this test started, and the
    Alertmanager's address that of the `alertmanager` job's target.
    """
    config = load_yaml(CONFIG)
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    for job in config["scrape_configs"]:
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    (manager,) = config["alerting"]["alertmanagers"]
    manager["static_configs"] = [{"targets": [targets["alertmanager"]]}]
    return yaml.safe_dump(config, sort_keys=False)


# Every job of prometheus.yml (local_config needs a target for each; the alertmanager job's
# target is also where alerts are sent).
SCRAPE_JOB_NAMES = tuple(job["job_name"] for job in load_yaml(CONFIG)["scrape_configs"])


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> Iterator[dict[str, Any]]:
    """Every panel that queries (rows hold none, and no panel is nested in a collapsed row)."""
    for panel in dashboard()["panels"]:
        yield from panel.get("panels", [])
        if panel["type"] != "row":
            yield panel


def as_sent_by_grafana(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def own_metric_names(expr: str) -> set[str]:
    """Names of the adapter's, auth server's and broker exporter's series an expression selects."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # job="auth_server" names no series
    return {m for m in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_strings) if m.startswith(OWN_PREFIXES)}


def exported_names(metrics_text: str) -> set[str]:
    """Series names an exposition can produce, including families with no sample yet
    (a labelled counter appears only once one label value was used)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names
