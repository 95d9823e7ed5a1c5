"""Login, the current account, and the decorators that guard every other route."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Blueprint, Response, current_app, g, jsonify, request

from auth_server.config import AuthConfig
from auth_server.db import get_db
from auth_server.errors import ApiError, unauthorized
from auth_server.gateway import client_address
from auth_server.metrics import AuthMetrics
from auth_server.passwords import verify_password
from auth_server.policy import Account, is_username
from auth_server.store import AccountReader, AccountStore
from auth_server.throttle import LoginThrottle
from auth_server.tokens import TokenClaims, TokenError, issue_token, verify_token

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__, url_prefix="/api/auth")

View = TypeVar("View", bound=Callable[..., Any])

# One message for unknown user, wrong password and disabled account: no username probing.
BAD_CREDENTIALS = "invalid username or password"


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 saying what was expected."""
    try:
        body = request.get_json(silent=True)
    except RecursionError as exc:
        # json gives up on deep nesting (about a thousand levels) with RecursionError, not
        # a ValueError, so `silent` does not cover it. No body of ours nests beyond three.
        raise ApiError(400, "the request body is nested too deeply") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object (Content-Type: application/json)")
    return body


def current_account() -> Account:
    return cast(Account, g.account)


def _authenticate() -> Account:
    return _verified_token()[1]


def _verified_token() -> tuple[TokenClaims, Account]:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("missing bearer token (Authorization: Bearer <access_token>)")
    config: AuthConfig = current_app.config["AUTH"]
    try:
        claims = verify_token(token.strip(), config.jwt_secret)
    except TokenError as exc:
        raise unauthorized("invalid or expired token") from exc
    # The account is read on every request, so deletion, disabling and rights changes apply
    # at once rather than when the token expires. The view reads the body next, as slowly as
    # the client sends it: no MySQL connection is held meanwhile (a data write needs none).
    accounts: AccountReader = current_app.extensions["account_reader"]
    account = accounts.get(claims.account_id)
    if account is None or not account.enabled or not claims.matches(account):
        raise unauthorized("invalid or expired token")
    return claims, account


def login_required(view: View) -> View:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        g.account = _authenticate()
        return view(*args, **kwargs)

    return cast(View, wrapped)


def admin_required(view: View) -> View:
    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        g.account = _authenticate()
        if not g.account.is_admin:
            raise ApiError(403, "this needs an admin account")
        return view(*args, **kwargs)

    return cast(View, wrapped)


@bp.post("/login")
def login() -> Response:
    body = json_body()
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise ApiError(400, "username and password must be strings")
    config: AuthConfig = current_app.config["AUTH"]
    metrics: AuthMetrics = current_app.extensions["auth_metrics"]
    throttle: LoginThrottle = current_app.extensions["login_throttle"]
    conn = get_db()
    # Raises LoginThrottledError (429) while earlier failures block this attempt.
    attempt = throttle.admit(conn, username, client_address())
    store = AccountStore(conn)
    # A name no account can have is not looked up (MySQL would find `admin` for `admin `).
    credentials = store.credentials(username) if is_username(username) else None
    password_ok = verify_password(credentials.password_hash if credentials else None, password)
    if credentials is None or not password_ok or not credentials.account.enabled:
        throttle.failed(attempt)
        metrics.logins.labels(result="failure").inc()
        if credentials is None:
            # Unknown names are not logged: people type their password into the username field.
            log.info("login refused: unknown username")
        else:
            log.info("login refused for %s", credentials.account.username)
        raise unauthorized(BAD_CREDENTIALS)
    throttle.succeeded(conn, attempt)
    account = store.give_token_key(credentials.account)
    conn.commit()
    metrics.logins.labels(result="success").inc()
    log.info("login: %s", account.username)
    token = issue_token(account, config.jwt_secret, config.jwt_expires_s)
    return jsonify(access_token=token, token_type="Bearer", expires_in=config.jwt_expires_s)


@bp.post("/refresh")
def refresh() -> Response:
    """A new token for the bearer of a valid one, without the password: as cheap as any
    authenticated request (no password hash), so a fleet can renew its tokens at thousands per
    second. Revocation is unweakened: the account row is read and its token key checked as on
    every request, and the new token carries the same key. A chain of refreshes ends
    JWT_REFRESH_MAX_SECONDS after the password login it started from."""
    config: AuthConfig = current_app.config["AUTH"]
    metrics: AuthMetrics = current_app.extensions["auth_metrics"]
    try:
        claims, account = _verified_token()
        age_s = time.time() - claims.auth_time
        if not config.jwt_refresh_max_s or age_s > config.jwt_refresh_max_s:
            raise unauthorized("this token can no longer be refreshed; log in with the password")
    except ApiError:
        metrics.token_refreshes.labels(result="refused").inc()
        raise
    metrics.token_refreshes.labels(result="success").inc()
    token = issue_token(account, config.jwt_secret, config.jwt_expires_s, auth_time=claims.auth_time)
    return jsonify(access_token=token, token_type="Bearer", expires_in=config.jwt_expires_s)


@bp.get("/me")
@login_required
def me() -> Response:
    return jsonify(current_account().to_json())
