"""The HTTP data path over the secure profile's authenticated InfluxDB: the auth server
writes and reads with its own user, and a refused login is a 503, not a 500 or a silent loss."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from auth_server import create_app
from auth_server.config import AuthConfig, ConfigError
from tests.auth_server.conftest import Api
from tests.secure_influx import DATABASE, SecureInflux


@pytest.fixture
def secure_settings(settings: dict[str, str], secure_influx: SecureInflux) -> dict[str, str]:
    return {
        **settings,
        "INFLUXDB_PORT": str(secure_influx.server.port),
        "INFLUXDB_DATABASE": DATABASE,
        "INFLUXDB_USERNAME": "auth_server",
        "INFLUXDB_PASSWORD_FILE": str(secure_influx.accounts.file("auth_server")),
    }


def api_for(settings: dict[str, str]) -> Api:
    client: FlaskClient = create_app(settings).test_client()
    return Api(client, settings)


def test_device_writes_and_reads_over_the_authenticated_influxdb(
    secure_settings: dict[str, str], secure_influx: SecureInflux
) -> None:
    api = api_for(secure_settings)
    station = f"sec_{uuid.uuid4().hex[:8]}"
    _, token = api.device("rpi-secure", ("SEC", station, True, True))
    written = api.call(
        "POST", f"/api/data/SEC/{station}", token=token, json={"BAT": 77.5, "timestamp": 1_700_000_000}
    )
    assert written.status_code == 200, written.get_json()
    assert secure_influx.points(f"{station}.BAT") == [["2023-11-14T22:13:20Z", 77.5]]
    read = api.call("GET", f"/api/data/SEC/{station}", token=token)
    assert read.status_code == 200
    assert read.get_json()["series"] == [{"metric": "BAT", "values": [["2023-11-14T22:13:20Z", 77.5]]}]
    password = secure_influx.accounts.passwords["auth_server"]
    assert all(password not in r.get_data(as_text=True) for r in api.responses)


def test_refused_credentials_are_503_and_nothing_is_written(
    secure_settings: dict[str, str], secure_influx: SecureInflux, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-auth-server-password")
    api = api_for({**secure_settings, "INFLUXDB_PASSWORD_FILE": str(wrong)})
    station = f"sec_{uuid.uuid4().hex[:8]}"
    _, token = api.device("rpi-refused", ("SEC", station, True, True))
    written = api.call("POST", f"/api/data/SEC/{station}", token=token, json={"BAT": 1})
    assert written.status_code == 503
    assert "error" in written.get_json()
    read = api.call("GET", f"/api/data/SEC/{station}", token=token)
    assert read.status_code == 503
    assert secure_influx.points(f"{station}.BAT") == []
    assert all("not-the-auth-server-password" not in r.get_data(as_text=True) for r in api.responses)


def test_influxdb_credentials_go_together_and_stay_out_of_repr(tmp_path: Path) -> None:
    secret = "j" * 32
    with pytest.raises(ConfigError, match="INFLUXDB_USERNAME and INFLUXDB_PASSWORD"):
        AuthConfig.from_env({"JWT_SECRET": secret, "INFLUXDB_USERNAME": "auth_server"})
    password_file = tmp_path / "influxdb_auth_password"
    password_file.write_text("influx-secret-123\n")
    config = AuthConfig.from_env(
        {
            "JWT_SECRET": secret,
            "INFLUXDB_USERNAME": "auth_server",
            "INFLUXDB_PASSWORD_FILE": str(password_file),
        }
    )
    assert (config.influxdb_username, config.influxdb_password) == ("auth_server", "influx-secret-123")
    assert "influx-secret-123" not in repr(config)
