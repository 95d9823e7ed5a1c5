"""Settings from the environment: defaults, Docker-secret files, and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from auth_server import create_app
from auth_server.config import AuthConfig, ConfigError

SECRET = "s" * 32


def test_defaults_match_the_stack() -> None:
    config = AuthConfig.from_env({"JWT_SECRET": SECRET})
    assert config.auth_port == 5000
    assert config.mysql_port == 3306
    assert config.mysql_database == "iot_accounts"
    assert config.influxdb_database == "IoT_Devices"
    assert config.jwt_expires_s == 900
    assert config.max_message_bytes == 256 * 1024
    assert config.mqtt_secure is False
    assert config.reserved_usernames == frozenset()
    assert config.jwt_refresh_max_s == 24 * 3600
    assert config.access_log == "failures"
    assert 1 <= config.workers <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("workers", "mysql", "influx", "per_worker"),
    [
        ("1", "20", "20", (20, 20)),
        ("2", "20", "10", (10, 5)),
        ("3", "20", "20", (6, 6)),
        ("8", "4", "4", (1, 1)),
    ],
)
def test_connection_limits_are_shared_out_among_the_workers(
    workers: str, mysql: str, influx: str, per_worker: tuple[int, int]
) -> None:
    """MYSQL_MAX_CONNECTIONS and INFLUXDB_MAX_CONNECTIONS bound the whole server, whatever
    AUTH_WORKERS is (at least one connection per worker)."""
    env = {"JWT_SECRET": SECRET, "AUTH_WORKERS": workers, "MYSQL_MAX_CONNECTIONS": mysql}
    config = AuthConfig.from_env({**env, "INFLUXDB_MAX_CONNECTIONS": influx})
    assert (config.mysql_connections_per_worker, config.influxdb_connections_per_worker) == per_worker


def test_secrets_come_from_files(tmp_path: Path) -> None:
    files = {}
    for name, value in [("JWT_SECRET", SECRET), ("MYSQL_PASSWORD", "db-pw"), ("ADMIN_PASSWORD", "admin-pw")]:
        path = tmp_path / name.lower()
        path.write_text(value + "\n")  # Docker secrets often end with a newline
        files[f"{name}_FILE"] = str(path)
    config = AuthConfig.from_env({**files, "ADMIN_USERNAME": "root-admin", "JWT_SECRET": "ignored"})
    assert config.jwt_secret == SECRET
    assert config.mysql_password == "db-pw"
    assert config.admin_password == "admin-pw"


def test_secrets_are_not_in_repr() -> None:
    config = AuthConfig.from_env(
        {
            "JWT_SECRET": SECRET,
            "MYSQL_PASSWORD": "db-pw-123",
            "ADMIN_USERNAME": "a",
            "ADMIN_PASSWORD": "adm-pw-123",
        }
    )
    text = repr(config)
    assert "mysql_host" in text
    for secret in (SECRET, "db-pw-123", "adm-pw-123"):
        assert secret not in text


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({}, "JWT_SECRET"),
        ({"JWT_SECRET": "short"}, "at least 32 bytes"),
        ({"JWT_SECRET_FILE": "/nonexistent/secret"}, "JWT_SECRET_FILE"),
        ({"JWT_SECRET": SECRET, "AUTH_PORT": "http"}, "AUTH_PORT"),
        ({"JWT_SECRET": SECRET, "MYSQL_PORT": "70000"}, "MYSQL_PORT"),
        ({"JWT_SECRET": SECRET, "JWT_EXPIRES_SECONDS": "0"}, "JWT_EXPIRES_SECONDS"),
        ({"JWT_SECRET": SECRET, "JWT_REFRESH_MAX_SECONDS": "-1"}, "JWT_REFRESH_MAX_SECONDS"),
        ({"JWT_SECRET": SECRET, "AUTH_WORKERS": "0"}, "AUTH_WORKERS"),
        ({"JWT_SECRET": SECRET, "AUTH_WORKERS": "65"}, "AUTH_WORKERS"),
        ({"JWT_SECRET": SECRET, "AUTH_WORKERS": "two"}, "AUTH_WORKERS"),
        ({"JWT_SECRET": SECRET, "INFLUXDB_MAX_CONNECTIONS": "0"}, "INFLUXDB_MAX_CONNECTIONS"),
        ({"JWT_SECRET": SECRET, "ADMIN_USERNAME": "admin"}, "ADMIN_PASSWORD"),
        ({"JWT_SECRET": SECRET, "MQTT_SECURE": "ture"}, "MQTT_SECURE"),
        ({"JWT_SECRET": SECRET, "AUTH_ACCESS_LOG": "some"}, "AUTH_ACCESS_LOG"),
        ({"JWT_SECRET": SECRET, "MQTT_SECURE": "true"}, "MQTT_ADMIN_USERNAME"),
        (
            {
                "JWT_SECRET": SECRET,
                "MQTT_SECURE": "true",
                "MQTT_ADMIN_USERNAME": "same",
                "MQTT_ADMIN_PASSWORD": "x",
                "ADAPTER_MQTT_USERNAME": "same",
                "ADAPTER_MQTT_PASSWORD": "y",
            },
            "must differ",
        ),
    ],
)
def test_bad_settings_fail_with_the_variable_named(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        AuthConfig.from_env(env)


def test_secure_mode_reserves_the_broker_account_names() -> None:
    config = AuthConfig.from_env(
        {
            "JWT_SECRET": SECRET,
            "MQTT_SECURE": "TRUE",
            "MQTT_ADMIN_USERNAME": "iot-admin",
            "MQTT_ADMIN_PASSWORD": "x",
            "ADAPTER_MQTT_USERNAME": "adapter",
            "ADAPTER_MQTT_PASSWORD": "y",
        }
    )
    assert config.mqtt_secure is True
    assert config.reserved_usernames == {"iot-admin", "adapter"}


def test_short_admin_password_stops_the_start(settings: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="ADMIN_PASSWORD"):
        create_app({**settings, "ADMIN_PASSWORD": "short"})
