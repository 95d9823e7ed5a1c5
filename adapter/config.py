"""The adapter's settings, read from the environment in one place and checked at start."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field


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
    mqtt_client_id: str = "iot-adapter"
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
    flush_interval_ms: int = 50
    max_unacked: int = 20000
    max_message_bytes: int = 256 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AdapterConfig:
        env = os.environ if env is None else env
        d = cls()
        topic = env.get("MQTT_TOPIC") or d.mqtt_topic
        influxdb_username, influxdb_password = credentials(env, "INFLUXDB_USERNAME", "INFLUXDB_PASSWORD")
        return cls(
            mqtt_host=env.get("MQTT_HOST") or d.mqtt_host,
            mqtt_port=env_int(env, "MQTT_PORT", d.mqtt_port, 1, 65535),
            mqtt_username=env.get("MQTT_USERNAME") or None,
            mqtt_password=read_secret(env, "MQTT_PASSWORD"),
            mqtt_topic=topic,
            mqtt_client_id=env.get("MQTT_CLIENT_ID") or d.mqtt_client_id,
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
            flush_interval_ms=env_int(env, "FLUSH_INTERVAL_MS", d.flush_interval_ms, 1, 10_000),
            # MQTT 5 Receive Maximum is a 16-bit field: the broker never has more than this
            # many messages in flight to us, which bounds the adapter's memory.
            max_unacked=env_int(env, "MAX_UNACKED", d.max_unacked, 1, 65535),
            max_message_bytes=env_int(env, "MAX_MESSAGE_BYTES", d.max_message_bytes, 2, 268_435_455),
        )
