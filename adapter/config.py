"""The adapter's settings, read from the environment in one place and checked at start."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from adapter.contract import DEFAULT_LIMITS, Limits


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


# read_secret and env_int are shared with the auth server (auth_server/config.py): both
# services read their settings the same way.


def read_secret(env: Mapping[str, str], name: str) -> str | None:
    """`NAME`, or the contents of the file named by `NAME_FILE` (Docker secrets); None if empty."""
    path = env.get(f"{name}_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                # Secret files usually end with a newline that is not part of the secret.
                return fh.read().strip() or None
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path}: cannot read it ({exc.strerror})") from exc
    return env.get(name) or None


def env_int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: expected a whole number") from exc
    if not low <= value <= high:
        raise ConfigError(f"{name}={value}: must be between {low} and {high}")
    return value


def limits_from_env(env: Mapping[str, str]) -> Limits:
    """The message and series limits (MAX_*), shared by the adapter and the HTTP data API."""
    d = DEFAULT_LIMITS
    return Limits(
        max_message_bytes=env_int(env, "MAX_MESSAGE_BYTES", d.max_message_bytes, 2, 268_435_455),
        max_location_length=env_int(env, "MAX_LOCATION_LENGTH", d.max_location_length, 1, 1 << 20),
        max_station_length=env_int(env, "MAX_STATION_LENGTH", d.max_station_length, 1, 1 << 20),
        max_key_length=env_int(env, "MAX_KEY_LENGTH", d.max_key_length, 1, 1 << 20),
        max_keys_per_object=env_int(env, "MAX_KEYS_PER_OBJECT", d.max_keys_per_object, 1, 1_000_000),
        max_backlog_elements=env_int(env, "MAX_BACKLOG_ELEMENTS", d.max_backlog_elements, 1, 1_000_000),
        max_points_per_message=env_int(
            env, "MAX_POINTS_PER_MESSAGE", d.max_points_per_message, 1, 10_000_000
        ),
        max_series_per_device=env_int(env, "MAX_SERIES_PER_DEVICE", d.max_series_per_device, 1, 10_000_000),
        max_series=env_int(env, "MAX_SERIES", d.max_series, 1, 100_000_000),
    )


def shared_group_topic(topic: str, secret: str) -> str:
    """`$share/<group>/<filter>` → `$share/<group>-<hash of secret>/<filter>`; other topics as given.

    In open mode anyone may join a shared subscription whose group they can name and take a
    share of the messages; a group named after the client-id secret is known only to the
    replicas that hold it.
    """
    prefix, _, rest = topic.partition("/")
    group, sep, topic_filter = rest.partition("/")
    if prefix != "$share" or not sep:
        return topic
    digest = hashlib.sha256(secret.encode()).hexdigest()[:16]
    return f"$share/{group}-{digest}/{topic_filter}"


def env_address(env: Mapping[str, str], name: str, default: str) -> str:
    """A listen address: an IPv4 or IPv6 literal (a host name could resolve anywhere)."""
    raw = env.get(name) or default
    try:
        ipaddress.ip_address(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: expected an IP address such as 127.0.0.1 or 0.0.0.0") from exc
    return raw


def credentials(env: Mapping[str, str], user_var: str, password_var: str) -> tuple[str | None, str | None]:
    """A user name and its password (`PASSWORD` or `PASSWORD_FILE`), both or neither."""
    username = env.get(user_var) or None
    password = read_secret(env, password_var)
    if (username is None) != (password is None):
        raise ConfigError(f"{user_var} and {password_var} (or {password_var}_FILE) go together")
    return username, password


@dataclass(frozen=True)
class AdapterConfig:
    mqtt_host: str = "localhost"
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_topic: str = "#"
    mqtt_client_id: str = field(default="iot-adapter", repr=False)
    # Whether the client id is the documented default anyone can guess (warned about at start).
    mqtt_client_id_default: bool = True
    # How long the broker keeps our session (subscription + queued messages) while we are away.
    mqtt_session_expiry_s: int = 7 * 24 * 3600
    influxdb_host: str = "localhost"
    influxdb_port: int = 8086
    influxdb_database: str = "IoT_Devices"
    # Sent with every request; an InfluxDB without authentication (the default profile)
    # ignores them, one with it (`./run.sh --secure`) requires them.
    influxdb_username: str | None = None
    influxdb_password: str | None = field(default=None, repr=False)
    debug_data_flow: bool = False
    # Loopback unless told otherwise: the metrics are for Prometheus, not for the network.
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 8000
    batch_size: int = 5000
    # Below InfluxDB's default max-body-size (25,000,000 bytes): a write never exceeds it.
    max_batch_bytes: int = 10_000_000
    flush_interval_ms: int = 50
    max_unacked: int = 20000
    # On SIGTERM, how long to keep retrying InfluxDB before leaving the rest unacked in the
    # broker; with one write's timeout (10 s) it stays inside the stack's 30 s grace period.
    stop_timeout_s: int = 15
    series_refresh_s: int = 300
    retained_sweep_s: int = 300
    device_metrics_ttl_s: int = 86400
    max_device_metrics: int = 10_000
    limits: Limits = DEFAULT_LIMITS

    @property
    def max_message_bytes(self) -> int:
        return self.limits.max_message_bytes

    @property
    def mqtt_topic_shown(self) -> str:
        """The subscription as logs show it: a secret shared-subscription group is masked."""
        if self.mqtt_client_id_default:
            return self.mqtt_topic
        return re.sub(r"^(\$share/[^/]*-)[0-9a-f]{16}/", r"\1…/", self.mqtt_topic)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AdapterConfig:
        env = os.environ if env is None else env
        d = cls()
        topic = env.get("MQTT_TOPIC") or d.mqtt_topic
        # The client id names the persistent session: whoever connects with it gets the
        # session's queued messages. The stack passes a random one as a Docker secret, plus a
        # per-replica suffix (`-<task slot>`) so that each replica keeps a session of its own.
        base = read_secret(env, "MQTT_CLIENT_ID")
        if base is not None and env.get("MQTT_CLIENT_ID_FILE"):
            topic = shared_group_topic(topic, base)
        client_id = (base or d.mqtt_client_id) + env.get("MQTT_CLIENT_ID_SUFFIX", "")
        if len(client_id.encode()) > 65535:
            raise ConfigError("MQTT_CLIENT_ID: longer than MQTT allows (65535 bytes)")
        influxdb_username, influxdb_password = credentials(env, "INFLUXDB_USERNAME", "INFLUXDB_PASSWORD")
        return cls(
            mqtt_host=env.get("MQTT_HOST") or d.mqtt_host,
            mqtt_port=env_int(env, "MQTT_PORT", d.mqtt_port, 1, 65535),
            mqtt_username=env.get("MQTT_USERNAME") or None,
            mqtt_password=read_secret(env, "MQTT_PASSWORD"),
            mqtt_topic=topic,
            mqtt_client_id=client_id,
            mqtt_client_id_default=base is None,
            mqtt_session_expiry_s=env_int(env, "MQTT_SESSION_EXPIRY", d.mqtt_session_expiry_s, 0, 0xFFFFFFFF),
            influxdb_host=env.get("INFLUXDB_HOST") or d.influxdb_host,
            influxdb_port=env_int(env, "INFLUXDB_PORT", d.influxdb_port, 1, 65535),
            influxdb_database=env.get("INFLUXDB_DATABASE") or d.influxdb_database,
            influxdb_username=influxdb_username,
            influxdb_password=influxdb_password,
            # Exactly "true": the design says the variable's value is "true", nothing looser.
            debug_data_flow=env.get("DEBUG_DATA_FLOW") == "true",
            metrics_address=env_address(env, "METRICS_ADDRESS", d.metrics_address),
            metrics_port=env_int(env, "METRICS_PORT", d.metrics_port, 0, 65535),
            batch_size=env_int(env, "BATCH_SIZE", d.batch_size, 1, 100_000),
            max_batch_bytes=env_int(env, "MAX_BATCH_BYTES", d.max_batch_bytes, 1024, 1_000_000_000),
            flush_interval_ms=env_int(env, "FLUSH_INTERVAL_MS", d.flush_interval_ms, 1, 10_000),
            # MQTT 5 Receive Maximum is a 16-bit field: the broker never has more than this
            # many messages in flight to us, which bounds the adapter's memory.
            max_unacked=env_int(env, "MAX_UNACKED", d.max_unacked, 1, 65535),
            stop_timeout_s=env_int(env, "STOP_TIMEOUT", d.stop_timeout_s, 0, 3600),
            series_refresh_s=env_int(env, "SERIES_REFRESH_INTERVAL", d.series_refresh_s, 0, 86400),
            retained_sweep_s=env_int(env, "RETAINED_SWEEP_INTERVAL", d.retained_sweep_s, 0, 86400),
            device_metrics_ttl_s=env_int(env, "DEVICE_METRICS_TTL", d.device_metrics_ttl_s, 1, 365 * 86400),
            max_device_metrics=env_int(env, "MAX_DEVICE_METRICS", d.max_device_metrics, 0, 10_000_000),
            limits=limits_from_env(env),
        )
