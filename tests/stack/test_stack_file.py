"""stack.yml keeps the platform's promises: segmentation, published ports, pinned images,
secrets, persistence, limits and health checks (CONTRACT section 6), in the default profile
and in the secure one (stack.yml + stack.secure.yml): the `stack` fixture is each in turn."""

from __future__ import annotations

import re
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.servers import REPO_ROOT
from tests.stack.conftest import stack_config

# CONTRACT section 6, "Required pairs", one line each; Prometheus' pairs are the
# services it scrapes (the adapter, the auth server, Kong, InfluxDB, Grafana), and the
# Grafana-Prometheus pair is the same pair as "Prometheus scrapes Grafana".
REQUIRED_PAIRS = {
    frozenset({"mqtt_broker", "adapter"}),  # broker-adapter
    frozenset({"adapter", "influxdb"}),  # adapter-InfluxDB
    frozenset({"influxdb", "grafana"}),  # InfluxDB-Grafana
    frozenset({"auth_server", "mysql"}),  # auth server-MySQL
    frozenset({"mysql", "phpmyadmin"}),  # MySQL-phpMyAdmin
    frozenset({"kong", "auth_server"}),  # Kong-auth server
    frozenset({"auth_server", "influxdb"}),  # auth server-InfluxDB (HTTP data path)
    frozenset({"auth_server", "mqtt_broker"}),  # auth server-broker (account provisioning)
    frozenset({"prometheus", "adapter"}),  # Prometheus-each scraped service
    frozenset({"prometheus", "auth_server"}),
    frozenset({"prometheus", "kong"}),
    frozenset({"prometheus", "influxdb"}),
    frozenset({"prometheus", "grafana"}),  # ... and Grafana-Prometheus
    # Not in the contract's list: the optional simulator service must reach the broker,
    # and only the broker, like a device.
    frozenset({"simulator", "mqtt_broker"}),
    # Alert delivery and broker metrics (contract: Prometheus-Alertmanager, and a broker
    # metrics exporter-broker; Prometheus scrapes both).
    frozenset({"prometheus", "alertmanager"}),
    frozenset({"broker_exporter", "mqtt_broker"}),
    frozenset({"prometheus", "broker_exporter"}),
    frozenset({"grafana", "alertmanager"}),  # Grafana-Alertmanager (allowed; its data source)
}

SERVICES = {
    "mqtt_broker",
    "influxdb",
    "adapter",
    "grafana",
    "auth_server",
    "mysql",
    "phpmyadmin",
    "kong",
    "prometheus",
    "simulator",
    "broker_exporter",
    "alertmanager",
}

# (service, published port, container port): exactly these, nothing else published. The
# secure profile publishes MQTT over TLS and HTTPS instead of MQTT and HTTP.
PUBLISHED = {
    "open": {
        ("mqtt_broker", 1883, 1883),
        ("grafana", 80, 3000),
        ("phpmyadmin", 8081, 80),
        ("kong", 8080, 8000),
    },
    "secure": {
        ("mqtt_broker", 8883, 8883),
        ("grafana", 80, 3000),
        ("phpmyadmin", 8081, 80),
        ("kong", 8443, 8443),
    },
}

VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]

# Every image pinned to a release (the project's own ones to the project version).
PINNED_IMAGES = {
    "mqtt_broker": r"eclipse-mosquitto:2\.0\.\d+",
    "influxdb": r"influxdb:1\.8\.\d+",
    "adapter": rf"iot-platform/adapter:{re.escape(VERSION)}",
    "grafana": r"grafana/grafana:11\.3\.0",
    "auth_server": rf"iot-platform/auth-server:{re.escape(VERSION)}",
    "mysql": r"mysql:8\.\d+\.\d+",
    "phpmyadmin": r"phpmyadmin:5\.\d+\.\d+",
    "kong": r"kong:3\.\d+\.\d+",
    "prometheus": r"prom/prometheus:v\d+\.\d+\.\d+",
    "simulator": rf"iot-platform/simulator:{re.escape(VERSION)}",
    "broker_exporter": rf"iot-platform/broker-exporter:{re.escape(VERSION)}",
    "alertmanager": r"prom/alertmanager:v\d+\.\d+\.\d+",
}

# Persistent data: (service, named volume, mount point in the container).
DATA_VOLUMES = {
    ("mqtt_broker", "mosquitto_data", "/mosquitto/data"),
    ("mqtt_broker", "mosquitto_log", "/mosquitto/log"),
    ("influxdb", "influxdb_data", "/var/lib/influxdb"),
    ("grafana", "grafana_data", "/var/lib/grafana"),
    ("mysql", "mysql_data", "/var/lib/mysql"),
    ("prometheus", "prometheus_data", "/prometheus"),
    ("alertmanager", "alertmanager_data", "/alertmanager"),
}

# Where a project image defines its own health check instead of stack.yml.
DOCKERFILES = {
    "adapter": "adapter/Dockerfile",
    "auth_server": "auth_server/Dockerfile",
    "simulator": "simulator/Dockerfile",
    "broker_exporter": "broker_exporter/Dockerfile",
}


def network_members(stack: dict[str, Any]) -> dict[str, set[str]]:
    members: dict[str, set[str]] = defaultdict(set)
    for name, service in stack["services"].items():
        for network in service.get("networks") or {}:
            members[network].add(name)
    return members


def shares_network(stack: dict[str, Any], a: str, b: str) -> bool:
    return any({a, b} <= who for who in network_members(stack).values())


def env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def test_every_component_is_a_service(stack: dict[str, Any]) -> None:
    assert set(stack["services"]) == SERVICES


def test_no_service_is_left_on_the_default_network(stack: dict[str, Any]) -> None:
    # A service without `networks` joins the stack's default network, shared by all such.
    lonely = [name for name, service in stack["services"].items() if not service.get("networks")]
    assert lonely == []


def test_networks_are_exactly_the_required_pairs(stack: dict[str, Any]) -> None:
    members = network_members(stack)
    not_pairs = {net: sorted(who) for net, who in members.items() if len(who) != 2}
    assert not_pairs == {}, "every network joins exactly two services"
    pairs = [frozenset(who) for who in members.values()]
    assert len(pairs) == len(set(pairs)), "one network per pair"
    assert set(pairs) == REQUIRED_PAIRS


def test_networks_are_overlay_networks_of_the_stack(stack: dict[str, Any]) -> None:
    assert set(stack["networks"]) == set(network_members(stack)), "every network is used"
    for name, network in stack["networks"].items():
        assert network.get("driver") == "overlay", name
        assert not network.get("external"), name
        assert not network.get("attachable"), f"{name}: no container outside the stack may join"


def test_published_ports_are_exactly_the_four_public_ones(stack: dict[str, Any], profile: str) -> None:
    published = {
        (name, int(port["published"]), int(port["target"]))
        for name, service in stack["services"].items()
        for port in service.get("ports") or []
    }
    assert published == PUBLISHED[profile]
    public = {"open": {1883, 80, 8081, 8080}, "secure": {8883, 80, 8081, 8443}}[profile]
    assert {p for _, p, _ in published} == public


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_image_is_pinned(stack: dict[str, Any], name: str) -> None:
    image = stack["services"][name]["image"]
    assert not image.endswith(":latest")
    assert re.fullmatch(PINNED_IMAGES[name], image), f"{name}: {image}"


def test_references_are_defined_and_definitions_used(stack: dict[str, Any]) -> None:
    used: dict[str, set[str]] = {"configs": set(), "secrets": set(), "volumes": set()}
    for name, service in stack["services"].items():
        for kind in ("configs", "secrets"):
            for ref in service.get(kind) or []:
                assert ref["source"] in stack[kind], f"{name} uses undefined {kind} {ref['source']}"
                used[kind].add(ref["source"])
        for mount in service.get("volumes") or []:
            # Bind mounts would tie a service to one host's folder layout.
            assert mount["type"] == "volume", f"{name}: {mount}"
            assert mount["source"] in stack["volumes"], f"{name} uses undefined volume {mount['source']}"
            used["volumes"].add(mount["source"])
    for kind, names in used.items():
        assert set(stack[kind]) == names, f"defined but unused {kind}: {set(stack[kind]) - names}"


def test_data_lives_in_named_volumes(stack: dict[str, Any]) -> None:
    mounts = {
        (name, mount["source"], mount["target"])
        for name, service in stack["services"].items()
        for mount in service.get("volumes") or []
    }
    assert mounts == DATA_VOLUMES
    # Not external and not named elsewhere: `docker stack rm` keeps them, clean.sh asks.
    assert all(not (spec or {}).get("external") for spec in stack["volumes"].values())


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_stateful_services_stay_on_the_data_node_and_never_overlap(stack: dict[str, Any], name: str) -> None:
    service = stack["services"][name]
    deploy = service["deploy"]
    if service.get("volumes"):
        assert "node.labels.iot.data == true" in deploy["placement"]["constraints"]
        assert deploy["update_config"]["order"] == "stop-first"
        assert deploy["rollback_config"]["order"] == "stop-first"
        assert int(deploy.get("replicas", 1)) == 1


def test_adapter_replicas_may_run_on_any_node_not_labelled_against_them(stack: dict[str, Any]) -> None:
    placement = stack["services"]["adapter"]["deploy"]["placement"]
    # Not pinned to the data node (replicas spread over the swarm), kept off a node only by
    # the operator's label; never capped per node, so a lost node's replica can start on a
    # node that runs one already (else its shared-subscription share waits in the broker).
    assert placement["constraints"] == ["node.labels.iot.adapter != false"]
    assert "max_replicas_per_node" not in placement
    assert "preferences" not in placement


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_config_files_exist(stack: dict[str, Any], name: str) -> None:
    for ref in stack["services"][name].get("configs") or []:
        path = Path(stack["configs"][ref["source"]]["file"])
        assert path.is_file(), f"{name}: config {ref['source']} needs {path}"


def test_config_names_are_unique_and_versioned(stack: dict[str, Any]) -> None:
    names = [config["name"] for config in stack["configs"].values()]
    assert len(names) == len(set(names))
    # Without run.sh's hashes the names say so; tests/stack/test_scripts.py checks run.sh's.
    assert all(re.fullmatch(r"iot_[a-z0-9_]+-manual", name) for name in names), names


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_has_limits_restart_and_update_policies(stack: dict[str, Any], name: str) -> None:
    deploy = stack["services"][name]["deploy"]
    limits = deploy["resources"]["limits"]
    reservations = deploy["resources"]["reservations"]
    assert float(limits["cpus"]) > 0
    assert 0 < int(reservations["memory"]) <= int(limits["memory"])
    assert float(reservations["cpus"]) <= float(limits["cpus"])
    # A simulator run with --duration or --count ends by itself: only failures restart it.
    assert deploy["restart_policy"]["condition"] == ("on-failure" if name == "simulator" else "any")
    assert deploy["update_config"]["failure_action"] == "rollback"
    assert deploy["update_config"]["parallelism"] == 1


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_has_a_health_check(stack: dict[str, Any], name: str) -> None:
    check = stack["services"][name].get("healthcheck")
    if check is not None:
        assert not check.get("disable")
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1
        return
    # Not in stack.yml: then the project's own image must define it.
    assert name in DOCKERFILES, f"{name} has no health check"
    # Continuation lines joined: HEALTHCHECK options and CMD are often split over two.
    dockerfile = (REPO_ROOT / DOCKERFILES[name]).read_text().replace("\\\n", " ")
    assert re.search(r"^HEALTHCHECK\s+(--\S+\s+)*CMD\s", dockerfile, re.M), (
        f"{DOCKERFILES[name]}: no HEALTHCHECK"
    )


def test_passwords_come_only_from_secret_files(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        targets = {f"/run/secrets/{ref['target']}" for ref in service.get("secrets") or []}
        for key, value in env(service).items():
            if re.search(r"PASSWORD|SECRET", key):
                assert key.endswith("_FILE"), f"{name}: {key} must be read from a secret file"
                assert value in targets, f"{name}: {key}={value} is not one of its secrets"
            # Every secret a setting names (INFLUX_USERS, Kong's key...) is mounted there.
            for path in re.findall(r"/run/secrets/[\w.-]+", value):
                assert path in targets, f"{name}: {key} names {path}, which is not one of its secrets"
    for key, secret in stack["secrets"].items():
        assert secret["name"].startswith("iot_")
        if key == "alertmanager_config":
            # The one secret the stack makes itself: the configuration run.sh renders (with
            # the receivers' URLs and passwords), named after its content.
            assert secret["file"] == str(REPO_ROOT / "alertmanager" / "alertmanager.yml")
            assert secret["name"] == "iot_alertmanager_config-manual"
            continue
        # Created by run.sh (or the operator); never a file in the repository.
        assert secret.get("external") is True


def test_grafana_login_is_the_assistant_account_only(stack: dict[str, Any]) -> None:
    grafana = env(stack["services"]["grafana"])
    assert grafana["GF_SECURITY_ADMIN_USER"] == "assistant"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana


def test_grafana_provisioning_mounts_match_the_provider(stack: dict[str, Any]) -> None:
    grafana = stack["services"]["grafana"]
    targets = {ref["target"] for ref in grafana["configs"]}
    provider = yaml.safe_load(
        (REPO_ROOT / "grafana_db/grafana_provisioning/dashboards/dashboards.yml").read_text()
    )
    dashboards_dir = provider["providers"][0]["options"]["path"]
    for source in (REPO_ROOT / "grafana_db/grafana_provisioning/grafana_dashboards").glob("*.json"):
        assert f"{dashboards_dir}/{source.name}" in targets, f"{source.name} is not mounted"
    assert "/etc/grafana/provisioning/datasources/datasources.yml" in targets
    home = env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in targets


def test_grafana_links_point_at_the_platform(stack: dict[str, Any], tmp_path: Path) -> None:
    # Deployed by hand: port 80 of the machine itself (Grafana's own default would be :3000).
    assert env(stack["services"]["grafana"])["GF_SERVER_ROOT_URL"] == "http://localhost/"
    # run.sh passes the node's address (or the operator's GRAFANA_ROOT_URL) through.
    chosen = stack_config({"GRAFANA_ROOT_URL": "https://grafana.example.com/"}, tmp_path)
    assert env(chosen["services"]["grafana"])["GF_SERVER_ROOT_URL"] == "https://grafana.example.com/"


def test_grafana_metrics_need_a_login(stack: dict[str, Any]) -> None:
    # Port 80 is public and Grafana serves /metrics there too; with a user name and a
    # password set it answers 401 to everyone else (pkg/api/http_server.go).
    grafana = env(stack["services"]["grafana"])
    assert grafana["GF_METRICS_BASIC_AUTH_USERNAME"]
    assert grafana["GF_METRICS_BASIC_AUTH_PASSWORD__FILE"] == "/run/secrets/grafana_metrics_password"
    assert str(grafana.get("GF_METRICS_ENABLED", "true")).lower() == "true", "Prometheus scrapes it"


def test_kong_is_db_less_with_admin_api_off(stack: dict[str, Any], profile: str) -> None:
    kong = stack["services"]["kong"]
    settings = env(kong)
    assert settings["KONG_DATABASE"] == "off"
    assert settings["KONG_ADMIN_LISTEN"] == "off"
    assert settings["KONG_STATUS_LISTEN"].endswith(":8100")
    assert settings["KONG_DECLARATIVE_CONFIG"] in {ref["target"] for ref in kong["configs"]}
    # One proxy listener, the published one: plain HTTP, or in the secure profile HTTPS only.
    (port,) = kong["ports"]
    listen = {"open": f"0.0.0.0:{port['target']}", "secure": f"0.0.0.0:{port['target']} ssl"}[profile]
    assert settings["KONG_PROXY_LISTEN"] == listen
    secrets = {f"/run/secrets/{ref['target']}" for ref in kong.get("secrets") or []}
    if profile == "secure":
        assert {settings["KONG_SSL_CERT"], settings["KONG_SSL_CERT_KEY"]} <= secrets
    else:
        assert "KONG_SSL_CERT" not in settings and not secrets


# Settings that would make Kong take a client's address from a request header (which any
# client can write) instead of the connection: none may be set (Kong 3.8 trusts no
# forwarding header unless trusted_ips lists the sender).
KONG_FORWARDING_SETTINGS = ("KONG_TRUSTED_IPS", "KONG_REAL_IP_HEADER", "KONG_REAL_IP_RECURSIVE")


def test_kong_sees_each_clients_own_address(stack: dict[str, Any]) -> None:
    kong = stack["services"]["kong"]
    (port,) = kong["ports"]
    # Host mode: the routing mesh (ingress) would replace every client's address with the
    # node's own, so that all clients shared one rate-limit budget.
    assert port["mode"] == "host"
    # On every node, so that every node's address answers as with the routing mesh.
    assert kong["deploy"]["mode"] == "global"
    assert "replicas" not in kong["deploy"]
    # A host-mode port is held by one task per node: the old task must go first.
    assert kong["deploy"]["update_config"]["order"] == "stop-first"
    assert kong["deploy"]["rollback_config"]["order"] == "stop-first"
    assert not set(KONG_FORWARDING_SETTINGS) & set(env(kong))


def test_mysql_root_is_never_reachable_from_phpmyadmin(stack: dict[str, Any]) -> None:
    # New volumes: root exists for localhost only (inside the mysql container).
    assert env(stack["services"]["mysql"])["MYSQL_ROOT_HOST"] == "localhost"
    # Any volume (also one set up with root@'%'): phpMyAdmin refuses the name root.
    phpmyadmin = stack["services"]["phpmyadmin"]
    (ref,) = [r for r in phpmyadmin["configs"] if r["target"] == "/etc/phpmyadmin/config.user.inc.php"]
    settings = Path(stack["configs"][ref["source"]]["file"]).read_text()
    assert "['AllowRoot'] = false;" in settings
    assert "['AllowNoPassword'] = false;" in settings
    assert "PMA_USER" not in env(phpmyadmin), "no stored login: everyone types their own"


def test_influxdb_clients_log_in_as_their_own_users(stack: dict[str, Any], profile: str) -> None:
    """Each client of InfluxDB has its own user (ignored without authentication); in the
    secure profile InfluxDB creates exactly those users, with exactly these rights, from the
    same secrets."""
    datasources = yaml.safe_load(
        (REPO_ROOT / "grafana_db/grafana_provisioning/datasources/datasources.yml").read_text()
    )
    (influx_source,) = [ds for ds in datasources["datasources"] if ds["type"] == "influxdb"]
    grafana_password = re.fullmatch(r"\$__file\{(.+)\}", influx_source["secureJsonData"]["basicAuthPassword"])
    assert grafana_password is not None
    clients = {
        # READ too: it reads the series it keeps within the budget (SHOW SERIES).
        env(stack["services"]["adapter"])["INFLUXDB_USERNAME"]: (
            "ALL",
            env(stack["services"]["adapter"])["INFLUXDB_PASSWORD_FILE"],
        ),
        env(stack["services"]["auth_server"])["INFLUXDB_USERNAME"]: (
            "ALL",
            env(stack["services"]["auth_server"])["INFLUXDB_PASSWORD_FILE"],
        ),
        influx_source["basicAuthUser"]: ("READ", grafana_password.group(1)),
    }
    grafana_secrets = {f"/run/secrets/{r['target']}" for r in stack["services"]["grafana"]["secrets"]}
    assert grafana_password.group(1) in grafana_secrets
    influxdb = env(stack["services"]["influxdb"])
    if profile == "open":
        assert influxdb["INFLUXDB_HTTP_AUTH_ENABLED"] == "false"
        assert "INFLUX_USERS" not in influxdb
        return
    assert influxdb["INFLUXDB_HTTP_AUTH_ENABLED"] == "true"
    assert influxdb["INFLUXDB_CONTINUOUS_QUERIES_ENABLED"] == "false"
    users = {}
    for entry in influxdb["INFLUX_USERS"].split():
        name, right, path = entry.split(":")
        users[name] = (right, path)
    assert users == clients
    assert influxdb["INFLUX_ADMIN_USER"] not in users
    assert stack["services"]["influxdb"]["entrypoint"] == [
        "/docker-entrypoint-initdb.d/init_influx_db.sh",
        "--serve",
    ]


def test_the_adapter_serves_its_metrics_on_its_overlay_networks(stack: dict[str, Any]) -> None:
    # The adapter's own default is loopback; in the stack Prometheus must reach it.
    assert env(stack["services"]["adapter"])["METRICS_ADDRESS"] == "0.0.0.0"


def test_the_secure_profile_changes_only_what_it_says(
    open_stack: dict[str, Any], secure_stack: dict[str, Any]
) -> None:
    """stack.secure.yml and the port variables change exactly these settings; every other
    one is the default profile's."""

    def flat(value: Any, path: str = "") -> dict[str, Any]:
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(item, f"{path}/{key}").items()}
        if isinstance(value, list) and all(isinstance(item, dict) for item in value) and value:
            keyed = {str(item.get("source", item.get("target", i))): item for i, item in enumerate(value)}
            return {k: v for key, item in keyed.items() for k, v in flat(item, f"{path}/{key}").items()}
        return {path: value}

    before, after = flat(open_stack), flat(secure_stack)
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    expected_prefixes = (
        "/services/mqtt_broker/ports/",
        "/services/mqtt_broker/secrets/mqtt_tls_",
        "/services/kong/ports/",
        "/services/kong/environment/KONG_PROXY_LISTEN",
        "/services/kong/environment/KONG_SSL_CERT",
        "/services/kong/secrets/kong_tls_",
        "/services/influxdb/entrypoint",
        "/services/influxdb/environment/",
        "/services/influxdb/secrets/",
        "/services/auth_server/environment/MQTT_SECURE",
        "/configs/mosquitto_conf/file",
        "/secrets/influxdb_admin_password/",
        "/secrets/mqtt_tls_",
        "/secrets/kong_tls_",
    )
    unexpected = sorted(path for path in changed if not path.startswith(expected_prefixes))
    assert unexpected == []
    assert any(path.startswith("/services/kong/ports/") for path in changed)


def test_influxdb_runs_the_init_script_on_first_start(stack: dict[str, Any]) -> None:
    influxdb = stack["services"]["influxdb"]
    (ref,) = [r for r in influxdb["configs"] if r["target"].startswith("/docker-entrypoint-initdb.d/")]
    assert Path(stack["configs"][ref["source"]]["file"]) == REPO_ROOT / "database/init_influx_db.sh"
    assert ref["mode"] & 0o555 == 0o555


def test_services_reach_every_host_they_are_configured_with(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        for key, value in env(service).items():
            if key.endswith("_HOST") and value in SERVICES:
                assert shares_network(stack, name, value), f"{name} cannot reach {key}={value}"


def test_prometheus_reaches_every_scrape_target(stack: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO_ROOT / "prometheus/prometheus.yml").read_text())
    hosts: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            hosts |= {target.rsplit(":", 1)[0] for target in static["targets"]}
        for dns in job.get("dns_sd_configs", []):
            hosts |= {name.removeprefix("tasks.") for name in dns["names"]}
    hosts.discard("localhost")
    assert hosts == {
        "adapter",
        "auth_server",
        "kong",
        "influxdb",
        "grafana",
        "broker_exporter",
        "alertmanager",
    }
    for host in hosts:
        assert shares_network(stack, "prometheus", host), host


def test_prometheus_sends_alerts_to_the_alertmanager(stack: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO_ROOT / "prometheus/prometheus.yml").read_text())
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    assert shares_network(stack, "prometheus", "alertmanager")
    command = stack["services"]["alertmanager"]["command"]
    (secret,) = stack["services"]["alertmanager"]["secrets"]
    assert f"--config.file=/run/secrets/{secret['target']}" in command
    assert secret["source"] == "alertmanager_config"


def test_grafana_reaches_its_data_sources(stack: dict[str, Any]) -> None:
    config = yaml.safe_load(
        (REPO_ROOT / "grafana_db/grafana_provisioning/datasources/datasources.yml").read_text()
    )
    hosts = {urlsplit(source["url"]).hostname for source in config["datasources"]}
    assert hosts == {"influxdb", "prometheus", "alertmanager"}
    for host in hosts:
        assert shares_network(stack, "grafana", host), host


def test_kong_routes_only_to_services_it_shares_a_network_with(stack: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO_ROOT / "kong/kong.yml").read_text())
    hosts = set()
    for service in config.get("services", []):
        hosts.add(urlsplit(service["url"]).hostname if "url" in service else service["host"])
    assert hosts == {"auth_server"}
    assert shares_network(stack, "kong", "auth_server")


def test_adapter_and_auth_server_agree_on_the_adapter_account(stack: dict[str, Any]) -> None:
    adapter = env(stack["services"]["adapter"])
    auth = env(stack["services"]["auth_server"])
    broker = env(stack["services"]["mqtt_broker"])
    assert adapter["MQTT_USERNAME"] == auth["ADAPTER_MQTT_USERNAME"]
    assert adapter["MQTT_PASSWORD_FILE"] == auth["ADAPTER_MQTT_PASSWORD_FILE"]
    assert broker["MQTT_ADMIN_USERNAME"] == auth["MQTT_ADMIN_USERNAME"]
    exporter = env(stack["services"]["broker_exporter"])
    assert exporter["MQTT_USERNAME"] == auth["BROKER_EXPORTER_MQTT_USERNAME"]
    assert exporter["MQTT_PASSWORD_FILE"] == auth["BROKER_EXPORTER_MQTT_PASSWORD_FILE"]
    assert adapter["MQTT_TOPIC"] == "#"
    # One persistent session per replica slot (Swarm fills in the template), named after a
    # secret so that nobody can take it over.
    assert "MQTT_CLIENT_ID" not in adapter
    assert adapter["MQTT_CLIENT_ID_FILE"] == "/run/secrets/adapter_mqtt_client_id"
    assert "{{.Task.Slot}}" in adapter["MQTT_CLIENT_ID_SUFFIX"]
    assert stack["secrets"]["adapter_mqtt_client_id"]["name"] == "iot_adapter_mqtt_client_id"


def test_auth_server_and_mysql_agree_on_the_account(stack: dict[str, Any]) -> None:
    auth = env(stack["services"]["auth_server"])
    mysql = env(stack["services"]["mysql"])
    for key in ("MYSQL_DATABASE", "MYSQL_USER", "MYSQL_PASSWORD_FILE"):
        assert auth[key] == mysql[key], key
    assert env(stack["services"]["phpmyadmin"])["PMA_HOST"] == "mysql"


@pytest.mark.parametrize(
    ("env", "replicas", "workers"),
    [
        ({}, 1, "2"),
        ({"AUTH_SERVER_REPLICAS": "3"}, 3, "2"),
        ({"AUTH_SERVER_REPLICAS": "2", "AUTH_WORKERS": "4"}, 2, "4"),
    ],
)
def test_the_http_api_scales_by_replicas_and_workers(
    tmp_path: Path, env: dict[str, str], replicas: int, workers: str
) -> None:
    """AUTH_SERVER_REPLICAS and AUTH_WORKERS reach the auth server's service; its CPU limit
    lets the default two workers run at once."""
    auth = stack_config(env, tmp_path)["services"]["auth_server"]
    assert int(auth["deploy"]["replicas"]) == replicas
    assert auth["environment"]["AUTH_WORKERS"] == workers
    assert float(auth["deploy"]["resources"]["limits"]["cpus"]) >= 2


@pytest.mark.parametrize(("env", "mode"), [({}, "failures"), ({"AUTH_ACCESS_LOG": "all"}, "all")])
def test_the_access_log_setting_reaches_the_auth_server(
    tmp_path: Path, env: dict[str, str], mode: str
) -> None:
    auth = stack_config(env, tmp_path)["services"]["auth_server"]
    assert auth["environment"]["AUTH_ACCESS_LOG"] == mode
