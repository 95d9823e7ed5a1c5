"""Account administration (admins only): create, list, read, change, delete.

Passwords can be generated here (long and random, returned once in the response and never
again): the default when an account is created without one, and the recommended choice for
devices, whose passwords also open the MQTT broker in secure mode, which has no lockout.

Each change is one MySQL transaction; in secure MQTT mode the broker is updated inside it, and
the transaction is rolled back when the broker cannot be updated, so MySQL and the broker never
disagree about who may connect.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, url_for

from auth_server.auth import admin_required, current_account, json_body
from auth_server.config import AuthConfig
from auth_server.db import Connection, get_db
from auth_server.errors import ApiError
from auth_server.mqtt_sync import DeviceState, MqttAccountSync, MqttSyncError
from auth_server.passwords import generate_password, hash_password
from auth_server.policy import (
    Account,
    Role,
    ValidationError,
    is_username,
    parse_permissions,
    validate_password,
    validate_role,
    validate_username,
)
from auth_server.store import AccountExistsError, AccountStore

log = logging.getLogger(__name__)
bp = Blueprint("accounts", __name__, url_prefix="/api/accounts")

CREATE_FIELDS = frozenset({"username", "password", "generate_password", "role", "enabled", "permissions"})
PATCH_FIELDS = frozenset({"password", "generate_password", "role", "enabled", "permissions"})


def device_state(account: Account) -> DeviceState:
    return DeviceState(account.username, account.enabled, tuple(account.mqtt_publish_topics()))


def _mqtt(username: str) -> MqttAccountSync | None:
    """The broker synchroniser in secure MQTT mode, None otherwise (and for the names of the
    broker's own accounts, which an account of ours must never overwrite or delete)."""
    config: AuthConfig = current_app.config["AUTH"]
    if username in config.reserved_usernames:
        return None
    return current_app.extensions.get("mqtt_sync")


def _check_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise ValidationError(f"unknown fields: {', '.join(sorted(map(str, unknown)))}")


def _new_password(body: dict[str, Any], by_default: bool) -> tuple[str | None, bool]:
    """The password a request sets (None: unchanged), and whether it was generated here."""
    generate = body.get("generate_password", False)
    if not isinstance(generate, bool):
        raise ValidationError("generate_password must be true or false")
    if "password" in body:
        if generate:
            raise ValidationError("give either password or generate_password, not both")
        return validate_password(body["password"]), False
    if generate or by_default:
        return generate_password(), True
    return None, False


def _with_password(account: Account, password: str | None, generated: bool) -> dict[str, Any]:
    # A generated password is shown once, in the answer to the request that made it.
    return {**account.to_json(), "password": password} if generated else account.to_json()


def _enabled(body: dict[str, Any]) -> bool | None:
    if "enabled" not in body:
        return None
    if not isinstance(body["enabled"], bool):
        raise ValidationError("enabled must be true or false")
    return body["enabled"]


def _check_not_reserved(username: str, role: Role) -> None:
    config: AuthConfig = current_app.config["AUTH"]
    if role is Role.DEVICE and username in config.reserved_usernames:
        raise ApiError(409, f"{username!r} is the name of a broker account the platform reserves")


def _sync_broker(conn: Connection, action: str, change: Any) -> None:
    """Run `change()` against the broker; on failure undo the MySQL transaction and answer 503."""
    try:
        change()
    except MqttSyncError as exc:
        conn.rollback()
        log.error("%s: MQTT broker not updated, change rolled back: %s", action, exc)
        raise ApiError(503, "the MQTT broker could not be updated; nothing was changed, try again") from exc


def _find(store: AccountStore, username: str, for_update: bool = False) -> Account:
    # `admin%20` must not find `admin` (MySQL compares with trailing spaces ignored).
    account = store.get(username, for_update=for_update) if is_username(username) else None
    if account is None:
        raise ApiError(404, "no such account")
    return account


def _keep_an_admin(store: AccountStore, account: Account) -> None:
    if account.is_admin and account.enabled and store.count_enabled_admins(for_update=True) <= 1:
        raise ApiError(409, "this is the last enabled admin account; create another admin first")


@bp.post("")
@admin_required
def create_account() -> tuple[Response, int, dict[str, str]]:
    body = json_body()
    _check_fields(body, CREATE_FIELDS)
    username = validate_username(body.get("username"))
    password, generated = _new_password(body, by_default=True)
    assert password is not None  # by_default
    role = validate_role(body.get("role", "device"))
    permissions = parse_permissions(body.get("permissions", []))
    enabled = _enabled(body)
    _check_not_reserved(username, role)
    conn = get_db()
    store = AccountStore(conn)
    try:
        account = store.create(username, hash_password(password), role, enabled is not False, permissions)
    except AccountExistsError as exc:
        raise ApiError(409, "an account with this username already exists") from exc
    sync = _mqtt(username)
    if sync is not None and role is Role.DEVICE:
        _sync_broker(conn, f"create {username}", lambda: sync.apply_device(device_state(account), password))
    try:
        conn.commit()
    except Exception:
        # The broker already knows the client: take it back (the start-up reconcile would too).
        if sync is not None and role is Role.DEVICE:
            _best_effort_remove(sync, username)
        raise
    log.info("account %s (%s) created by %s", username, role, current_account().username)
    location = url_for("accounts.get_account", username=username)
    return jsonify(_with_password(account, password, generated)), 201, {"Location": location}


def _best_effort_remove(sync: MqttAccountSync, username: str) -> None:
    try:
        sync.remove_device(username)
    except MqttSyncError as exc:
        log.error("could not remove MQTT client %s after a failed commit: %s", username, exc)


@bp.get("")
@admin_required
def list_accounts() -> Response:
    accounts = AccountStore(get_db()).accounts()
    return jsonify(accounts=[a.to_json() for a in accounts])


@bp.get("/<username>")
@admin_required
def get_account(username: str) -> Response:
    return jsonify(_find(AccountStore(get_db()), username).to_json())


@bp.patch("/<username>")
@admin_required
def update_account(username: str) -> Response:
    body = json_body()
    _check_fields(body, PATCH_FIELDS)
    if not body:
        raise ValidationError(f"nothing to change; give any of: {', '.join(sorted(PATCH_FIELDS))}")
    password, generated = _new_password(body, by_default=False)
    role = validate_role(body["role"]) if "role" in body else None
    enabled = _enabled(body)
    permissions = parse_permissions(body["permissions"]) if "permissions" in body else None
    conn = get_db()
    store = AccountStore(conn)
    account = _find(store, username, for_update=True)
    if role is Role.DEVICE or enabled is False:
        _keep_an_admin(store, account)
    _check_not_reserved(username, role or account.role)
    updated = store.update(
        account,
        password_hash=hash_password(password) if password is not None else None,
        role=role,
        enabled=enabled,
        permissions=permissions,
    )
    sync = _mqtt(username)
    if sync is not None:
        if updated.role is Role.DEVICE:
            _sync_broker(
                conn, f"update {username}", lambda: sync.apply_device(device_state(updated), password)
            )
        elif account.role is Role.DEVICE:
            _sync_broker(conn, f"update {username}", lambda: sync.remove_device(username))
    conn.commit()
    changed = sorted(body)
    log.info("account %s changed by %s: %s", username, current_account().username, ", ".join(changed))
    return jsonify(_with_password(updated, password, generated))


@bp.delete("/<username>")
@admin_required
def delete_account(username: str) -> tuple[str, int]:
    conn = get_db()
    store = AccountStore(conn)
    account = _find(store, username, for_update=True)
    _keep_an_admin(store, account)
    store.delete(account)
    sync = _mqtt(username)
    if sync is not None and account.role is Role.DEVICE:
        _sync_broker(conn, f"delete {username}", lambda: sync.remove_device(username))
    conn.commit()
    log.info("account %s deleted by %s", username, current_account().username)
    return "", 204
