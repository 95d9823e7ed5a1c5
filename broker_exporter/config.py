"""The exporter's settings, read from the environment in one place and checked at start."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from adapter.config import ConfigError, env_int, read_secret

__all__ = ["ConfigError", "ExporterConfig"]


@dataclass(frozen=True)
class ExporterConfig:
    mqtt_host: str = "localhost"
    mqtt_port: int = 1883
    # Secure mode: an account allowed to read `$SYS/#` only (the auth server provisions it).
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    # A random suffix by default: two exporters (an update starting the new task first, a
    # second stack) must not take each other's connection over.
    mqtt_client_id: str = ""
    metrics_port: int = 9234
    # No `$SYS` message for this long while connected means the broker stopped publishing
    # its statistics (Mosquitto sends `$SYS/broker/uptime` every sys_interval, 10 s).
    stale_after_s: int = 60

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ExporterConfig:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            mqtt_host=env.get("MQTT_HOST") or d.mqtt_host,
            mqtt_port=env_int(env, "MQTT_PORT", d.mqtt_port, 1, 65535),
            mqtt_username=env.get("MQTT_USERNAME") or None,
            mqtt_password=read_secret(env, "MQTT_PASSWORD"),
            mqtt_client_id=env.get("MQTT_CLIENT_ID") or f"broker-exporter-{secrets.token_hex(6)}",
            metrics_port=env_int(env, "METRICS_PORT", d.metrics_port, 0, 65535),
            stale_after_s=env_int(env, "STALE_AFTER", d.stale_after_s, 5, 3600),
        )
