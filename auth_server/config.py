"""The auth server's settings, read from the environment in one place and checked at start."""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from adapter.config import ConfigError, credentials, env_int, limits_from_env, read_secret
from adapter.contract import DEFAULT_LIMITS, Limits

# HS256 signs with HMAC-SHA256: a key shorter than the hash output weakens it (RFC 7518 3.2).
MIN_JWT_SECRET_BYTES = 32
MAX_WORKERS = 64


def usable_cpus() -> int:
    """CPUs this process may run on, within its cgroup's CPU quota (a container's `cpus:`
    limit), which os.cpu_count() does not see."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: all of them
    return max(1, cpus)


def prepare_metrics_dir(env: MutableMapping[str, str] = os.environ) -> Path:
    """The directory where every worker keeps its metrics. prometheus_client reads
    PROMETHEUS_MULTIPROC_DIR when it is first imported, so this runs before anything imports
    it. A directory the operator named is emptied (counts of an earlier run must not add to
    this one's); otherwise a private one is made, and removed when the server stops."""
    named = env.get("PROMETHEUS_MULTIPROC_DIR")
    if named:
        directory = Path(named)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return directory
    directory = Path(tempfile.mkdtemp(prefix="auth-server-metrics-"))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    master = os.getpid()
    # Workers exit through sys.exit too (atexit runs there): only the master removes it.
    atexit.register(lambda: os.getpid() == master and shutil.rmtree(directory, ignore_errors=True))
    return directory


def metrics_dir(env: Mapping[str, str] = os.environ) -> str | None:
    """The workers' shared metrics directory, or None (an app counting in its own registry)."""
    return env.get("PROMETHEUS_MULTIPROC_DIR") or None


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "false").strip().lower()
    if raw not in ("true", "false"):
        # A typo such as `ture` must not silently leave the broker open.
        raise ConfigError(f"{name}={env.get(name)!r}: expected true or false")
    return raw == "true"


# AUTH_ACCESS_LOG: which answered requests gunicorn's access log shows (auth_server/__main__.py).
ACCESS_LOG_CHOICES = ("all", "failures", "off")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in choices:
        raise ConfigError(f"{name}={env.get(name)!r}: expected one of {', '.join(choices)}")
    return raw


@dataclass(frozen=True)
class LoginLimits:
    """How failed logins slow down later attempts (auth_server/throttle.py). Beyond its free
    failures, each further failure doubles the wait before the next attempt (1 s, 2 s, 4 s ...)
    up to `max_delay_s`."""

    # LOGIN_FREE_FAILURES: one username from one client address.
    free_failures: int = 5
    # LOGIN_ADDRESS_FREE_FAILURES: any usernames from one address (one client trying many names).
    address_free_failures: int = 20
    # LOGIN_USERNAME_FREE_FAILURES: one username from addresses it has not logged in from
    # (many clients trying one name).
    username_free_failures: int = 20
    max_delay_s: int = 900
    # Failures older than this (counted from the latest one) are forgotten.
    memory_s: int = 3600
    # A username that logged in from an address within this many days is judged there by its
    # own failures only: nobody else's can lock it out.
    known_client_days: int = 30

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LoginLimits:
        d = cls()
        return cls(
            free_failures=env_int(env, "LOGIN_FREE_FAILURES", d.free_failures, 1, 1000),
            address_free_failures=env_int(
                env, "LOGIN_ADDRESS_FREE_FAILURES", d.address_free_failures, 1, 100_000
            ),
            username_free_failures=env_int(
                env, "LOGIN_USERNAME_FREE_FAILURES", d.username_free_failures, 1, 100_000
            ),
            max_delay_s=env_int(env, "LOGIN_MAX_DELAY_SECONDS", d.max_delay_s, 1, 7 * 24 * 3600),
            memory_s=env_int(env, "LOGIN_FAILURE_MEMORY_SECONDS", d.memory_s, 60, 30 * 24 * 3600),
            known_client_days=env_int(env, "LOGIN_KNOWN_CLIENT_DAYS", d.known_client_days, 0, 3650),
        )


@dataclass(frozen=True)
class AuthConfig:
    """Every setting of the auth server. Secrets are kept out of repr() so they never reach a log."""

    mysql_host: str = "localhost"
    mysql_port: int = 3306
    mysql_user: str = "auth_server"
    mysql_password: str = field(default="", repr=False)
    mysql_database: str = "iot_accounts"
    # MySQL connections one server (all its workers) opens at most; requests beyond wait for one.
    mysql_max_connections: int = 20
    jwt_secret: str = field(default="", repr=False)
    jwt_expires_s: int = 900
    admin_username: str | None = None
    admin_password: str | None = field(default=None, repr=False)
    influxdb_host: str = "localhost"
    influxdb_port: int = 8086
    influxdb_database: str = "IoT_Devices"
    # Needed when InfluxDB requires authentication (`./run.sh --secure`), ignored otherwise.
    influxdb_username: str | None = None
    influxdb_password: str | None = field(default=None, repr=False)
    auth_host: str = "0.0.0.0"
    auth_port: int = 5000
    # Proxies in front whose X-Forwarded-For entry names the client (Kong: 1). 0: the TCP peer is
    # the client; anyone could write the header, so it is not read.
    trusted_proxy_hops: int = 0
    # A client must send a request's head within this, and never pause longer while sending
    # its body; idle kept-alive connections are closed after it too.
    client_timeout_s: int = 10
    # Open client connections the server holds at once; more wait in the listen backlog.
    max_connections: int = 1000
    # A line per request answered 4xx/5xx (refused logins, tokens, rights, errors); `all` adds
    # every answered one: at fleet scale a line per device write is most of the log and costs
    # a tenth of the server's CPU, and /metrics counts every request either way.
    access_log: str = "failures"
    # Fleet scale (issue 19): gunicorn worker processes (default: one per usable CPU), the
    # InfluxDB connections of the whole server (shared out among its workers, as
    # MYSQL_MAX_CONNECTIONS), and how long tokens can be refreshed without the password.
    workers: int = field(default_factory=usable_cpus)
    influxdb_max_connections: int = 20
    jwt_refresh_max_s: int = 24 * 3600
    login: LoginLimits = field(default_factory=LoginLimits)
    # The adapter's message and series limits (MAX_*), read the same way: one set of
    # limits for MQTT and HTTP.
    limits: Limits = DEFAULT_LIMITS
    series_refresh_s: int = 300
    startup_timeout_s: int = 120
    mqtt_secure: bool = False
    mqtt_host: str = "localhost"
    mqtt_port: int = 1883
    mqtt_admin_username: str | None = None
    mqtt_admin_password: str | None = field(default=None, repr=False)
    adapter_mqtt_username: str | None = None
    adapter_mqtt_password: str | None = field(default=None, repr=False)
    # Optional: the broker metrics exporter's account (reads $SYS/# and nothing else).
    broker_exporter_mqtt_username: str | None = None
    broker_exporter_mqtt_password: str | None = field(default=None, repr=False)

    @property
    def max_message_bytes(self) -> int:
        return self.limits.max_message_bytes

    @property
    def mysql_connections_per_worker(self) -> int:
        return max(1, self.mysql_max_connections // self.workers)

    @property
    def influxdb_connections_per_worker(self) -> int:
        return max(1, self.influxdb_max_connections // self.workers)

    @property
    def reserved_usernames(self) -> frozenset[str]:
        """Broker accounts the auth server does not own as devices (secure mode only)."""
        names = (
            (self.mqtt_admin_username, self.adapter_mqtt_username, self.broker_exporter_mqtt_username)
            if self.mqtt_secure
            else ()
        )
        return frozenset(n for n in names if n)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AuthConfig:
        env = os.environ if env is None else env
        d = cls()
        jwt_secret = read_secret(env, "JWT_SECRET")
        if jwt_secret is None:
            raise ConfigError("JWT_SECRET or JWT_SECRET_FILE is required (e.g. `openssl rand -hex 32`)")
        if len(jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise ConfigError(f"JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes long")
        admin_username, admin_password = credentials(env, "ADMIN_USERNAME", "ADMIN_PASSWORD")
        influxdb_username, influxdb_password = credentials(env, "INFLUXDB_USERNAME", "INFLUXDB_PASSWORD")
        config = cls(
            mysql_host=env.get("MYSQL_HOST") or d.mysql_host,
            mysql_port=env_int(env, "MYSQL_PORT", d.mysql_port, 1, 65535),
            mysql_user=env.get("MYSQL_USER") or d.mysql_user,
            mysql_password=read_secret(env, "MYSQL_PASSWORD") or "",
            mysql_database=env.get("MYSQL_DATABASE") or d.mysql_database,
            mysql_max_connections=env_int(env, "MYSQL_MAX_CONNECTIONS", d.mysql_max_connections, 1, 1000),
            jwt_secret=jwt_secret,
            jwt_expires_s=env_int(env, "JWT_EXPIRES_SECONDS", d.jwt_expires_s, 1, 24 * 3600),
            admin_username=admin_username,
            admin_password=admin_password,
            influxdb_host=env.get("INFLUXDB_HOST") or d.influxdb_host,
            influxdb_port=env_int(env, "INFLUXDB_PORT", d.influxdb_port, 1, 65535),
            influxdb_database=env.get("INFLUXDB_DATABASE") or d.influxdb_database,
            influxdb_username=influxdb_username,
            influxdb_password=influxdb_password,
            auth_host=env.get("AUTH_HOST") or d.auth_host,
            auth_port=env_int(env, "AUTH_PORT", d.auth_port, 1, 65535),
            trusted_proxy_hops=env_int(env, "TRUSTED_PROXY_HOPS", d.trusted_proxy_hops, 0, 10),
            client_timeout_s=env_int(env, "AUTH_CLIENT_TIMEOUT", d.client_timeout_s, 1, 600),
            max_connections=env_int(env, "AUTH_MAX_CONNECTIONS", d.max_connections, 10, 100_000),
            access_log=_choice(env, "AUTH_ACCESS_LOG", ACCESS_LOG_CHOICES, d.access_log),
            workers=env_int(env, "AUTH_WORKERS", d.workers, 1, MAX_WORKERS),
            influxdb_max_connections=env_int(
                env, "INFLUXDB_MAX_CONNECTIONS", d.influxdb_max_connections, 1, 10_000
            ),
            jwt_refresh_max_s=env_int(
                env, "JWT_REFRESH_MAX_SECONDS", d.jwt_refresh_max_s, 0, 366 * 24 * 3600
            ),
            login=LoginLimits.from_env(env),
            limits=limits_from_env(env),
            series_refresh_s=env_int(env, "SERIES_REFRESH_INTERVAL", d.series_refresh_s, 0, 86400),
            startup_timeout_s=env_int(env, "STARTUP_TIMEOUT", d.startup_timeout_s, 1, 3600),
            mqtt_secure=_bool(env, "MQTT_SECURE"),
            mqtt_host=env.get("MQTT_HOST") or d.mqtt_host,
            mqtt_port=env_int(env, "MQTT_PORT", d.mqtt_port, 1, 65535),
            mqtt_admin_username=env.get("MQTT_ADMIN_USERNAME") or None,
            mqtt_admin_password=read_secret(env, "MQTT_ADMIN_PASSWORD"),
            adapter_mqtt_username=env.get("ADAPTER_MQTT_USERNAME") or None,
            adapter_mqtt_password=read_secret(env, "ADAPTER_MQTT_PASSWORD"),
            broker_exporter_mqtt_username=env.get("BROKER_EXPORTER_MQTT_USERNAME") or None,
            broker_exporter_mqtt_password=read_secret(env, "BROKER_EXPORTER_MQTT_PASSWORD"),
        )
        if config.mqtt_secure:
            missing = [
                name
                for name, value in (
                    ("MQTT_ADMIN_USERNAME", config.mqtt_admin_username),
                    ("MQTT_ADMIN_PASSWORD", config.mqtt_admin_password),
                    ("ADAPTER_MQTT_USERNAME", config.adapter_mqtt_username),
                    ("ADAPTER_MQTT_PASSWORD", config.adapter_mqtt_password),
                )
                if not value
            ]
            if missing:
                raise ConfigError(f"MQTT_SECURE=true needs {', '.join(missing)} (or the _FILE variants)")
            if config.mqtt_admin_username == config.adapter_mqtt_username:
                raise ConfigError("MQTT_ADMIN_USERNAME and ADAPTER_MQTT_USERNAME must differ")
            exporter = (config.broker_exporter_mqtt_username, config.broker_exporter_mqtt_password)
            if (exporter[0] is None) != (exporter[1] is None):
                raise ConfigError(
                    "BROKER_EXPORTER_MQTT_USERNAME and BROKER_EXPORTER_MQTT_PASSWORD (or _FILE) go together"
                )
            if exporter[0] in (config.mqtt_admin_username, config.adapter_mqtt_username):
                raise ConfigError(
                    "BROKER_EXPORTER_MQTT_USERNAME must differ from the admin and adapter accounts"
                )
        return config
