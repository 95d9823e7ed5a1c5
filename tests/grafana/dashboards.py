"""Where the provisioning files live, and how tests read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = REPO_ROOT / "grafana_db" / "grafana_provisioning"
DATASOURCES_FILE = PROVISIONING / "datasources" / "datasources.yml"
PROVIDERS_FILE = PROVISIONING / "dashboards" / "dashboards.yml"
DASHBOARDS_DIR = PROVISIONING / "grafana_dashboards"
STACK_FILE = REPO_ROOT / "stack.yml"

# Where the agreed mounts put those files inside the Grafana container.
CONTAINER_DATASOURCES = "/etc/grafana/provisioning/datasources/datasources.yml"
CONTAINER_PROVIDERS = "/etc/grafana/provisioning/dashboards/dashboards.yml"
CONTAINER_DASHBOARDS = "/etc/grafana/provisioning/grafana_dashboards"
CONTAINER_DATA = "/var/lib/grafana"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_dashboard(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS_DIR / name).read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def panel_of_type(dashboard: dict[str, Any], panel_type: str) -> dict[str, Any]:
    found = [p for p in panels(dashboard) if p.get("type") == panel_type]
    assert len(found) == 1, f"{dashboard['title']}: expected one {panel_type} panel, found {len(found)}"
    return found[0]
