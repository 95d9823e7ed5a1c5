"""The Flask application of the auth server, and what must hold before it serves.

`create_app()` builds it and prepares what it depends on: waits for MySQL, applies the schema,
creates the first admin, and in secure MQTT mode brings the broker's accounts in line with
MySQL. Run it with `python -m auth_server`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping

import pymysql
from flask import Flask

from auth_server import accounts, auth, data, db, gateway, ops
from auth_server.config import AuthConfig, ConfigError
from auth_server.errors import register_error_handlers
from auth_server.influx import InfluxClient
from auth_server.metrics import AuthMetrics
from auth_server.mqtt_sync import DeviceState, MqttAccountSync, MqttSyncError
from auth_server.passwords import hash_password
from auth_server.policy import Role, ValidationError, validate_password, validate_username
from auth_server.store import AccountReader, AccountStore
from auth_server.throttle import LoginThrottle

__all__ = ["ConfigError", "create_app"]

log = logging.getLogger(__name__)

# Several replicas may start together: one at a time creates the schema and the first admin.
BOOTSTRAP_LOCK = "iot_auth_server_bootstrap"


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """The application. Settings come from the environment, or from `test_config` (a mapping
    with the same variable names) instead."""
    config = AuthConfig.from_env(test_config)
    app = Flask(__name__, static_folder=None)
    app.config["AUTH"] = config
    # Werkzeug answers 413 past this, before a view reads the body.
    app.config["MAX_CONTENT_LENGTH"] = config.max_message_bytes
    app.json.sort_keys = False

    metrics = AuthMetrics()
    app.extensions["auth_metrics"] = metrics
    app.extensions["login_throttle"] = LoginThrottle(config.login, config.jwt_secret, metrics)
    app.extensions["influx"] = InfluxClient(
        config.influxdb_host,
        config.influxdb_port,
        config.influxdb_database,
        username=config.influxdb_username,
        password=config.influxdb_password,
        max_connections=config.influxdb_connections_per_worker,
    )
    if config.mqtt_secure:
        app.extensions["mqtt_sync"] = MqttAccountSync(config)

    db.init_app(app, metrics)
    app.extensions["account_reader"] = AccountReader(app.extensions["mysql_pool"])
    gateway.init_app(app, config)
    register_error_handlers(app)
    metrics.instrument(app)
    for blueprint in (auth.bp, accounts.bp, data.bp, ops.bp):
        app.register_blueprint(blueprint)

    bootstrap(app)
    return app


def bootstrap(app: Flask) -> None:
    """Everything that must hold before the first request; raises when it cannot be done in
    STARTUP_TIMEOUT seconds (the orchestrator then restarts us)."""
    config: AuthConfig = app.config["AUTH"]
    deadline = time.monotonic() + config.startup_timeout_s
    conn = db.wait_until_ready(config, config.startup_timeout_s)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, %s) AS locked", (BOOTSTRAP_LOCK, config.startup_timeout_s))
            if not cur.fetchone()["locked"]:
                raise db.DatabaseUnavailableError("another auth server held the start-up lock for too long")
        db.apply_schema(conn)
        store = AccountStore(conn)
        _ensure_admin(store, config)
        conn.commit()
        if config.mqtt_secure:
            devices = [
                DeviceState(a.username, a.enabled, tuple(a.mqtt_publish_topics()))
                for a in store.accounts(Role.DEVICE)
            ]
            conn.commit()
            _reconcile_broker(app.extensions["mqtt_sync"], devices, deadline)
    finally:
        # Closing the session releases the lock too; releasing first just frees it sooner.
        with contextlib.suppress(pymysql.MySQLError), conn.cursor() as cur:
            cur.execute("SELECT RELEASE_LOCK(%s)", (BOOTSTRAP_LOCK,))
        conn.close()


def _ensure_admin(store: AccountStore, config: AuthConfig) -> None:
    if store.accounts(Role.ADMIN):
        return
    if config.admin_username is None or config.admin_password is None:
        log.warning("there is no admin account; set ADMIN_USERNAME and ADMIN_PASSWORD to create one")
        return
    try:
        validate_username(config.admin_username)
        validate_password(config.admin_password)
    except ValidationError as exc:
        raise ConfigError(f"ADMIN_USERNAME / ADMIN_PASSWORD: {exc}") from exc
    if store.get(config.admin_username) is not None:
        log.error(
            "no admin exists and ADMIN_USERNAME %r is taken by a device account; choose another name",
            config.admin_username,
        )
        return
    store.create(config.admin_username, hash_password(config.admin_password), Role.ADMIN, True, ())
    log.info("created the first admin account %s", config.admin_username)


def _reconcile_broker(sync: MqttAccountSync, devices: list[DeviceState], deadline: float) -> None:
    delay = 0.2
    while True:
        try:
            report = sync.reconcile(devices)
        except MqttSyncError as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.info("waiting for the MQTT broker: %s", exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        log.info(
            "MQTT accounts reconciled: %d device(s), %d change(s)%s",
            len(devices),
            len(report.commands),
            (": " + ", ".join(report.commands)) if report.commands else "",
        )
        return
