"""The checks of the end-to-end test, run by run_e2e.sh against the stack it deployed.

    python tests/e2e/checks.py --copy DIR --work DIR --probe-image IMAGE PHASE

PHASE is one of
  deployed        the first deployment: data flow, init script, auth server, Prometheus,
                  Kong's clients' addresses, phpMyAdmin and MySQL's root, the stack's
                  simulator, published ports, who reaches whom;
  before-removal  records every stored point, then queues messages for the stopped adapter;
  redeployed      after `docker stack rm` and ./run.sh: all of it is still there;
  before-backup   a dashboard edit in Grafana; messages queued for an absent persistent session;
  backup          runs the copy's ./backup.sh while a simulator publishes;
  fresh           after ./clean.sh -y and ./run.sh: a new stack, without any of that data;
  restored        after ./restore.sh -y: the data of the moment of the backup is back;
  cleaned         after ./clean.sh -y: nothing of the stack is left (--images: what run.sh built).
The multi-node e2e (run_e2e_multinode.sh) runs these phases too, on its own swarm:
  deployed-multinode  as `deployed`, with the adapter replicas on other nodes than the
                  broker and InfluxDB, and every stateful service on the iot.data node;
  node-loss       a worker running an adapter replica is powered off mid-stream: nothing is lost;
  drain           `docker node update --availability drain` mid-stream: nothing is lost;
  scaled-down     after ADAPTER_REPLICAS=1 ./run.sh: the broker holds the removed slot's share;
  scaled-up       after ADAPTER_REPLICAS=2 ./run.sh again: that share is stored;
  secure          after ./run.sh --secure: a device account publishes over TLS (8883, run.sh's
                  CA), a wrong password and an anonymous client are refused, the adapters store.
Every check prints PASS or FAIL with what it saw; the exit status is 1 if any failed.
Only containers of the stack, probe containers started here, 127.0.0.1 and this machine's
own addresses on veth pairs to network namespaces made here (or, on several nodes, the
nodes' own addresses) are contacted.

Environment (set by run_e2e_multinode.sh; unset, the stack runs on the one engine that
DOCKER_HOST names): IOT_E2E_NODES="NAME=unix:///...sock,..." the swarm's nodes by hostname
(the manager first) and their engines' sockets; IOT_E2E_NODES_COMMAND, the command that
powers a node off or on (`tests/e2e/nodes.sh`).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import csv
import datetime
import hashlib
import http.cookiejar
import io
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

# The checkout's own modules, as for everything run from its root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from backup.manifest import read_manifest

STACK = "iot"
NAMESPACE_LABEL = f"com.docker.stack.namespace={STACK}"
PROBE_LABEL = "org.iot-platform.e2e.probe"
HERE = Path(__file__).resolve().parent
SIMULATOR = f"{STACK}_simulator"
DATABASE = "IoT_Devices"
LOCATION = "E2E"

# The port each service listens on inside the stack (the agreed interfaces).
PORTS = {
    "mqtt_broker": 1883,
    "influxdb": 8086,
    "adapter": 8000,
    "auth_server": 5000,
    "mysql": 3306,
    "phpmyadmin": 80,
    "prometheus": 9090,
    "broker_exporter": 9234,
    "alertmanager": 9093,
    "kong": 8000,
    "grafana": 3000,
}
# CONTRACT section 6: the pairs that must talk, each sharing a network made for it. Written
# out here, not read from stack.yml, so that the stack file is checked against the contract.
ALLOWED_PAIRS = {
    frozenset(pair)
    for pair in [
        ("mqtt_broker", "adapter"),
        ("kong", "auth_server"),
        ("prometheus", "kong"),
        ("adapter", "influxdb"),
        ("auth_server", "mysql"),
        ("mysql", "phpmyadmin"),
        ("auth_server", "influxdb"),
        ("auth_server", "mqtt_broker"),
        ("influxdb", "grafana"),
        ("prometheus", "grafana"),
        ("prometheus", "adapter"),
        ("prometheus", "auth_server"),
        ("prometheus", "influxdb"),
        ("prometheus", "broker_exporter"),
        ("prometheus", "alertmanager"),
        # Grafana reads the Alertmanager's alerts and silences.
        ("grafana", "alertmanager"),
        # The broker exporter reads the broker's $SYS statistics over MQTT.
        ("broker_exporter", "mqtt_broker"),
        # The stack's optional device simulator (0 replicas unless scaled up) talks to
        # the broker only, like any device.
        ("simulator", "mqtt_broker"),
    ]
}
# CONTRACT section 6: published ports, by the service publishing them.
PUBLISHED = {"mqtt_broker": 1883, "phpmyadmin": 8081, "kong": 8080, "grafana": 80}


T = TypeVar("T")


class CheckFailedError(Exception):
    """A check saw something other than what the platform promises."""


@dataclass
class Context:
    copy: Path
    work: Path
    probe_image: str

    @property
    def simulator_image(self) -> str:
        """The simulator image run.sh built for the stack's simulator service."""
        spec = docker(
            "service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", SIMULATOR
        )
        return spec.strip().split("@", 1)[0]

    @property
    def secrets(self) -> Path:
        return self.copy / ".state" / "swarm" / "secrets"

    def secret(self, name: str) -> str:
        return (self.secrets / name).read_text(encoding="utf-8").strip()

    @property
    def state_file(self) -> Path:
        return self.work / "e2e-state.json"

    def load_state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text(encoding="utf-8")) if self.state_file.exists() else {}

    def need(self, key: str) -> Any:
        """What an earlier check recorded; a clear failure if that check did not pass."""
        state = self.load_state()
        if key not in state:
            raise CheckFailedError(f"needs {key!r} from an earlier check, which did not pass")
        return state[key]

    def save_state(self, **values: Any) -> None:
        state = self.load_state()
        state.update(values)
        self.state_file.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")


# --- Docker and polling helpers ------------------------------------------------------


def node_sockets() -> dict[str, str]:
    """{node hostname: its engine's DOCKER_HOST} from IOT_E2E_NODES; empty on one node."""
    nodes = {}
    for entry in filter(None, os.environ.get("IOT_E2E_NODES", "").split(",")):
        name, _, socket_url = entry.partition("=")
        nodes[name] = socket_url
    return nodes


NODES = node_sockets()


def docker(
    *args: str, stdin: str | None = None, timeout: float = 120, check: bool = True, node: str | None = None
) -> str:
    """The docker CLI against the manager, or against the engine of `node` (a hostname)."""
    env = {**os.environ, "DOCKER_HOST": NODES[node]} if node in NODES else None
    proc = subprocess.run(
        ["docker", *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if check and proc.returncode != 0:
        raise CheckFailedError(
            f"docker {' '.join(args[:3])}... failed: {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def poll(what: str, attempt: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    """attempt() until done(result) or the timeout; then the last result (the caller judges)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = attempt()
        except CheckFailedError:
            if time.monotonic() >= deadline:
                raise
        else:
            if done(result) or time.monotonic() >= deadline:
                return result
        time.sleep(1)


@dataclass(frozen=True)
class Container:
    """A running container of a task of the stack, and the node whose engine runs it."""

    id: str
    service: str
    node: str
    slot: int

    def docker(self, *args: str, **kwargs: Any) -> str:
        return docker(*args, node=self.node, **kwargs)

    def exec(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        interactive = ["-i"] if stdin is not None else []
        return self.docker("exec", *interactive, self.id, *args, stdin=stdin, timeout=timeout)


_hostnames: dict[str, str] = {}


def hostname_of(node_id: str) -> str:
    if node_id not in _hostnames:
        found = docker("node", "inspect", "--format", "{{.Description.Hostname}}", node_id)
        _hostnames[node_id] = found.strip()
    return _hostnames[node_id]


def containers_of(service: str) -> list[Container]:
    """The running containers of a service of the stack, on whichever nodes run them."""
    ids = lines(
        docker(
            "service", "ps", f"{STACK}_{service}", "--filter", "desired-state=running", "--no-trunc",
            "--format", "{{.ID}}",
        )
    )  # fmt: skip
    if not ids:
        return []
    found = []
    for task in json.loads(docker("inspect", "--type", "task", *ids)):
        status = task["Status"]
        if status["State"] == "running":
            found.append(
                Container(
                    status["ContainerStatus"]["ContainerID"],
                    service,
                    hostname_of(task["NodeID"]),
                    task.get("Slot", 0),
                )
            )
    return sorted(found, key=lambda c: c.slot)


def engine_containers(service: str) -> list[str]:
    """Containers of a service that still exist on any node's engine, stopping ones included.

    Scaling a service down sets its tasks' desired state to shutdown at once, while each container
    runs out its stop grace period (the adapter's is 30 s): a check that needs the service really
    gone asks the engines, not the manager's task list.
    """
    label = f"label=com.docker.swarm.service.name={STACK}_{service}"
    engines: list[str | None] = [*NODES] or [None]
    return [found for node in engines for found in lines(docker("ps", "-q", "--filter", label, node=node))]


def container_of(service: str) -> Container:
    """The running container of a single-replica service of the stack."""
    found = containers_of(service)
    if len(found) != 1:
        raise CheckFailedError(f"{STACK}_{service}: expected one running container, found {len(found)}")
    return found[0]


def node_address(node: str) -> str:
    return docker("node", "inspect", "--format", "{{.Status.Addr}}", node).strip()


def published_addresses(service: str) -> list[str]:
    """Where a published port of the service answers: ports are published in host mode (see
    stackfile.py), on each node running a task of it (every node, for a global service); on
    one node, 127.0.0.1."""
    if not NODES:
        return ["127.0.0.1"]
    return sorted({node_address(c.node) for c in containers_of(service)})


def published_address(service: str) -> str:
    """The one address of a single-replica service's published port (see published_addresses)."""
    return node_address(container_of(service).node) if NODES else "127.0.0.1"


def deployed_services() -> dict[str, tuple[int, int]]:
    """{service: (running tasks, desired tasks)} of the stack."""
    found = {}
    for line in lines(
        docker("service", "ls", "--filter", f"label={NAMESPACE_LABEL}", "--format", "{{.Name}} {{.Replicas}}")
    ):
        name, replicas = line.split()[:2]
        running, desired = replicas.split("/")
        found[name.removeprefix(f"{STACK}_")] = (int(running), int(desired))
    return dict(sorted(found.items()))


def running_services() -> list[str]:
    return [name for name, (running, _) in deployed_services().items() if running]


# The `influx` client, logged in as the admin when the secure profile turned InfluxDB's
# authentication on: its password is read from the admin's secret inside the container, so it
# never leaves it.
_INFLUX_CLI = (
    'if [ -n "${INFLUX_ADMIN_PASSWORD_FILE:-}" ]; then '
    'set -- -username "${INFLUX_ADMIN_USER:-admin}" -password "$(cat "$INFLUX_ADMIN_PASSWORD_FILE")" "$@"; '
    'fi; exec influx "$@"'
)


def influx_cli(*args: str) -> str:
    """The `influx` client inside the InfluxDB container (never published)."""
    return container_of("influxdb").exec("sh", "-c", _INFLUX_CLI, "influx", *args)


def influx_query(query: str) -> list[dict[str, Any]]:
    """InfluxQL run by the `influx` client inside the InfluxDB container."""
    out = influx_cli(
        "-database",
        DATABASE,
        "-format",
        "json",
        "-execute",
        query,
    )
    # The 1.x client answers in chunks: one result per measurement, each with its series.
    series: list[dict[str, Any]] = []
    for result in json.loads(out or "{}").get("results", []):
        if "error" in result:
            raise CheckFailedError(f"InfluxDB refused {query!r}: {result['error']}")
        series += result.get("series", [])
    return series


def counts_by_series(prefix: str) -> dict[str, dict[str, int]]:
    """{"E2E/<station>": {metric: number of points}} for the stations named prefix*."""
    where = f"\"location\" = '{LOCATION}'"
    series = influx_query(
        f'SELECT count("value") FROM /^{re.escape(prefix)}/ WHERE {where} GROUP BY "station"'
    )
    counts: dict[str, dict[str, int]] = {}
    for entry in series:
        station = entry["tags"]["station"]
        metric = entry["name"].removeprefix(f"{station}.")
        counts.setdefault(f"{LOCATION}/{station}", {})[metric] = int(entry["values"][0][1])
    return counts


def stored_rows(pattern: str) -> list[tuple[str, ...]]:
    """Every stored point of the measurements matching the regex, as sorted CSV rows."""
    out = influx_cli(
        "-database",
        DATABASE,
        "-format",
        "csv",
        "-precision",
        "ns",
        "-execute",
        f"SELECT * FROM /{pattern}/",
    )
    return sorted(tuple(row) for row in csv.reader(io.StringIO(out)) if row and row[0] != "name")


def dump_points(pattern: str) -> tuple[int, str]:
    """Every stored point of the measurements matching the regex: (how many, SHA-256 of all)."""
    rows = [list(row) for row in stored_rows(pattern)]
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    return len(rows), digest


class Simulator:
    """The simulator image as a device on the network: a container on the host network of
    the manager's engine, publishing to the broker's published port 1883 (on one node,
    127.0.0.1; on several, the address of the node running the broker)."""

    def __init__(self, ctx: Context, name: str, *args: str) -> None:
        """Starts it with these options, in a container named e2e-simulator-NAME."""
        self.container = f"e2e-simulator-{name}"
        self.out_dir = ctx.work / "simulator" / name
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir.chmod(0o777)  # the image runs as its own non-root user
        self.proc = subprocess.Popen(
            [
                "docker", "run", "--rm", "--network", "host", "--label", f"{PROBE_LABEL}=simulator",
                "--name", self.container, "-v", f"{self.out_dir}:/out", ctx.simulator_image,
                "--host", published_address("mqtt_broker"), "--port", "1883", "--locations", LOCATION,
                "--quiet", "--summary-json", "/out/summary.json", *args,
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def stop(self) -> None:
        """SIGTERM: it stops producing and waits for its last acknowledgements."""
        docker("kill", "--signal", "TERM", self.container, check=False)

    def exit_status(self, timeout: float = 300) -> tuple[int, str]:
        try:
            _, stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise CheckFailedError(f"the simulator did not finish within {timeout:.0f}s") from None
        return self.proc.returncode, stderr

    def summary(self, timeout: float = 300) -> dict[str, Any]:
        """Its JSON summary, once every message it sent was acknowledged by the broker."""
        status, stderr = self.exit_status(timeout)
        if status != 0:
            raise CheckFailedError(f"the simulator exited with {status}: {stderr.strip()[-800:]}")
        summary: dict[str, Any] = json.loads((self.out_dir / "summary.json").read_text(encoding="utf-8"))
        if not summary["complete"] or summary["messages_acked"] != summary["messages_sent"]:
            raise CheckFailedError(f"the broker did not acknowledge every message: {summary}")
        return summary


def run_simulator(ctx: Context, name: str, *args: str) -> dict[str, Any]:
    """Runs the simulator to its end (--count or --duration); returns its JSON summary."""
    return Simulator(ctx, name, *args).summary()


def http_probe(ctx: Context, network: str, base_url: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Plays HTTP steps from a probe container attached to one of the stack's networks."""
    out = docker(
        "run", "--rm", "-i", "--network", f"{STACK}_{network}", "--label", f"{PROBE_LABEL}=http",
        "-v", f"{HERE / 'http_probe.py'}:/http_probe.py:ro", ctx.probe_image,
        "python3", "/http_probe.py", base_url,
        stdin=json.dumps(steps), timeout=180,
    )  # fmt: skip
    return {step["name"]: step for step in json.loads(out)}


def expect_status(results: dict[str, Any], name: str, status: int) -> Any:
    seen = results[name]
    if seen["status"] != status:
        raise CheckFailedError(f"{name}: HTTP {seen['status']} instead of {status}: {seen['body']}")
    return seen["body"]


def metrics_of(container: Container, port: int) -> str:
    """A container's Prometheus text, fetched from inside it."""
    url = f"http://127.0.0.1:{port}/metrics"
    fetch = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=10).read().decode())"
    return container.exec("python3", "-c", fetch)


def metric_values(text: str, name: str) -> dict[str, float]:
    """{label text: value} of one metric in Prometheus text format."""
    values = {}
    for match in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        values[match.group(1) or ""] = float(match.group(2))
    return values


def prometheus_query(query: str) -> list[dict[str, Any]]:
    url = "http://127.0.0.1:9090/api/v1/query?" + urllib.parse.urlencode({"query": query})
    out = container_of("prometheus").exec("wget", "-q", "-O", "-", url)
    answer = json.loads(out)
    if answer.get("status") != "success":
        raise CheckFailedError(f"Prometheus refused {query!r}: {answer}")
    return answer["data"]["result"]


def tcp_open(host: str, port: int | str) -> bool:
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return True
    except OSError:
        return False


def pretty(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# --- Checks of the first deployment --------------------------------------------------


def wait_converged(timeout_s: float) -> dict[str, tuple[int, int]]:
    """Every service's (running, desired) tasks once they agree, or as they are after `timeout_s`.

    A node that joins again (or is made active after a drain) gets its global tasks (Kong) a
    few seconds after it is ready: the stack is whole once they run."""
    return poll(
        "services converged",
        deployed_services,
        lambda services: all(running == desired for running, desired in services.values()),
        timeout_s,
    )


def check_services_running(ctx: Context) -> str:
    import yaml  # only the runner's Python needs it, not the probes

    wanted = sorted(yaml.safe_load((ctx.copy / "stack.yml").read_text(encoding="utf-8"))["services"])
    services = deployed_services()
    if sorted(services) != wanted:
        raise CheckFailedError(f"services {sorted(services)}, expected {wanted}")
    short = {name: tasks for name, tasks in services.items() if tasks[0] != tasks[1]}
    if short:
        raise CheckFailedError(f"running/desired tasks: {short}")
    for service in running_services():
        found = len(containers_of(service))
        if found != services[service][0]:
            raise CheckFailedError(f"{service}: {found} running containers for {services[service][0]} tasks")
    idle = [name for name, (_, desired) in services.items() if not desired]
    return (
        f"{', '.join(running_services())} each run their task; {', '.join(idle) or 'none'} at 0 replicas "
        "as stack.yml says"
    )


def check_published_ports(ctx: Context) -> str:
    published: dict[str, list[int]] = {}
    for service in deployed_services():
        ports = json.loads(
            docker(
                "service", "inspect", "--format", "{{json .Spec.EndpointSpec.Ports}}", f"{STACK}_{service}"
            )
        )
        if ports:
            published[service] = sorted(p["PublishedPort"] for p in ports)
    wanted = {service: [port] for service, port in PUBLISHED.items()}
    if published != wanted:
        raise CheckFailedError(f"published ports {published}, expected exactly {wanted}")
    where = [f"{at}:{port}" for service, port in PUBLISHED.items() for at in published_addresses(service)]
    closed = [at for at in where if not tcp_open(*at.rsplit(":", 1))]
    if closed:
        raise CheckFailedError(f"nothing answers on {closed}")
    return f"exactly {pretty(wanted)}, and each answers ({', '.join(where)})"


def check_influx_init_script(ctx: Context) -> str:
    logs = docker("service", "logs", "--raw", f"{STACK}_influxdb", timeout=60)
    if f"init_influx_db: created database {DATABASE}" not in logs:
        raise CheckFailedError(
            f"database/init_influx_db.sh did not create {DATABASE}; influxdb log:\n{logs[-1500:]}"
        )
    policies = influx_query(f'SHOW RETENTION POLICIES ON "{DATABASE}"')
    rows = [dict(zip(policies[0]["columns"], row, strict=True)) for row in policies[0]["values"]]
    default = [row for row in rows if row["default"]]
    if len(default) != 1 or default[0]["duration"] != "0s":
        raise CheckFailedError(f"the default retention policy is not INF: {rows}")
    return f"the init script created {DATABASE}; default policy {default[0]['name']} keeps data forever (0s)"


def check_simulator_to_influxdb(ctx: Context) -> str:
    summary = run_simulator(
        ctx, "first", "--devices", "4", "--station-prefix", "sim-", "--count", "400", "--rate", "0",
        "--backlog", "--malformed-share", "0.05", "--seed", "8",
    )  # fmt: skip
    expected = summary["series"]
    stored = poll("points in InfluxDB", lambda: counts_by_series("sim-"), lambda c: c == expected, 90)
    if stored != expected:
        raise CheckFailedError(f"InfluxDB holds {pretty(stored)}, the simulator sent {pretty(expected)}")
    ctx.save_state(simulated=summary)
    return (
        f"{summary['messages_sent']} messages on {published_address('mqtt_broker')}:1883 "
        f"({summary['malformed_total']} malformed, "
        f"{summary['backlog_messages']} backlog arrays) -> all {summary['values']} values stored, "
        f"per series and metric"
    )


def check_adapter_metrics(ctx: Context) -> str:
    summary = ctx.need("simulated")
    # Replicas on a shared subscription each see a part: together they saw everything once.
    adapters = containers_of("adapter")
    texts = [metrics_of(adapter, PORTS["adapter"]) for adapter in adapters]
    rejected: dict[str, int] = {}
    for text in texts:
        for labels, value in metric_values(text, "adapter_messages_rejected_total").items():
            reason = re.search(r'reason="([^"]+)"', labels).group(1)  # type: ignore[union-attr]
            rejected[reason] = rejected.get(reason, 0) + int(value)
    rejected = {reason: n for reason, n in rejected.items() if n}
    if rejected != summary["malformed"]:
        raise CheckFailedError(
            f"adapter_messages_rejected_total {rejected}, the simulator sent {summary['malformed']}"
        )
    written = [sum(metric_values(text, "adapter_points_written_total").values()) for text in texts]
    if sum(written) < summary["values"]:
        raise CheckFailedError(f"adapter_points_written_total {sum(written)} < {summary['values']} sent")
    if len(adapters) > 1 and not all(written):
        raise CheckFailedError(f"points written per replica {written}: one of them took no part")
    shares = f" ({' + '.join(f'{w:.0f}' for w in written)} by {len(adapters)} replicas)"
    return f"rejected by reason {pretty(rejected)} as sent; {sum(written):.0f} points written" + (
        shares if len(adapters) > 1 else ""
    )


def auth_steps(ctx: Context, device_password: str) -> list[dict[str, Any]]:
    admin = {"username": "admin", "password": ctx.secret("auth_admin_password")}
    return [
        {"name": "health", "method": "GET", "path": "/healthz"},
        {"name": "admin", "method": "POST", "path": "/api/auth/login", "json": admin},
        {"name": "wrong-password", "method": "POST", "path": "/api/auth/login",
         "json": {**admin, "password": "not-" + admin["password"]}},
        {"name": "create-device", "method": "POST", "path": "/api/accounts", "auth": "admin", "json": {
            "username": "e2e-device", "password": device_password, "role": "device",
            "permissions": [
                {"location": LOCATION, "station": "http-1", "read": True, "write": True},
                {"location": LOCATION, "station": "sim-1", "read": True, "write": False},
            ]}},
        {"name": "device", "method": "POST", "path": "/api/auth/login",
         "json": {"username": "e2e-device", "password": device_password}},
        {"name": "write", "method": "POST", "path": f"/api/data/{LOCATION}/http-1", "auth": "device",
         "json": {"BAT": 77.5, "TEMP": 21, "timestamp": "2026-01-02T03:04:05.678901Z"}},
        {"name": "read-own", "method": "GET", "path": f"/api/data/{LOCATION}/http-1", "auth": "device"},
        {"name": "read-sim", "method": "GET", "path": f"/api/data/{LOCATION}/sim-1?metric=BAT&limit=10000",
         "auth": "device"},
        {"name": "write-forbidden", "method": "POST", "path": f"/api/data/{LOCATION}/sim-1", "auth": "device",
         "json": {"BAT": 1}},
    ]  # fmt: skip


def check_auth_server(ctx: Context) -> str:
    device_password = secrets.token_hex(16)
    results = http_probe(
        ctx, "kong_auth", f"http://auth_server:{PORTS['auth_server']}", auth_steps(ctx, device_password)
    )
    health = expect_status(results, "health", 200)
    if health.get("checks") != {"mysql": "ok", "influxdb": "ok"}:
        raise CheckFailedError(f"/healthz: {health}")
    expect_status(results, "admin", 200)
    expect_status(results, "wrong-password", 401)
    expect_status(results, "create-device", 201)
    expect_status(results, "device", 200)
    if results["write"]["status"] not in (200, 201, 204):
        raise CheckFailedError(f"write: HTTP {results['write']['status']}: {results['write']['body']}")
    own = {
        s["metric"]: [v[1] for v in s["values"]] for s in expect_status(results, "read-own", 200)["series"]
    }
    if own != {"BAT": [77.5], "TEMP": [21.0]}:
        raise CheckFailedError(f"read back {own} instead of BAT 77.5 and TEMP 21")
    sim_bat = expect_status(results, "read-sim", 200)["series"]
    sent = ctx.need("simulated")["series"].get(f"{LOCATION}/sim-1", {}).get("BAT", 0)
    got = len(sim_bat[0]["values"]) if sim_bat else 0
    if got != sent:
        raise CheckFailedError(f"the API reads {got} BAT values of sim-1, the simulator sent {sent}")
    expect_status(results, "write-forbidden", 403)
    stored = counts_by_series("http-")
    if stored != {f"{LOCATION}/http-1": {"BAT": 1, "TEMP": 1}}:
        raise CheckFailedError(f"the HTTP write is not in InfluxDB as one BAT and one TEMP point: {stored}")
    ctx.save_state(device_password=device_password)
    return (
        "over the kong_auth network: /healthz (MySQL and InfluxDB ok), admin login, 401 for a wrong "
        f"password, account created, device wrote over HTTP and read back, read {got} simulator values, "
        "403 outside its rights"
    )


def check_prometheus(ctx: Context) -> str:
    def targets() -> dict[str, float]:
        return {r["metric"]["job"]: float(r["value"][1]) for r in prometheus_query("up")}

    wanted = {
        "adapter",
        "auth_server",
        "influxdb",
        "kong",
        "grafana",
        "prometheus",
        "broker_exporter",
        "alertmanager",
    }
    up = poll("scrape targets", targets, lambda t: all(t.get(job) == 1 for job in wanted), 120)
    if not all(up.get(job) == 1 for job in wanted):
        raise CheckFailedError(f"up by job: {up}; expected 1 for {sorted(wanted)}")
    # The exporter reads the broker: its statistics arrive (every 10 s).
    broker = poll(
        "broker statistics",
        lambda: prometheus_query(
            "mosquitto_exporter_connected == 1 and on() mosquitto_clients_connected > 0"
        ),
        bool,
        90,
    )
    if not broker:
        raise CheckFailedError("Prometheus has no live broker statistics from broker_exporter")
    # Prometheus found the Alertmanager it sends alerts to, and the Alertmanager has them.
    discovered = poll(
        "alertmanager discovered",
        lambda: prometheus_query("prometheus_notifications_alertmanagers_discovered"),
        lambda r: bool(r) and float(r[0]["value"][1]) == 1,
        60,
    )
    if not discovered or float(discovered[0]["value"][1]) != 1:
        raise CheckFailedError(f"prometheus_notifications_alertmanagers_discovered: {discovered}")
    values = ctx.need("simulated")["values"]

    def written() -> float:
        return sum(float(r["value"][1]) for r in prometheus_query("adapter_points_written_total"))

    total = poll("adapter_points_written_total", written, lambda w: w >= values, 60)
    if total < values:
        raise CheckFailedError(f"Prometheus has adapter_points_written_total {total} < {values}")
    others = {job: value for job, value in sorted(up.items()) if job not in wanted}
    sent = prometheus_query("sum(prometheus_notifications_sent_total)")
    return (
        f"{', '.join(sorted(wanted))} are up; adapter_points_written_total {total:.0f}; broker statistics "
        f"live; the Alertmanager discovered ({pretty(sent)} notifications sent); other jobs {others}"
    )


def check_phpmyadmin(ctx: Context) -> str:
    base = f"http://{published_address('phpmyadmin')}:{PUBLISHED['phpmyadmin']}"

    def login(password: str, user: str = "auth_server") -> str:
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(base + "/", timeout=30).read().decode()
        token = re.search(r'name="token" value="([^"]+)"', page)
        if token is None:
            raise CheckFailedError(f"no login form on {base}/")
        form = {
            "pma_username": user,
            "pma_password": password,
            "server": "1",
            "token": token.group(1),
        }
        data = urllib.parse.urlencode(form).encode()
        return opener.open(base + "/index.php?route=/", data=data, timeout=60).read().decode()

    page = login(ctx.secret("mysql_password"))
    if "iot_accounts" not in page or "Server version" not in page:
        raise CheckFailedError("logged in as auth_server, the page shows neither iot_accounts nor the server")
    version = re.search(r"Server version:\s*([^<]+)", page)
    refused = login("wrong-" + secrets.token_hex(4))
    if "Access denied" not in refused:
        raise CheckFailedError("a wrong MySQL password was not refused")
    # MySQL's root, with its right password: phpMyAdmin refuses the name itself (AllowRoot).
    as_root = login(ctx.secret("mysql_root_password"), user="root")
    if "Server version" in as_root or "iot_accounts" in as_root or "Access denied" not in as_root:
        raise CheckFailedError("phpMyAdmin let MySQL's root log in")
    return (
        f"logged in through {base.removeprefix('http://')} as auth_server, sees iot_accounts on "
        f"{version.group(1).strip() if version else 'MySQL'}; a wrong password is refused, and so is "
        "root with the right one"
    )


# PHP run by phpMyAdmin's own interpreter, given on standard input (never as an argument):
# MySQL's root, with the right password, from phpMyAdmin's container.
ROOT_FROM_PHPMYADMIN = """<?php
mysqli_report(MYSQLI_REPORT_OFF);
$db = @new mysqli(getenv('PMA_HOST'), 'root', %s, '', (int) getenv('PMA_PORT'));
echo json_encode(['errno' => $db->connect_errno, 'error' => $db->connect_error]);
"""
# Inside the mysql container, over its socket: the password on standard input.
ROOT_INSIDE_MYSQL = (
    "IFS= read -r password; client=$(command -v mysql || command -v mariadb); "
    'MYSQL_PWD=$password exec "$client" -uroot -N -e "SELECT CURRENT_USER()"'
)


def php_string(value: str) -> str:
    """A single-quoted PHP string literal (no interpolation; backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_mysql_root_only_inside_its_container(ctx: Context) -> str:
    password = ctx.secret("mysql_root_password")
    from_phpmyadmin = json.loads(
        container_of("phpmyadmin").exec("php", stdin=ROOT_FROM_PHPMYADMIN % php_string(password))
    )
    if from_phpmyadmin["errno"] != 1045:
        raise CheckFailedError(
            f"root from phpMyAdmin's container was not refused by MySQL: {from_phpmyadmin}"
        )
    inside = container_of("mysql").exec("sh", "-c", ROOT_INSIDE_MYSQL, stdin=password + "\n")
    if inside.strip() != "root@localhost":
        raise CheckFailedError(f"root could not log in inside the mysql container: {inside!r}")
    return (
        f"MySQL refuses root from phpMyAdmin's container ({from_phpmyadmin['error']}); "
        "root logs in only inside the mysql container (root@localhost)"
    )


# Two clients of their own on this machine, each in a network namespace with its own address
# and a veth pair to the host, reaching Kong's published port the way clients on a network
# do (through the host's own address, not loopback, where Docker's proxy would connect for
# them). Addresses from the benchmarking range, outside the overlay pool the e2e guards.
# On several nodes the veth pairs start in the LAN's namespace (where the checks run, and
# which routes between the nodes), and the clients reach Kong on the nodes' addresses, one
# node each in turn.
CLIENTS = {"iot-e2e-a": ("198.18.1.1", "198.18.1.2"), "iot-e2e-b": ("198.18.2.1", "198.18.2.2")}
FORGED = "203.0.113.7"  # what both clients claim to be, in X-Forwarded-For
FETCH = (
    "import sys, urllib.request as u; "
    "r = u.Request(sys.argv[1], headers={'X-Forwarded-For': sys.argv[2], 'X-Real-IP': sys.argv[2]}); "
    "print(u.urlopen(r, timeout=10).read().decode())"
)


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise CheckFailedError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def add_client(name: str, host_address: str, client_address: str) -> None:
    ip("netns", "add", name)
    ip("link", "add", f"{name}-h", "type", "veth", "peer", "name", f"{name}-c")
    ip("link", "set", f"{name}-c", "netns", name)
    ip("addr", "add", f"{host_address}/30", "dev", f"{name}-h")
    ip("link", "set", f"{name}-h", "up")
    for command in (
        ["addr", "add", f"{client_address}/30", "dev", f"{name}-c"],
        ["link", "set", f"{name}-c", "up"],
        ["link", "set", "lo", "up"],
        ["route", "add", "default", "via", host_address],
    ):
        ip("netns", "exec", name, "ip", *command)


def check_kong_client_addresses(ctx: Context) -> str:
    spec = json.loads(docker("service", "inspect", "--format", "{{json .Spec}}", f"{STACK}_kong"))
    ports = spec["EndpointSpec"]["Ports"]
    if "Global" not in spec["Mode"] or [p["PublishMode"] for p in ports] != ["host"]:
        raise CheckFailedError(f"kong runs {spec['Mode']} with ports {ports}: expected global, host mode")
    seen = {}
    kong_nodes = published_addresses("kong") if NODES else []
    try:
        for n, (name, (host_address, client_address)) in enumerate(CLIENTS.items()):
            add_client(name, host_address, client_address)
            kong = kong_nodes[n % len(kong_nodes)] if kong_nodes else host_address
            url = f"http://{kong}:{PUBLISHED['kong']}/api/auth/login"
            proc = subprocess.run(
                ["ip", "netns", "exec", name, sys.executable, "-c", FETCH, url, FORGED],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                raise CheckFailedError(
                    f"{client_address} could not reach {url}: {proc.stderr.strip()[-500:]}"
                )
            seen[client_address] = json.loads(proc.stdout)
            seen[client_address]["kong"] = kong
    finally:
        for name in CLIENTS:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30, check=False)
    addresses = {client: answer["client"] for client, answer in seen.items()}
    if addresses != {client: client for client in seen}:
        raise CheckFailedError(f"Kong's port saw {addresses} (client -> address seen): rewritten")
    forwarded = {answer["forwarding_headers"].get("X-Forwarded-For") for answer in seen.values()}
    if forwarded != {FORGED}:
        raise CheckFailedError(f"the forwarding header did not arrive as sent: {forwarded}")
    return (
        f"kong is global with its port in host mode; two clients reached port {PUBLISHED['kong']} "
        f"(at {', '.join(sorted({answer['kong'] for answer in seen.values()}))}) and each "
        f"was seen with its own address ({', '.join(sorted(addresses))}), whatever X-Forwarded-For said: "
        "the address Kong's limits count by (tests/kong/test_client_addresses.py)"
    )


def stack_simulator_counts() -> dict[str, int]:
    """{"<location>/<station>": points} of the stack simulator's devices (RPi_* by default)."""
    series = influx_query('SELECT count("value") FROM /^RPi_/ GROUP BY "location", "station"')
    counts: dict[str, int] = {}
    for entry in series:
        key = f"{entry['tags']['location']}/{entry['tags']['station']}"
        counts[key] = counts.get(key, 0) + int(entry["values"][0][1])
    return counts


def check_stack_simulator(ctx: Context) -> str:
    before = stack_simulator_counts()
    docker("service", "scale", "--detach=true", f"{SIMULATOR}=1")
    tasks = poll("simulator task", lambda: deployed_services()["simulator"], lambda t: t == (1, 1), 120)
    if tasks != (1, 1):
        raise CheckFailedError(f"the stack's simulator runs {tasks[0]} of {tasks[1]} tasks after 120s")
    simulator = container_of("simulator")
    ctx.save_state(
        stack_simulator_before=sum(before.values()), stack_simulator=[simulator.id, simulator.node]
    )

    # Its 10 devices publish once a second each: new points of each are the proof it runs.
    def grown(counts: dict[str, int]) -> bool:
        return len(counts) >= 10 and all(n > before.get(key, 0) for key, n in counts.items())

    counts = poll("stack simulator points", stack_simulator_counts, grown, 60)
    if not grown(counts):
        raise CheckFailedError(
            f"the stack's simulator (10 devices) reached InfluxDB for {sorted(counts)} only"
        )
    return "scaled to 1: over the broker_simulator network, all 10 devices' readings reach InfluxDB"


def check_stack_simulator_summary(ctx: Context) -> str:
    container, node = ctx.need("stack_simulator")
    if container_of("simulator").id != container:
        raise CheckFailedError("the stack's simulator was restarted while it ran")
    # Scaled to 0, Swarm removes the task with its log: follow the log while it stops.
    env = {**os.environ, "DOCKER_HOST": NODES[node]} if node in NODES else None
    follow = subprocess.Popen(
        ["docker", "logs", "--follow", container],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        # Not --detach=false: that also waits out the service's 60 s update monitor.
        docker("service", "scale", "--detach=true", f"{SIMULATOR}=0")
        logs, _ = follow.communicate(timeout=90)
    finally:
        follow.kill()
    sent = re.search(r"(\d+) sent \(.*\), (\d+) acked, 0 refused, 0 dropped, 0 pending", logs)
    values = re.search(r"readings: (\d+) numeric values", logs)
    if sent is None or values is None or sent.group(1) != sent.group(2):
        raise CheckFailedError(
            f"no clean summary in the simulator's log (SIGTERM must drain it):\n{logs[-1500:]}"
        )
    expected = int(values.group(1))
    before = ctx.need("stack_simulator_before")

    def stored() -> int:
        return sum(stack_simulator_counts().values()) - before

    total = poll("all its values", stored, lambda n: n == expected, 60)
    if total != expected:
        raise CheckFailedError(
            f"InfluxDB holds {total} new values of the stack's simulator, its summary says {expected}"
        )
    return f"scaled to 0, it drained: {sent.group(1)} messages, all acked; all {expected} values stored"


def container_addresses(container: Container) -> dict[str, str]:
    """{network name: IPv4 address} of a container, its docker_gwbridge address included."""
    info = json.loads(container.docker("inspect", container.id))[0]
    addresses = {name: net["IPAddress"] for name, net in info["NetworkSettings"]["Networks"].items()}
    bridge = json.loads(container.docker("network", "inspect", "docker_gwbridge"))[0]
    for endpoint_id, endpoint in bridge.get("Containers", {}).items():
        if endpoint_id == info["Id"] and endpoint.get("IPv4Address"):
            addresses["docker_gwbridge"] = endpoint["IPv4Address"].split("/")[0]
    return addresses


# Runs in the container: one parallel TCP connect per "host port" line of stdin, 3 s each.
# $1: seconds each connect may take.
PROBE_SCRIPT = r"""
while read -r host port; do
  ( if timeout "$1" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; then
      echo "$host $port open"; else echo "$host $port closed"; fi ) &
done
wait
"""


def probe_from(
    container: Container, targets: Iterable[tuple[str, int]], seconds: int = 3
) -> dict[tuple[str, int], bool]:
    stdin = "".join(f"{host} {port}\n" for host, port in targets)
    out = container.exec("bash", "-c", PROBE_SCRIPT, "probe", str(seconds), stdin=stdin, timeout=60 + seconds)
    found = {}
    for line in lines(out):
        host, port, state = line.split()
        found[(host, int(port))] = state == "open"
    return found


def check_network_isolation(ctx: Context) -> str:
    # Every container of every running service (all replicas, on whichever node).
    members = [c for service in running_services() for c in containers_of(service)]
    addresses = {c: container_addresses(c) for c in members}
    plans: dict[Container, dict[tuple[str, int], tuple[bool, str]]] = {}
    crossing = 0
    for source in members:
        plan: dict[tuple[str, int], tuple[bool, str]] = {}
        own_networks = set(addresses[source])
        for target in members:
            # The simulator listens on nothing; replicas of one service are not a pair.
            if target.service == source.service or target.service not in PORTS:
                continue
            port = PORTS[target.service]
            allowed = frozenset((source.service, target.service)) in ALLOWED_PAIRS
            plan[(target.service, port)] = (allowed, f"{target.service}:{port} by name")
            for network, ip in addresses[target].items():
                # docker_gwbridge is each node's own bridge: another node's address on it
                # names some container of the source's node (a global service's, say).
                if network == "docker_gwbridge" and target.node != source.node:
                    continue
                # Reachable only over a network both are attached to, and only if allowed.
                shared = network in own_networks and network != "docker_gwbridge"
                where = f" on {target.node}" if NODES else ""
                plan[(ip, port)] = (allowed and shared, f"{target.service}:{port} at {ip} ({network}{where})")
                crossing += target.node != source.node
        plans[source] = plan

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(members)) as pool:
        seen = dict(zip(members, pool.map(lambda c: probe_from(c, plans[c]), members), strict=True))
    # Under load, a connect that must succeed can outlast the 3 s of the parallel round (many
    # at once, name lookups included): those are tried again with more time. A refused or
    # dropped one stays so; only a real connection counts as reachable.
    for source in members:
        late = [t for t, (expected, _) in plans[source].items() if expected and not seen[source].get(t)]
        if late:
            seen[source].update(probe_from(source, late, seconds=15))
    wrong = []
    for source in members:
        for target, (expected, what) in plans[source].items():
            if seen[source].get(target) != expected:
                state = {True: "reachable", False: "unreachable", None: "not probed"}[
                    seen[source].get(target)
                ]
                origin = f"{source.service} (on {source.node})" if NODES else source.service
                wrong.append(
                    f"{origin} -> {what}: {state}, expected {'reachable' if expected else 'unreachable'}"
                )
    if wrong:
        raise CheckFailedError("\n  " + "\n  ".join(wrong))
    probes = sum(len(plan) for plan in plans.values())
    reachable = sorted(
        {
            f"{s.service}->{t}"
            for s in members
            for (t, _), (ok, what) in plans[s].items()
            if ok and "by name" in what
        }
    )
    nodes = f", {crossing} of them to a container on another node" if NODES else ""
    return (
        f"{probes} TCP connects from {len(members)} containers as the contract says{nodes}; "
        f"reachable: {', '.join(reachable)}"
    )


# --- Before the removal, after the redeploy, after clean.sh --------------------------

KEPT_PATTERN = "^(sim|http)-"


def check_record_points(ctx: Context) -> str:
    count, digest = dump_points(KEPT_PATTERN)
    if count == 0:
        raise CheckFailedError("no points stored to compare after the redeploy")
    ctx.save_state(kept_points=count, kept_digest=digest)
    return f"{count} points recorded (SHA-256 {digest[:16]}...)"


def check_queue_for_stopped_adapter(ctx: Context) -> str:
    docker("service", "scale", "--detach=true", f"{STACK}_adapter=0")
    gone = poll("adapter stopped", lambda: engine_containers("adapter"), lambda found: not found, 120)
    if gone:
        raise CheckFailedError("the adapter's container did not go away")
    summary = run_simulator(
        ctx,
        "queued",
        "--devices",
        "2",
        "--station-prefix",
        "queued-",
        "--count",
        "60",
        "--rate",
        "0",
        "--seed",
        "9",
    )
    if counts_by_series("queued-"):
        raise CheckFailedError("points reached InfluxDB while the adapter was stopped")
    ctx.save_state(queued=summary)
    return (
        f"adapter scaled to 0; {summary['messages_sent']} messages ({summary['values']} values) acknowledged "
        "by the broker and held for the adapter's persistent session"
    )


def check_services_running_again(ctx: Context) -> str:
    return check_services_running(ctx)


def check_points_kept(ctx: Context) -> str:
    kept_points, kept_digest = ctx.need("kept_points"), ctx.need("kept_digest")
    count, digest = dump_points(KEPT_PATTERN)
    if (count, digest) != (kept_points, kept_digest):
        raise CheckFailedError(
            f"{count} points (SHA-256 {digest[:16]}) instead of {kept_points} ({kept_digest[:16]})"
        )
    logs = docker("service", "logs", "--raw", f"{STACK}_influxdb", timeout=60)
    if "init-influxdb: initialising" in logs:
        raise CheckFailedError("InfluxDB initialised its data volume again: the volume was not kept")
    return (
        f"all {count} points identical (SHA-256 {digest[:16]}...); the volume was reused, not re-initialised"
    )


def check_queue_delivered(ctx: Context) -> str:
    expected = ctx.need("queued")["series"]
    stored = poll("queued points", lambda: counts_by_series("queued-"), lambda c: c == expected, 120)
    if stored != expected:
        raise CheckFailedError(
            f"InfluxDB holds {pretty(stored)} of the queued messages, expected {pretty(expected)}"
        )
    values = sum(sum(metrics.values()) for metrics in expected.values())
    return f"the broker kept the adapter's queue across the removal: all {values} values delivered"


def check_accounts_kept(ctx: Context) -> str:
    steps = [
        {"name": "device", "method": "POST", "path": "/api/auth/login",
         "json": {"username": "e2e-device", "password": ctx.need("device_password")}},
        {"name": "read-own", "method": "GET", "path": f"/api/data/{LOCATION}/http-1", "auth": "device"},
    ]  # fmt: skip
    results = http_probe(ctx, "kong_auth", f"http://auth_server:{PORTS['auth_server']}", steps)
    expect_status(results, "device", 200)
    own = {
        s["metric"]: [v[1] for v in s["values"]] for s in expect_status(results, "read-own", 200)["series"]
    }
    if own != {"BAT": [77.5], "TEMP": [21.0]}:
        raise CheckFailedError(f"read back {own} instead of BAT 77.5 and TEMP 21")
    return "the device account created before the removal logs in and reads its HTTP-written values"


def check_nothing_left(ctx: Context, images: list[str]) -> str:
    left = []
    swarm = docker("info", "--format", "{{.Swarm.LocalNodeState}}").strip()
    if swarm == "active":
        if STACK in lines(docker("stack", "ls", "--format", "{{.Name}}")):
            left.append(f"the stack {STACK}")
        left += [
            f"secret {s}"
            for s in lines(docker("secret", "ls", "--format", "{{.Name}}"))
            if s.startswith(f"{STACK}_")
        ]
        left += [
            f"config {c}"
            for c in lines(docker("config", "ls", "--format", "{{.Name}}"))
            if c.startswith(f"{STACK}_")
        ]
        left += [
            f"service {s}"
            for s in lines(docker("service", "ls", "--format", "{{.Name}}"))
            if s.startswith(f"{STACK}_")
        ]
        labels = docker("node", "inspect", "self", "--format", "{{json .Spec.Labels}}")
        if "iot.data" in labels:
            left.append("the iot.data node label")
    left += [f"container {c}" for c in lines(docker("ps", "-aq", "--filter", f"label={NAMESPACE_LABEL}"))]
    left += [
        f"network {n}"
        for n in lines(docker("network", "ls", "--format", "{{.Name}}"))
        if n.startswith(f"{STACK}_")
    ]
    volumes = lines(docker("volume", "ls", "--format", "{{.Name}}"))
    left += [f"volume {v}" for v in volumes if v.startswith(f"{STACK}_")]
    left += [
        f"volume {v}" for v in lines(docker("volume", "ls", "-q", "--filter", f"label={NAMESPACE_LABEL}"))
    ]
    left += [
        f"image {i}" for i in images if docker("image", "inspect", i, check=False).strip() not in ("", "[]")
    ]
    left += [
        f"image {i}"
        for i in lines(docker("images", "--format", "{{.Repository}}:{{.Tag}}"))
        if i.startswith("iot-platform/")
    ]
    if (ctx.copy / ".state").exists():
        left.append(f"{ctx.copy / '.state'} (run.sh's state and secrets)")
    if left:
        raise CheckFailedError("left behind: " + ", ".join(sorted(set(left))))
    return (
        f"no stack, service, container, volume, secret, config, network or image ({', '.join(images)}) "
        f"of the stack is left; swarm {swarm}; run.sh's state folder removed"
    )


# --- Several nodes (run_e2e_multinode.sh) --------------------------------------------

DATA_LABEL = "iot.data"


def nodes_command(*args: str) -> None:
    """Powers a node off or on through the harness (IOT_E2E_NODES_COMMAND, e.g. nodes.sh)."""
    command = shlex.split(os.environ.get("IOT_E2E_NODES_COMMAND", ""))
    if not command:
        raise CheckFailedError("IOT_E2E_NODES_COMMAND is not set: run this phase from run_e2e_multinode.sh")
    proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise CheckFailedError(f"{' '.join(command + list(args))}: {(proc.stderr or proc.stdout).strip()}")


@dataclass(frozen=True)
class Node:
    hostname: str
    state: str
    availability: str
    labels: dict[str, str]


def swarm_nodes() -> dict[str, Node]:
    ids = lines(docker("node", "ls", "-q"))
    found = {}
    for node in json.loads(docker("node", "inspect", *ids)):
        hostname = node["Description"]["Hostname"]
        labels = node["Spec"].get("Labels") or {}
        found[hostname] = Node(hostname, node["Status"]["State"], node["Spec"]["Availability"], labels)
    return found


def data_node() -> str:
    found = [n.hostname for n in swarm_nodes().values() if n.labels.get(DATA_LABEL) == "true"]
    if len(found) != 1:
        raise CheckFailedError(f"nodes labelled {DATA_LABEL}=true: {found}, expected exactly one")
    return found[0]


def pinned_services(ctx: Context) -> list[str]:
    """The services stack.yml keeps on the node labelled iot.data=true (the stateful ones)."""
    import yaml

    stack = yaml.safe_load((ctx.copy / "stack.yml").read_text(encoding="utf-8"))
    return sorted(
        name
        for name, service in stack["services"].items()
        if f"node.labels.{DATA_LABEL} == true"
        in ((service.get("deploy") or {}).get("placement") or {}).get("constraints", [])
    )


def stack_containers_on(node: str) -> list[str]:
    """Running containers of the stack on one node's engine (whatever the manager thinks)."""
    return lines(docker("ps", "-q", "--filter", f"label={NAMESPACE_LABEL}", node=node))


def adapters_placement() -> dict[int, str]:
    """{task slot: node} of the running adapter replicas."""
    return {c.slot: c.node for c in containers_of("adapter")}


def check_placement(ctx: Context) -> str:
    data = data_node()
    wrong = {
        service: c.node for service in pinned_services(ctx) for c in containers_of(service) if c.node != data
    }
    if wrong:
        raise CheckFailedError(f"stateful services off the {DATA_LABEL} node {data}: {wrong}")
    adapters = adapters_placement()
    replicas = deployed_services()["adapter"][1]
    if len(adapters) != replicas or len(set(adapters.values())) != replicas:
        raise CheckFailedError(f"adapter replicas by slot {adapters}: expected {replicas} on as many nodes")
    broker, influxdb = container_of("mqtt_broker").node, container_of("influxdb").node
    if {broker, influxdb} & set(adapters.values()):
        raise CheckFailedError(
            f"adapter replicas {adapters} share a node with the broker ({broker}) or InfluxDB ({influxdb})"
        )
    # Images reach the other nodes through the registry only (IOT_REGISTRY): the adapter's is
    # there, pulled under the registry's name.
    image = docker(
        "service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", f"{STACK}_adapter"
    ).strip()
    for node in set(adapters.values()):
        # Swarm pins the image by digest; a pull by digest leaves no tag, only the reference.
        if docker("image", "inspect", "--format", "{{.Id}}", image, node=node, check=False).strip() == "":
            raise CheckFailedError(f"{node} runs an adapter but has no image {image}")
    return (
        f"{', '.join(pinned_services(ctx))} on {data} (labelled {DATA_LABEL}=true); adapter replicas "
        + ", ".join(f"slot {slot} on {node}" for slot, node in sorted(adapters.items()))
        + f", pulled from {image.split('/', 1)[0]}"
    )


@dataclass
class Stream:
    """A simulator publishing steadily for about a minute, under a station prefix of its own."""

    ctx: Context
    prefix: str
    devices: int = 8
    rate: int = 5
    count: int = 2400

    def __post_init__(self) -> None:
        self.simulator = Simulator(
            self.ctx, self.prefix.rstrip("-"), "--devices", str(self.devices),
            "--station-prefix", self.prefix, "--rate", str(self.rate), "--count", str(self.count),
            "--seed", "16",
        )  # fmt: skip

    def stored(self) -> int:
        return sum(sum(metrics.values()) for metrics in counts_by_series(self.prefix).values())

    def wait_mid_stream(self) -> int:
        """Until some of its values are stored (the pipeline runs); fails if it already ended."""
        stored = poll(f"{self.prefix} values stored", self.stored, lambda n: n >= 100, 120)
        if stored < 100 or self.simulator.proc.poll() is not None:
            raise CheckFailedError(
                f"not mid-stream: {stored} values stored, simulator ended: {self.simulator.proc.poll()}"
            )
        return stored

    def all_stored(self, timeout: float) -> tuple[dict[str, Any], float]:
        """(the simulator's summary, seconds from its end until InfluxDB held every value)."""
        summary = self.simulator.summary()
        ended = time.monotonic()
        expected = summary["series"]
        stored = poll(
            f"{self.prefix} values", lambda: counts_by_series(self.prefix), lambda c: c == expected, timeout
        )
        if stored != expected:
            missing = summary["values"] - sum(sum(m.values()) for m in stored.values())
            raise CheckFailedError(f"{missing} of {summary['values']} values missing after {timeout:.0f}s")
        return summary, time.monotonic() - ended


def received_by(container: Container) -> float:
    return sum(
        metric_values(metrics_of(container, PORTS["adapter"]), "adapter_messages_received_total").values()
    )


def check_node_loss(ctx: Context) -> str:
    adapters = containers_of("adapter")
    if len(adapters) < 2:
        raise CheckFailedError(f"needs two adapter replicas, found {len(adapters)}")
    lost, survivor = adapters[0], adapters[1]
    survivor_before = received_by(survivor)
    stream = Stream(ctx, "loss-")
    at_loss = stream.wait_mid_stream()
    nodes_command("power-off", lost.node)
    powered_off = time.monotonic()

    def replaced() -> dict[int, str]:
        return adapters_placement() if swarm_nodes()[lost.node].state == "down" else {}

    placement = poll(
        "the lost replica replaced", replaced, lambda p: p.get(lost.slot, lost.node) != lost.node, 180
    )
    if placement.get(lost.slot, lost.node) == lost.node:
        raise CheckFailedError(
            f"slot {lost.slot} was not rescheduled off {lost.node} within 180s: {placement}"
        )
    rescheduled_s = time.monotonic() - powered_off
    still_running = stream.simulator.proc.poll() is None
    summary, lag_s = stream.all_stored(240)
    messages = summary["messages_sent"]
    survivor_got = received_by(survivor) - survivor_before
    ctx.save_state(lost_node=lost.node)
    during = " while the stream went on" if still_running else ""
    return (
        f"{lost.node} (adapter slot {lost.slot}) powered off after {at_loss} values; slot {lost.slot} "
        f"ran again on {placement[lost.slot]} {rescheduled_s:.0f}s later{during}; all {summary['values']} "
        f"values of {messages} messages stored ({lag_s:.0f}s after the last was sent). The surviving "
        f"replica on {survivor.node} received {survivor_got:.0f} of them ({survivor_got / messages:.0%}): "
        "the broker kept queuing the lost replica's share for its session, and the rescheduled task "
        "(same slot, same client id) took it over"
    )


def check_node_back(ctx: Context) -> str:
    node = ctx.need("lost_node")
    started = time.monotonic()
    nodes_command("start", node)
    state = poll("node ready", lambda: swarm_nodes()[node].state, lambda s: s == "ready", 180)
    if state != "ready":
        raise CheckFailedError(f"{node} is {state} 180s after its engine started again")
    ready_s = time.monotonic() - started
    # Its old tasks were rescheduled elsewhere: the manager has the node shut them down.
    left = poll("stale tasks gone", lambda: stack_containers_on(node), lambda found: not found, 120)
    if left:
        raise CheckFailedError(f"{node} still runs {len(left)} containers of the stack")
    wait_converged(180)
    check_services_running(ctx)
    return (
        f"{node} powered on: back in the swarm as the same node, ready after {ready_s:.0f}s, its "
        f"stale tasks shut down; every service runs its tasks {time.monotonic() - started:.0f}s after"
    )


def check_drain(ctx: Context) -> str:
    placement = adapters_placement()
    # The worker running most adapter replicas (after a node loss: all of them).
    node = max(set(placement.values()), key=list(placement.values()).count)
    before = {c.service for service in running_services() for c in containers_of(service) if c.node == node}
    stream = Stream(ctx, "drain-")
    at_drain = stream.wait_mid_stream()
    docker("node", "update", "--availability", "drain", node)
    try:
        left = poll("drained", lambda: stack_containers_on(node), lambda found: not found, 180)
        if left:
            raise CheckFailedError(f"{node} still runs {len(left)} containers of the stack after 180s")
        moved = poll("adapters rescheduled", adapters_placement, lambda p: len(p) == len(placement), 180)
        if len(moved) != len(placement) or node in moved.values():
            raise CheckFailedError(f"adapter replicas after the drain: {moved}")
        summary, lag_s = stream.all_stored(240)
        check_services_running(ctx)
    finally:
        docker("node", "update", "--availability", "active", node)
    # Its global task (Kong) comes back to it; the later checks need the whole stack.
    wait_converged(180)
    now = ", ".join(f"slot {slot} on {n}" for slot, n in sorted(moved.items()))
    return (
        f"{node} drained after {at_drain} values: its tasks ({', '.join(sorted(before))}) moved, "
        f"adapters now {now}; all {summary['values']} values stored ({lag_s:.0f}s after the last was "
        f"sent); {node} active again"
    )


def adapter_counters(container: Container) -> dict[str, float]:
    text = metrics_of(container, PORTS["adapter"])
    return {
        name: sum(metric_values(text, name).values())
        for name in (
            "adapter_messages_received_total",
            "adapter_points_written_total",
            "adapter_unacked_messages",
        )
    }


def check_scaled_down(ctx: Context) -> str:
    if deployed_services()["adapter"] != (1, 1):
        raise CheckFailedError(
            f"adapter tasks (running, desired) {deployed_services()['adapter']}, expected 1 of 1"
        )
    adapter = container_of("adapter")
    before = adapter_counters(adapter)
    summary = run_simulator(
        ctx, "scaled-down", "--devices", "4", "--station-prefix", "down-", "--count", "400", "--rate", "0",
        "--seed", "17",
    )  # fmt: skip

    def stored_values() -> int:
        return sum(sum(m.values()) for m in counts_by_series("down-").values())

    # Every message was handed out when the broker acked it: the replica's share arrives at
    # once; it is settled when the replica holds nothing unacked and InfluxDB has all it wrote.
    def settled() -> tuple[dict[str, float], int]:
        return adapter_counters(adapter), stored_values()

    def done(seen: tuple[dict[str, float], int]) -> bool:
        counters, stored = seen
        written = counters["adapter_points_written_total"] - before["adapter_points_written_total"]
        return stored > 0 and counters["adapter_unacked_messages"] == 0 and written == stored

    counters, stored = poll("the replica's share stored", settled, done, 90)
    received = counters["adapter_messages_received_total"] - before["adapter_messages_received_total"]
    if not done((counters, stored)) or stored >= summary["values"] or received >= summary["messages_sent"]:
        raise CheckFailedError(
            f"after scaling down, the remaining replica received {received:.0f} of "
            f"{summary['messages_sent']} messages and InfluxDB holds {stored} of {summary['values']} "
            "values: expected only its share"
        )
    ctx.save_state(scaled_down=summary)
    return (
        f"1 replica left (slot {adapter.slot}); of {summary['messages_sent']} messages it received "
        f"{received:.0f} ({stored} of {summary['values']} values stored): the broker queued the rest for "
        "the removed slot's session, as README says"
    )


def check_scaled_up(ctx: Context) -> str:
    summary = ctx.need("scaled_down")
    expected = summary["series"]
    stored = poll("held values", lambda: counts_by_series("down-"), lambda c: c == expected, 120)
    if stored != expected:
        raise CheckFailedError(f"InfluxDB holds {pretty(stored)}, the simulator sent {pretty(expected)}")
    slots = sorted(adapters_placement())
    return (
        f"back to slots {slots}: the returning slot resumed its session and stored what the broker held; "
        f"all {summary['values']} values are in InfluxDB"
    )


# --- The secure profile (./run.sh --secure) -----------------------------------------
#
# Devices reach the broker only over TLS on its published 8883 (1883 stays inside the
# stack's networks), each account with its username as client id.

SECURE_STATION = "secure-1"
SECURE_USER = "e2e-secure"
SECURE_READINGS = 200
SECURE_MQTT_PORT = 8883


@dataclass(frozen=True)
class TlsSession:
    connack: str  # the broker's answer to CONNECT
    acked: int  # readings the broker acknowledged


def tls_device(ctx: Context, username: str | None, password: str | None, readings: int = 0) -> TlsSession:
    """A device of the secure profile: MQTT over TLS to the broker's published port at the
    address of the node running it, the certificate verified against the CA run.sh made
    (and for that address); it publishes `readings` QoS 1 readings of SECURE_STATION."""
    import paho.mqtt.client as mqtt  # the checks' Python (.venv) has it; the module needs it only here

    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=username or "e2e-anonymous",
        protocol=mqtt.MQTTv311,
    )
    client.tls_set(ca_certs=str(ctx.copy / ".state" / "swarm" / "tls" / "ca.crt"))
    if username is not None:
        client.username_pw_set(username, password)
    answered = threading.Event()
    connack: list[str] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: (connack.append(str(reason)), answered.set())
    client.connect(published_address("mqtt_broker"), SECURE_MQTT_PORT, keepalive=30)
    client.loop_start()
    try:
        if not answered.wait(30):
            raise CheckFailedError(f"no CONNACK over TLS within 30s ({username or 'anonymous'})")
        if connack[0] != "Success" or not readings:
            return TlsSession(connack[0], 0)
        first = time.time() - readings
        sent = [
            client.publish(
                f"{LOCATION}/{SECURE_STATION}",
                json.dumps({"TEMP": 20 + n / 10, "timestamp": iso_time(first + n)}),
                qos=1,
            )
            for n in range(readings)
        ]
        for message in sent:
            message.wait_for_publish(60)
        return TlsSession(connack[0], sum(message.is_published() for message in sent))
    finally:
        client.disconnect()
        client.loop_stop()


def iso_time(epoch_s: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, datetime.UTC).isoformat()


def check_secure_device_publishes(ctx: Context) -> str:
    password = secrets.token_hex(16)
    admin = {"username": "admin", "password": ctx.secret("auth_admin_password")}
    steps = [
        {"name": "admin", "method": "POST", "path": "/api/auth/login", "json": admin},
        {"name": "create", "method": "POST", "path": "/api/accounts", "auth": "admin", "json": {
            "username": SECURE_USER, "password": password, "role": "device",
            "permissions": [{"location": LOCATION, "station": SECURE_STATION, "read": True, "write": True}]}},
    ]  # fmt: skip
    results = http_probe(ctx, "kong_auth", f"http://auth_server:{PORTS['auth_server']}", steps)
    expect_status(results, "admin", 200)
    expect_status(results, "create", 201)
    ctx.save_state(secure_password=password)
    # The auth server hands the account to the broker's dynamic security a moment later.
    session = poll(
        "the account admitted",
        lambda: tls_device(ctx, SECURE_USER, password, SECURE_READINGS),
        lambda s: s.connack == "Success",
        60,
    )
    if session.connack != "Success" or session.acked != SECURE_READINGS:
        raise CheckFailedError(f"the device's TLS session: {session}, expected {SECURE_READINGS} acked")
    expected = {f"{LOCATION}/{SECURE_STATION}": {"TEMP": SECURE_READINGS}}
    stored = poll("secure values", lambda: counts_by_series(SECURE_STATION), lambda c: c == expected, 90)
    if stored != expected:
        raise CheckFailedError(f"InfluxDB holds {pretty(stored)}, the device sent {pretty(expected)}")
    connected = [
        metric_values(metrics_of(a, PORTS["adapter"]), "adapter_mqtt_connected")
        for a in containers_of("adapter")
    ]
    if not connected or any(values.get("") != 1.0 for values in connected):
        raise CheckFailedError(f"adapter_mqtt_connected per replica: {connected}")
    return (
        f"account {SECURE_USER} created through the auth server; over TLS to "
        f"{published_address('mqtt_broker')}:{SECURE_MQTT_PORT} (run.sh's CA, the node's address in "
        f"the certificate) it published {SECURE_READINGS} readings as {LOCATION}/{SECURE_STATION}, all "
        f"acked, all stored by {len(connected)} adapter replicas logged in to the broker"
    )


def check_secure_refuses_strangers(ctx: Context) -> str:
    password = ctx.need("secure_password")
    seen = {
        "wrong password": tls_device(ctx, SECURE_USER, "not-" + password, 5),
        "no account": tls_device(ctx, None, None, 5),
    }
    admitted = {name: session for name, session in seen.items() if session.connack == "Success"}
    if admitted:
        raise CheckFailedError(f"the broker admitted {admitted}")
    plain = f"{published_address('mqtt_broker')}:1883"
    if tcp_open(*plain.rsplit(":", 1)):
        raise CheckFailedError(f"plain MQTT answers on {plain} in the secure profile")
    return (
        "; ".join(f"{name}: refused over TLS ({session.connack})" for name, session in seen.items())
        + f"; plain MQTT is not published ({plain} closed)"
    )


# --- Backup and restore --------------------------------------------------------------
#
# before-backup and backup run on the redeployed stack; then run_e2e.sh removes it with its
# data and secrets (./clean.sh -y), deploys a new one (./run.sh), checks it is empty (fresh),
# restores the archive (./restore.sh -y) and checks what came back (restored).

GRAFANA_URL = f"http://127.0.0.1:{PUBLISHED['grafana']}"
EDITED_DASHBOARD = {
    "uid": "e2e-edited",
    "title": "Edited before the backup",
    "panels": [{"id": 1, "type": "timeseries", "title": "BAT of every E2E device"}],
}
# Three levels, so not a device topic: the adapter refuses it, and only the absent session keeps it.
QUEUE_TOPIC = "e2e-queue/absent/session"
QUEUE_CLIENT = "e2e-absent-session"
QUEUED_MESSAGES = 25
# Their containers must not change while a backup runs: the backup is online.
ONLINE = ("mqtt_broker", "influxdb", "mysql", "grafana", "adapter", "auth_server")


def grafana_call(method: str, path: str, password: str, body: Any = None) -> tuple[int, Any]:
    """Grafana's HTTP API through its published port, as the user `assistant`."""
    token = base64.b64encode(f"assistant:{password}".encode()).decode()
    request = urllib.request.Request(
        GRAFANA_URL + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def mqtt_session(ctx: Context, *args: str) -> str:
    """tests/e2e/mqtt_session.py in the simulator's image (it has paho-mqtt), on the host's network."""
    return docker(
        "run", "--rm", "--network", "host", "--label", f"{PROBE_LABEL}=mqtt-session",
        "-v", f"{HERE / 'mqtt_session.py'}:/mqtt_session.py:ro", "--entrypoint", "python3",
        ctx.simulator_image, "/mqtt_session.py", "--port", "1883", *args,
        timeout=180,
    )  # fmt: skip


def check_grafana_edit(ctx: Context) -> str:
    password = ctx.secret("grafana_admin_password")
    status, body = grafana_call("POST", "/api/dashboards/db", password, {"dashboard": EDITED_DASHBOARD})
    if status != 200:
        raise CheckFailedError(f"saving a dashboard: HTTP {status}: {body}")
    status, read = grafana_call("GET", f"/api/dashboards/uid/{EDITED_DASHBOARD['uid']}", password)
    if status != 200 or read["dashboard"]["title"] != EDITED_DASHBOARD["title"]:
        raise CheckFailedError(f"the saved dashboard reads back as HTTP {status}: {read}")
    ctx.save_state(grafana_password=password, dashboard_version=body["version"])
    return f"dashboard {EDITED_DASHBOARD['uid']} saved through port 80 (version {body['version']})"


def check_queue_for_absent_session(ctx: Context) -> str:
    mqtt_session(ctx, "subscribe", QUEUE_CLIENT, QUEUE_TOPIC)
    payloads = [f"queued {n} {secrets.token_hex(4)}" for n in range(QUEUED_MESSAGES)]
    container_of("mqtt_broker").exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", QUEUE_TOPIC, "-l",
        stdin="\n".join(payloads) + "\n",
    )  # fmt: skip
    ctx.save_state(queued_payloads=payloads)
    return f"{QUEUED_MESSAGES} QoS 1 messages wait in the broker for the absent session {QUEUE_CLIENT}"


def check_backup_while_ingesting(ctx: Context) -> str:
    before = stored_rows(".*")
    containers = {service: container_of(service) for service in ONLINE}
    simulator = Simulator(
        ctx, "during-backup", "--devices", "3", "--station-prefix", "bk-", "--rate", "10", "--seed", "12"
    )
    try:
        poll("readings under way", lambda: counts_by_series("bk-"), bool, 60)
        started = time.monotonic()
        backup = subprocess.run(
            ["./backup.sh", str(ctx.work / "backups")],
            cwd=ctx.copy, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        seconds = time.monotonic() - started
        (ctx.work / "backup.sh.log").write_text(backup.stdout + backup.stderr, encoding="utf-8")
        still_publishing = simulator.proc.poll() is None
    finally:
        simulator.stop()
    if backup.returncode != 0:
        raise CheckFailedError(f"./backup.sh failed:\n{(backup.stdout + backup.stderr)[-2000:]}")
    if not still_publishing:
        raise CheckFailedError("the simulator stopped before the backup ended")
    summary = simulator.summary(timeout=120)
    expected = summary["series"]
    stored = poll("points in InfluxDB", lambda: counts_by_series("bk-"), lambda c: c == expected, 120)
    if stored != expected:
        raise CheckFailedError(f"InfluxDB holds {pretty(stored)}, the simulator sent {pretty(expected)}")
    restarted = [service for service, container in containers.items() if container_of(service) != container]
    if restarted:
        raise CheckFailedError(f"the backup restarted {restarted}")
    archives = sorted((ctx.work / "backups").glob("iot-backup-swarm-*.tar"))
    if len(archives) != 1 or archives[0].stat().st_mode & 0o777 != 0o600:
        raise CheckFailedError(f"expected one archive of mode 600, found {archives}")
    manifest = read_manifest(archives[0])
    if manifest.get("components") != "mosquitto influxdb mysql grafana" or manifest.get("mode") != "swarm":
        raise CheckFailedError(f"the manifest says {manifest}")
    ctx.save_state(
        rows_before=[list(r) for r in before],
        rows_after=[list(r) for r in stored_rows(".*")],
        admin_password=ctx.secret("auth_admin_password"),
    )
    return (
        f"./backup.sh took {seconds:.0f}s while 3 devices published ({summary['messages_sent']} messages, "
        f"all {summary['values']} values stored); no container of {', '.join(ONLINE)} changed; "
        f"{archives[0].name}: {archives[0].stat().st_size / 1024:.0f} KiB, "
        f"grafana.db.gz {manifest.get('grafana.bytes')} bytes"
    )


def check_fresh_stack_is_empty(ctx: Context) -> str:
    if stored_rows(".*"):
        raise CheckFailedError("the new stack's InfluxDB already holds points")
    steps = [
        {"name": "device", "method": "POST", "path": "/api/auth/login",
         "json": {"username": "e2e-device", "password": ctx.need("device_password")}},
        {"name": "admin", "method": "POST", "path": "/api/auth/login",
         "json": {"username": "admin", "password": ctx.need("admin_password")}},
    ]  # fmt: skip
    results = http_probe(ctx, "kong_auth", f"http://auth_server:{PORTS['auth_server']}", steps)
    expect_status(results, "device", 401)
    expect_status(results, "admin", 401)
    status, _ = grafana_call(
        "GET", f"/api/dashboards/uid/{EDITED_DASHBOARD['uid']}", ctx.need("grafana_password")
    )
    if status != 404:
        raise CheckFailedError(f"the new Grafana answers {status} for the edited dashboard, not 404")
    if ctx.secret("auth_admin_password") == ctx.need("admin_password"):
        raise CheckFailedError("the new stack has the old admin secret: it was not a new deployment")
    return "no point, no account (the device and the old admin get 401), no dashboard edit, new secrets"


def check_restored_points(ctx: Context) -> str:
    before = {tuple(r) for r in ctx.need("rows_before")}
    after = {tuple(r) for r in ctx.need("rows_after")}
    # The restored broker queue may still be reaching InfluxDB through the adapter.
    rows = poll("the restored points", lambda: set(stored_rows(".*")), lambda r: before <= r, 120)
    if not before <= rows:
        raise CheckFailedError(
            f"{len(before - rows)} of the {len(before)} points stored before the backup are missing"
        )
    if not rows <= after:
        raise CheckFailedError(f"{len(rows - after)} restored points were never stored before the restore")
    during = len(rows - before)
    return (
        f"{len(rows)} points: all {len(before)} stored before the backup began, and {during} of the "
        f"{len(after - before)} written while it ran (the rest came after its snapshot)"
    )


def check_restored_queue(ctx: Context) -> str:
    payloads = ctx.need("queued_payloads")
    out = mqtt_session(ctx, "collect", QUEUE_CLIENT, "--count", str(len(payloads)), "--timeout", "30")
    got = json.loads(out)
    if not got["session_present"] or got["payloads"] != payloads:
        raise CheckFailedError(f"the session came back with {got}, expected {len(payloads)} queued payloads")
    return (
        f"{QUEUE_CLIENT} reconnected to its restored session and received its {len(payloads)} "
        "queued messages, in order"
    )


def check_restored_accounts(ctx: Context) -> str:
    kept = check_accounts_kept(ctx)
    steps = [
        {"name": "old-admin", "method": "POST", "path": "/api/auth/login",
         "json": {"username": "admin", "password": ctx.need("admin_password")}},
        {"name": "new-admin", "method": "POST", "path": "/api/auth/login",
         "json": {"username": "admin", "password": ctx.secret("auth_admin_password")}},
    ]  # fmt: skip
    results = http_probe(ctx, "kong_auth", f"http://auth_server:{PORTS['auth_server']}", steps)
    expect_status(results, "old-admin", 200)
    expect_status(results, "new-admin", 401)
    return f"{kept}; the admin logs in with its password of the backup, not the new secret"


def check_restored_grafana(ctx: Context) -> str:
    uid = EDITED_DASHBOARD["uid"]
    status, read = grafana_call("GET", f"/api/dashboards/uid/{uid}", ctx.need("grafana_password"))
    if status != 200 or read["dashboard"]["title"] != EDITED_DASHBOARD["title"]:
        raise CheckFailedError(f"the edited dashboard reads as HTTP {status}: {read}")
    if read["meta"]["version"] != ctx.need("dashboard_version"):
        raise CheckFailedError(f"version {read['meta']['version']}, saved as {ctx.need('dashboard_version')}")
    return (
        f"dashboard {uid} is back (version {read['meta']['version']}), read with the password of the backup"
    )


# --- Runner --------------------------------------------------------------------------

# The first deployment's checks; on several nodes, with the placement checked second.
DEPLOYED: list[Callable[[Context], str]] = [
    check_services_running,
    check_published_ports,
    check_influx_init_script,
    check_simulator_to_influxdb,
    check_adapter_metrics,
    check_auth_server,
    check_prometheus,
    check_kong_client_addresses,
    check_phpmyadmin,
    check_mysql_root_only_inside_its_container,
    check_stack_simulator,
    check_network_isolation,
    check_stack_simulator_summary,
]

PHASES: dict[str, list[Callable[[Context], str]]] = {
    "deployed": DEPLOYED,
    "deployed-multinode": [DEPLOYED[0], check_placement, *DEPLOYED[1:]],
    "node-loss": [check_node_loss, check_node_back],
    "drain": [check_drain],
    "scaled-down": [check_scaled_down],
    "scaled-up": [check_services_running, check_scaled_up],
    "secure": [check_services_running, check_secure_device_publishes, check_secure_refuses_strangers],
    "before-removal": [check_record_points, check_queue_for_stopped_adapter],
    "redeployed": [
        check_services_running_again,
        check_points_kept,
        check_queue_delivered,
        check_accounts_kept,
    ],
    "before-backup": [check_grafana_edit, check_queue_for_absent_session],
    "backup": [check_backup_while_ingesting],
    "fresh": [check_services_running_again, check_fresh_stack_is_empty],
    "restored": [
        check_services_running_again,
        check_restored_points,
        check_restored_queue,
        check_restored_accounts,
        check_restored_grafana,
    ],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copy", type=Path, required=True, help="the deployed copy of the checkout")
    parser.add_argument("--work", type=Path, required=True, help="the e2e's work folder")
    parser.add_argument("--probe-image", required=True, help="an image with Python 3 for HTTP probes")
    parser.add_argument("--images", default="", help="cleaned: the images run.sh built, one per line")
    parser.add_argument("phase", choices=[*PHASES, "cleaned"])
    args = parser.parse_args(argv)
    ctx = Context(args.copy, args.work, args.probe_image)

    checks: list[Callable[[Context], str]] = PHASES.get(args.phase, [])
    if args.phase == "cleaned":
        images = [line.strip() for line in args.images.splitlines() if line.strip()]
        checks = [lambda c: check_nothing_left(c, images)]
    failed = 0
    for check in checks:
        name = getattr(check, "__name__", "check").removeprefix("check_")
        name = "nothing_left" if name == "<lambda>" else name
        started = time.monotonic()
        try:
            detail = check(ctx)
        except (CheckFailedError, subprocess.TimeoutExpired, urllib.error.URLError, OSError) as exc:
            failed += 1
            print(f"FAIL {name} ({time.monotonic() - started:.0f}s): {exc}", flush=True)
        else:
            print(f"PASS {name} ({time.monotonic() - started:.0f}s): {detail}", flush=True)
    print(f"{args.phase}: {len(checks) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
