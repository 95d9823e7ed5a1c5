"""Real servers for tests: each started on a free port in its own temporary directory.

Every server waits until it answers (never a fixed sleep), keeps its log file so a failing
test can show it, and can be stopped and started again on the same port and data
(the no-loss tests restart them mid-stream). MariaDB, Prometheus and the auth server joined
this module as their components needed them.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import requests


class ServerError(RuntimeError):
    """A test server could not be started; the message includes the tail of its log."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range.

    Port 0 would give an ephemeral port, and a server started a moment later may find it
    taken by some client's outgoing connection (the kernel hands those out from the same
    range). Below the range only listeners compete, and each port is handed out once.
    """
    low = max(1024, _ephemeral_range()[0] - 12000)
    high = _ephemeral_range()[0] - 1
    for _ in range(1000):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise ServerError("no free port below the ephemeral range")


def require_binary(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        # A clear failure, never a silent skip: the test command installs these.
        raise ServerError(f"`{name}` is not installed; run ./test.sh, which installs it")
    return path


def wait_for(
    check: Callable[[], bool],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"{what} exited with code {proc.returncode}\n{tail(log)}")
        if check():
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise ServerError(f"{what} did not answer within {timeout_s}s\n{tail(log)}")


def tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {log} ---\n" + "\n".join(text)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class ManagedServer:
    """A child process with a data directory, a log, and stop/start/kill."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] | None = None  # None: this process's environment
        self.cwd: Path = workdir

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout_s: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        wait_for(self.ready, timeout_s, self.name, self.proc, self.log_path)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class MosquittoServer(ManagedServer):
    """Mosquitto 2.x with persistence, sized for the adapter's persistent session."""

    name = "mosquitto"

    def __init__(
        self, workdir: Path, port: int | None = None, extra_config: str = "", config_text: str | None = None
    ) -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self.binary = require_binary("mosquitto")
        self.config_path = workdir / "mosquitto.conf"
        self.config_path.write_text(config_text or self.default_config(extra_config))

    def default_config(self, extra: str) -> str:
        return (
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n" + ("user root\n" if os.geteuid() == 0 else "") + "persistence true\n"
            # Started as root, mosquitto would switch to its own user, which cannot write
            # into pytest's private temporary directories.
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n"
            "max_packet_size 1048576\n"
            "log_dest stdout\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n" + extra
        )

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def ready(self) -> bool:
        return port_open(self.port)


class InfluxServer(ManagedServer):
    """InfluxDB 1.x (`influxd`) with its HTTP API on a free loopback port."""

    name = "influxd"

    def __init__(
        self,
        workdir: Path,
        data_options: str = "",
        http_options: str = "",
        auth_enabled: bool = False,
        extra_config: str = "",
    ) -> None:
        """`data_options`, `http_options`: extra lines for the [data] and [http] sections
        (e.g. `max-values-per-tag = 5`); `auth_enabled`: HTTP authentication on, as in the
        secure profile; `extra_config`: more TOML sections (e.g. `[continuous_queries]`)."""
        super().__init__(workdir)
        self.port = free_port()
        self.binary = require_binary("influxd")
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "influxdb.conf"
        self.config_path.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{free_port()}"\n'
            f'[meta]\n  dir = "{workdir}/meta"\n'
            f'[data]\n  dir = "{workdir}/data"\n  wal-dir = "{workdir}/wal"\n'
            "  query-log-enabled = false\n"
            f"{data_options}\n"
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            f"  auth-enabled = {str(auth_enabled).lower()}\n"
            f"{http_options}\n"
            "[monitor]\n  store-enabled = false\n" + extra_config
        )

    def command(self) -> list[str]:
        return [self.binary, "-config", str(self.config_path)]

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/ping", timeout=0.5).status_code == 204
        except requests.RequestException:
            return False

    def query(self, q: str, db: str | None = None, epoch: str | None = "ns") -> dict:
        params = {"q": q}
        if db:
            params["db"] = db
        if epoch:
            params["epoch"] = epoch
        resp = requests.post(f"{self.url}/query", data=params, timeout=30)
        resp.raise_for_status()
        body = resp.json()
        for result in body.get("results", []):
            if "error" in result:
                raise ServerError(f"InfluxQL error for {q!r}: {result['error']}")
        return body

    def series(self, q: str, db: str) -> list[dict]:
        """The `series` list of the first statement's result ([] when there is none)."""
        return self.query(q, db)["results"][0].get("series", [])

    def count_points(self, db: str) -> int:
        total = 0
        for s in self.series('SELECT count("value") FROM /.*/', db):
            total += int(s["values"][0][1])
        return total

    def write(self, db: str, lines: str) -> requests.Response:
        return requests.post(
            f"{self.url}/write", params={"db": db, "precision": "n"}, data=lines.encode(), timeout=30
        )


REPO_ROOT = Path(__file__).resolve().parent.parent


class AdapterProcess(ManagedServer):
    """The real adapter, run as `python adapter/adapter.py` with its environment."""

    name = "adapter"

    def __init__(
        self, workdir: Path, mqtt: MosquittoServer, influx: InfluxServer, database: str, **env: str
    ) -> None:
        super().__init__(workdir)
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "MQTT_HOST": "127.0.0.1",
            "MQTT_PORT": str(mqtt.port),
            "MQTT_CLIENT_ID": f"adapter-{database}",
            "INFLUXDB_HOST": "127.0.0.1",
            "INFLUXDB_PORT": str(influx.port),
            "INFLUXDB_DATABASE": database,
            "METRICS_PORT": str(self.metrics_port),
            # A sweep for retained messages adds its marker to the messages received: off,
            # so that counts stay exact, unless a test turns it on.
            "RETAINED_SWEEP_INTERVAL": "0",
        }
        self.env.pop("DEBUG_DATA_FLOW", None)
        self.env.update(env)
        self.env = {k: v for k, v in self.env.items() if v is not None}

    def command(self) -> list[str]:
        import sys

        return [sys.executable, str(REPO_ROOT / "adapter" / "adapter.py")]

    def ready(self) -> bool:
        # Ready once subscribed: the connect log line comes right before the SUBSCRIBE.
        return "subscribing to" in self.log_text() and self.metric("adapter_mqtt_connected") == 1

    def metrics_text(self) -> str:
        try:
            return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except requests.RequestException:
            return ""

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value, 0 when absent: metric("adapter_points_written_total")."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def samples(self, name: str, label: str = "reason") -> dict[str, float]:
        """Every sample of `name` by the value of one label: samples("adapter_points_dropped_total")."""
        from prometheus_client.parser import text_string_to_metric_families

        return {
            sample.labels.get(label, ""): float(sample.value)
            for family in text_string_to_metric_families(self.metrics_text())
            for sample in family.samples
            if sample.name == name
        }

    def peak_rss_bytes(self) -> int:
        """The process's peak resident memory (VmHWM) so far."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise ServerError("no VmHWM in /proc/<pid>/status")


class BrokerExporterProcess(ManagedServer):
    """The real broker metrics exporter, run as `python -m broker_exporter` from the repository root."""

    name = "broker_exporter"

    def __init__(self, workdir: Path, mqtt: MosquittoServer, **env: str) -> None:
        super().__init__(workdir)
        self.metrics_port = free_port()
        self.cwd = REPO_ROOT
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "MQTT_HOST": "127.0.0.1",
            "MQTT_PORT": str(mqtt.port),
            "METRICS_PORT": str(self.metrics_port),
            **env,
        }

    def command(self) -> list[str]:
        import sys

        return [sys.executable, "-m", "broker_exporter"]

    def ready(self) -> bool:
        return self.metric("mosquitto_exporter_connected") == 1

    def metrics_text(self) -> str:
        try:
            return requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except requests.RequestException:
            return ""

    def metrics(self) -> dict[str, float]:
        """{sample name: value} of the unlabelled samples (every `mosquitto_*` statistic)."""
        from prometheus_client.parser import text_string_to_metric_families

        return {
            sample.name: float(sample.value)
            for family in text_string_to_metric_families(self.metrics_text())
            for sample in family.samples
            if not sample.labels
        }

    def metric(self, name: str) -> float | None:
        return self.metrics().get(name)


class PrometheusServer(ManagedServer):
    """Prometheus (Debian's binary) with a given configuration, on a free loopback port.

    `files` are written next to the configuration, so rule files it names relatively
    (`rule_files: [alerts.yml]`, as in prometheus/prometheus.yml) are found.
    """

    name = "prometheus"

    def __init__(
        self, workdir: Path, config_text: str, files: dict[str, str] | None = None, port: int | None = None
    ) -> None:
        super().__init__(workdir)
        # A port chosen before the config is written lets the config scrape Prometheus itself.
        self.port = port or free_port()
        self.binary = require_binary("prometheus")
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(config_text)
        for name, text in (files or {}).items():
            (workdir / name).write_text(text)

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=0.5).status_code == 200
        except requests.RequestException:
            return False

    def api(self, path: str, **params: str) -> Any:
        """The `data` of an HTTP API answer (/api/v1/<path>); ServerError on an error answer."""
        body = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        if body.get("status") != "success":
            raise ServerError(
                f"Prometheus /api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant vector `expr` evaluates to now: [{"metric": {...}, "value": [t, "v"]}]."""
        return self.api("query", query=expr)["result"]


class AlertmanagerServer(ManagedServer):
    """Debian's Alertmanager (`prometheus-alertmanager`) with a given configuration, on a free
    loopback port, no cluster."""

    name = "alertmanager"

    def __init__(self, workdir: Path, config_text: str) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.binary = require_binary("prometheus-alertmanager")
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(config_text)

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        ]

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=0.5).status_code == 200
        except requests.RequestException:
            return False

    def alerts(self) -> list[dict[str, Any]]:
        return requests.get(f"{self.url}/api/v2/alerts", timeout=10).json()


class MariaDBServer(ManagedServer):
    """MariaDB (`mariadbd`), initialised by mariadb-install-db in its own data directory, on a
    free loopback port. Tests connect as `user`/`password` (any database); `root()` is the
    superuser over the unix socket."""

    name = "mariadb"
    user = "iot_test"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.binary = require_binary("mariadbd")
        self.install_db = require_binary("mariadb-install-db")
        self.datadir = workdir / "data"
        self.socket = workdir / "mariadb.sock"
        self.password = os.urandom(12).hex()
        # mariadbd refuses to run as root unless told to; elsewhere it runs as whoever we are.
        self._user_args = ["--user=root"] if os.geteuid() == 0 else []

    def start(self, timeout_s: float = 60.0) -> None:
        first_start = not (self.datadir / "mysql").is_dir()
        if first_start:
            with open(self.log_path, "ab") as log:
                subprocess.run(
                    [
                        self.install_db,
                        "--no-defaults",
                        f"--datadir={self.datadir}",
                        "--auth-root-authentication-method=normal",
                        "--skip-test-db",
                        *self._user_args,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    check=True,
                )
        super().start(timeout_s)
        if first_start:
            with self.root() as conn, conn.cursor() as cur:
                # Password login over TCP, as the auth server does in the stack.
                cur.execute(f"CREATE USER '{self.user}'@'127.0.0.1' IDENTIFIED BY %s", (self.password,))
                cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'127.0.0.1'")

    def command(self) -> list[str]:
        return [
            self.binary,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.workdir / 'mariadb.pid'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            # Tests need no durability across power loss; fsync per commit only slows them.
            "--innodb-flush-log-at-trx-commit=2",
            *self._user_args,
        ]

    def root(self) -> pymysql.connections.Connection:
        return pymysql.connect(unix_socket=str(self.socket), user="root", autocommit=True, connect_timeout=2)

    def ready(self) -> bool:
        try:
            with self.root() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except pymysql.MySQLError:
            return False

    def create_database(self, name: str) -> None:
        with self.root() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")

    def drop_database(self, name: str) -> None:
        with self.root() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port` (IPv4 and IPv6), from
    /proc/net/tcp*: where a server really binds, whatever it says."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, state = fields[1], fields[3]
            host, hex_port = address.rsplit(":", 1)
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(host)
            # The kernel prints each 32-bit word in host (little-endian) byte order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(words)))
    return found


def clean_environ() -> dict[str, str]:
    """This process's environment without anything the auth server reads."""
    ours = re.compile(
        r"^(MYSQL_|JWT_|ADMIN_|INFLUXDB_|AUTH_|MQTT_|ADAPTER_MQTT_|LOGIN_|TRUSTED_PROXY_HOPS$"
        r"|MAX_|SERIES_REFRESH_INTERVAL$|STARTUP_TIMEOUT$|PYTHONPATH$|PROMETHEUS_MULTIPROC_DIR$)"
    )
    return {k: v for k, v in os.environ.items() if not ours.match(k)}


class AuthServerProcess(ManagedServer):
    """The auth server as a process: `python -m auth_server`, i.e. gunicorn."""

    name = "auth_server"

    def __init__(self, workdir: Path, settings: dict[str, str]) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **clean_environ(),
            **settings,
            "AUTH_HOST": "127.0.0.1",
            "AUTH_PORT": str(self.port),
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
        }

    def command(self) -> list[str]:
        return [sys.executable, "-m", "auth_server"]

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False
