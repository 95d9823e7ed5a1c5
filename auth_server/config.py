"""The auth server's settings, read from the environment in one place and checked at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from adapter.config import ConfigError, credentials, env_int, read_secret

# HS256 signs with HMAC-SHA256: a key shorter than the hash output weakens it (RFC 7518 3.2).
MIN_JWT_SECRET_BYTES = 32


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "false").strip().lower()
    if raw not in ("true", "false"):
        # A typo such as `ture` must not silently leave the broker open.
        raise ConfigError(f"{name}={env.get(name)!r}: expected true or false")
    return raw == "true"


@dataclass(frozen=True)
class AuthConfig:
    """Every setting of the auth server. Secrets are kept out of repr() so they never reach a log."""

    mysql_host: str = "localhost"
    mysql_port: int = 3306
    mysql_user: str = "auth_server"
    mysql_password: str = field(default="", repr=False)
    mysql_database: str = "iot_accounts"
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
    auth_threads: int = 8
    # Same default as the adapter's MAX_MESSAGE_BYTES: one payload limit for MQTT and HTTP.
    max_message_bytes: int = 256 * 1024
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
            auth_threads=env_int(env, "AUTH_THREADS", d.auth_threads, 1, 256),
            max_message_bytes=env_int(env, "MAX_MESSAGE_BYTES", d.max_message_bytes, 2, 64 * 1024 * 1024),
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
