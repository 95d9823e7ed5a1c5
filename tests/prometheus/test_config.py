"""prometheus/: the configuration and alert rules, checked by promtool and by Prometheus itself."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.prometheus.platform_files import ALERTS, CONFIG, RULE_TESTS, alert_rules, load_yaml
from tests.servers import PrometheusServer, require_binary

# The alerts the monitoring issue asks for, by the condition each one watches.
REQUIRED_ALERTS = {
    "ComponentDown": "a scraped component does not answer",
    "AdapterNotStoring": "the adapter receives but stores nothing",
    "AdapterWriteRetries": "InfluxDB writes keep failing and are retried",
    "AdapterBacklogNearLimit": "the unacked backlog is near MAX_UNACKED",
    "DeviceSilent": "a device that reported in the last day is silent for 10 minutes",
    "AuthServerErrors": "the auth server answers 5xx",
    "FailedLoginBurst": "a burst of failed logins",
    "BrokerUnreachable": "the MQTT broker does not answer",
    "BrokerMessagesDropped": "the broker dropped messages (a queue overflowed)",
    "BrokerQueueGrowing": "the broker's queue grows",
}

# job → (how its targets are found, the name looked up or the target, metrics path)
SCRAPE_JOBS = {
    "adapter": ("dns", "tasks.adapter", 8000, "/metrics"),
    "auth_server": ("dns", "tasks.auth_server", 5000, "/metrics"),
    "kong": ("dns", "tasks.kong", 8100, "/metrics"),
    "influxdb": ("static", "influxdb", 8086, "/metrics"),
    "grafana": ("static", "grafana", 3000, "/metrics"),
    "broker_exporter": ("static", "broker_exporter", 9234, "/metrics"),
    "alertmanager": ("static", "alertmanager", 9093, "/metrics"),
    "prometheus": ("static", "localhost", 9090, "/metrics"),
}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_promtool_accepts_the_config_and_finds_its_rule_file() -> None:
    result = promtool("check", "config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(alert_rules())} rules found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "prometheus/tests/*.yml holds the rule unit tests"
    result = promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def alert_cases() -> dict[str, list[list[dict]]]:
    """alertname → the exp_alerts list of every evaluation the unit tests check."""
    cases: dict[str, list[list[dict]]] = {}
    for path in RULE_TESTS:
        for test in load_yaml(path)["tests"]:
            for check in test.get("alert_rule_test", []):
                cases.setdefault(check["alertname"], []).append(check.get("exp_alerts") or [])
    return cases


@pytest.mark.parametrize("alert", sorted(r["alert"] for r in alert_rules()))
def test_every_alert_has_a_firing_and_a_silent_unit_test(alert: str) -> None:
    cases = alert_cases().get(alert, [])
    assert any(cases), f"{alert}: no unit test where it fires"
    assert any(not c for c in cases), f"{alert}: no unit test where it stays silent"


@pytest.mark.parametrize("alert", sorted(r["alert"] for r in alert_rules()))
def test_unit_tests_fail_when_an_alert_never_fires(alert: str, tmp_path: Path) -> None:
    """The unit tests really watch each alert: silencing its rule makes them fail."""
    rules = load_yaml(ALERTS)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = "vector(0) > 1"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / "tests").mkdir()
    for path in RULE_TESTS:
        (tmp_path / "tests" / path.name).write_text(path.read_text())
    result = promtool("test", "rules", *sorted((tmp_path / "tests").glob("*.yml")))
    assert result.returncode != 0
    assert f"alertname: {alert}," in result.stdout + result.stderr


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS))
def test_required_alert_exists(alert: str) -> None:
    assert alert in {r["alert"] for r in alert_rules()}, REQUIRED_ALERTS[alert]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_tells_an_operator_what_to_do(rule: dict) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning"}
    summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
    assert summary.strip() and "\n" not in summary
    # A description names something to look at or run, not only the symptom.
    assert re.search(r"`[^`]+`|dashboard|grafana|DEBUG_DATA_FLOW", description, re.IGNORECASE), description


@pytest.mark.parametrize("job", sorted(SCRAPE_JOBS))
def test_scrape_job(job: str) -> None:
    kind, name, port, path = SCRAPE_JOBS[job]
    jobs = {j["job_name"]: j for j in load_yaml(CONFIG)["scrape_configs"]}
    config = jobs[job]
    assert config.get("metrics_path", "/metrics") == path
    if kind == "dns":
        # Every replica is its own target: one A record per task of the service.
        assert config["dns_sd_configs"] == [
            {"names": [name], "type": "A", "port": port, "refresh_interval": "30s"}
        ]
        assert "static_configs" not in config
    else:
        assert config["static_configs"] == [{"targets": [f"{name}:{port}"]}]


def test_config_scrapes_exactly_the_platform_components() -> None:
    assert {j["job_name"] for j in load_yaml(CONFIG)["scrape_configs"]} == set(SCRAPE_JOBS)


def test_prometheus_starts_with_the_shipped_files(
    make_prometheus: Callable[..., PrometheusServer],
) -> None:
    """The files exactly as the stack mounts them (alerts.yml next to prometheus.yml)."""
    prometheus = make_prometheus(CONFIG.read_text(), {"alerts.yml": ALERTS.read_text()})
    loaded = {r["name"] for g in prometheus.api("rules")["groups"] for r in g["rules"]}
    # Found through the relative `rule_files: [alerts.yml]`, as in the container.
    assert loaded == {r["alert"] for r in alert_rules()}
