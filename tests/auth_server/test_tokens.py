"""No token outlives its account: tokens name the account's id and its random token key, which
every revocation replaces, so a username deleted and created again never accepts an old token."""

from __future__ import annotations

import time

import jwt
import pytest
from werkzeug.test import TestResponse

from auth_server import auth as auth_module
from auth_server import create_app
from auth_server.tokens import ISSUER
from tests.auth_server.conftest import ADMIN, Api, Sql, new_password


def _admin_powers(api: Api, token: str) -> list[int]:
    """What the reproduction did with the old token: list every account, create an admin."""
    listed = api.call("GET", "/api/accounts", token=token).status_code
    body = {"username": "planted", "password": new_password(), "role": "admin"}
    created = api.call("POST", "/api/accounts", token=token, json=body).status_code
    me = api.call("GET", "/api/auth/me", token=token).status_code
    return [listed, created, me]


@pytest.mark.parametrize("again_as", ["admin", "device"])
def test_a_recreated_username_does_not_accept_the_deleted_accounts_token(api: Api, again_as: str) -> None:
    _, old_token = api.device("alice", ("UPB", "RPi_1", True, True))
    assert api.call("DELETE", "/api/accounts/alice", token=api.admin_token).status_code == 204
    password = new_password()
    assert api.create_account("alice", password, role=again_as).status_code == 201

    assert _admin_powers(api, old_token) == [401, 401, 401]
    assert api.call("GET", "/api/accounts/planted", token=api.admin_token).status_code == 404
    # The new alice's own token works, with the new account's rights.
    new_token = api.token("alice", password)
    me = api.call("GET", "/api/auth/me", token=new_token).get_json()
    assert me["role"] == again_as
    assert me["permissions"] == []


def test_an_account_recreated_with_the_same_id_does_not_accept_old_tokens(api: Api, sql: Sql) -> None:
    """Ids are never reused by MySQL, but a restored backup or a hand-made row could: the
    random token key still tells the two accounts apart."""
    password, old_token = api.device("bob", ("UPB", "RPi_2", True, True))
    (row,) = sql("SELECT * FROM accounts WHERE username = 'bob'")
    assert api.call("DELETE", "/api/accounts/bob", token=api.admin_token).status_code == 204
    sql(
        "INSERT INTO accounts (id, username, password_hash, role, enabled, token_key) "
        "VALUES (%s, 'bob', %s, 'admin', TRUE, %s)",
        (row["id"], row["password_hash"], "f" * 32),
    )
    assert _admin_powers(api, old_token) == [401, 401, 401]
    # The row really is the one a token with that id would name.
    token = api.token("bob", password)
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == str(row["id"])
    assert api.call("GET", "/api/accounts", token=token).status_code == 200


@pytest.mark.parametrize(
    ("change", "revokes"),
    [
        ({"password": "a-new-password-1"}, True),
        ({"generate_password": True}, True),
        ({"role": "admin"}, True),
        ({"enabled": False}, True),
        ({"permissions": [{"location": "UPB", "station": "X", "read": True}]}, False),
        ({"role": "device"}, False),  # already a device: nothing changes
        ({"enabled": True}, False),
    ],
    ids=repr,
)
def test_revocation_replaces_the_token_key(api: Api, change: dict, revokes: bool) -> None:
    password, token = api.device("carol", ("UPB", "RPi_3", True, True))
    key_before = jwt.decode(token, options={"verify_signature": False})["key"]
    patched = api.call("PATCH", "/api/accounts/carol", token=api.admin_token, json=change)
    assert patched.status_code == 200
    assert api.call("GET", "/api/auth/me", token=token).status_code == (401 if revokes else 200)
    if change.get("enabled") is not False:
        password = change.get("password") or patched.get_json().get("password") or password
        key_after = jwt.decode(api.token("carol", password), options={"verify_signature": False})["key"]
        assert (key_after != key_before) == revokes


def test_a_token_of_the_previous_release_is_refused(api: Api) -> None:
    """It named the account by username with a version counter that restarts at 0."""
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": ADMIN, "iat": now, "exp": now + 60, "ver": 0}
    old = jwt.encode(claims, api.settings["JWT_SECRET"], algorithm="HS256")
    assert api.call("GET", "/api/accounts", token=old).status_code == 401


# --- Refresh: a new token without the password, never outliving a revocation -----------------


def _refresh(api: Api, token: str) -> TestResponse:
    return api.call("POST", "/api/auth/refresh", token=token)


def test_refresh_gives_a_new_token_without_hashing_the_password(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, token = api.device("fleet-1", ("UPB", "F1", True, True))
    first = jwt.decode(token, options={"verify_signature": False})

    def no_hashing(*_args: object) -> bool:
        raise AssertionError("refresh must not hash a password")

    monkeypatch.setattr(auth_module, "verify_password", no_hashing)
    refreshed = _refresh(api, token)
    assert refreshed.status_code == 200
    body = refreshed.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    new = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert new["sub"] == first["sub"]
    assert new["key"] == first["key"]
    assert new["iat"] >= first["iat"]
    assert new["auth_time"] == first["auth_time"] == first["iat"]  # the password login's time
    me = api.call("GET", "/api/auth/me", token=body["access_token"])
    assert me.status_code == 200
    assert me.get_json()["username"] == "fleet-1"
    assert api.metric("auth_token_refreshes_total", result="success") == 1


@pytest.mark.parametrize(
    "change",
    [
        {"enabled": False},
        {"password": "a-new-password-2"},
        {"role": "admin"},
        None,  # deleted
    ],
    ids=repr,
)
def test_a_revoked_token_cannot_be_refreshed(api: Api, change: dict | None) -> None:
    _, token = api.device("fleet-2", ("UPB", "F2", True, True))
    refreshed = _refresh(api, token).get_json()["access_token"]
    admin = api.admin_token
    if change is None:
        assert api.call("DELETE", "/api/accounts/fleet-2", token=admin).status_code == 204
    else:
        assert api.call("PATCH", "/api/accounts/fleet-2", token=admin, json=change).status_code == 200
    # Neither the original nor its refreshed descendant renews, nor opens anything.
    for old in (token, refreshed):
        assert _refresh(api, old).status_code == 401
        assert api.call("GET", "/api/auth/me", token=old).status_code == 401
    assert api.metric("auth_token_refreshes_total", result="refused") == 2


def _token(api: Api, claims: dict) -> str:
    return jwt.encode(claims, api.settings["JWT_SECRET"], algorithm="HS256")


@pytest.mark.parametrize(
    ("login_age_s", "refresh_max", "refreshes"),
    [
        (10, None, True),
        (24 * 3600 - 60, None, True),
        (24 * 3600 + 60, None, False),  # JWT_REFRESH_MAX_SECONDS's default: one day
        (50, "60", True),
        (70, "60", False),
        (0, "0", False),  # 0: refreshing is off
    ],
)
def test_refresh_chains_end_refresh_max_seconds_after_the_password_login(
    settings: dict[str, str], login_age_s: int, refresh_max: str | None, refreshes: bool
) -> None:
    extra = {} if refresh_max is None else {"JWT_REFRESH_MAX_SECONDS": refresh_max}
    app = create_app({**settings, **extra})
    api = Api(app.test_client(), settings)
    _, token = api.device("fleet-3", ("UPB", "F3", True, True))
    claims = jwt.decode(token, options={"verify_signature": False})
    now = int(time.time())
    # Refreshed many times since: still valid now, its login long ago.
    descendant = _token(api, {**claims, "iat": now, "exp": now + 900, "auth_time": now - login_age_s})
    response = _refresh(api, descendant)
    assert response.status_code == (200 if refreshes else 401)
    if refreshes:
        renewed = jwt.decode(response.get_json()["access_token"], options={"verify_signature": False})
        assert renewed["auth_time"] == now - login_age_s


@pytest.mark.parametrize("auth_time", ["yesterday", 1.5, True, None, "later"])
def test_a_malformed_auth_time_is_refused(api: Api, auth_time: object) -> None:
    _, token = api.device("fleet-4", ("UPB", "F4", True, True))
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["auth_time"] = claims["iat"] + 60 if auth_time == "later" else auth_time
    forged = _token(api, claims)
    assert api.call("GET", "/api/auth/me", token=forged).status_code == 401
    assert _refresh(api, forged).status_code == 401


def test_a_token_verified_before_still_expires(api: Api) -> None:
    """Verified tokens are remembered by their text (tokens._verified): the expiry is checked
    on every use all the same."""
    _, token = api.device("fleet-5", ("UPB", "F5", True, True))
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["exp"] = int(time.time()) + 2
    short = _token(api, claims)
    assert api.call("GET", "/api/auth/me", token=short).status_code == 200
    assert api.call("GET", "/api/auth/me", token=short).status_code == 200
    time.sleep(max(0.0, claims["exp"] - time.time()) + 0.05)
    assert api.call("GET", "/api/auth/me", token=short).status_code == 401
    assert _refresh(api, short).status_code == 401
    # A token altered after one that verified is not taken for it.
    assert (
        api.call(
            "GET", "/api/auth/me", token=token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
        ).status_code
        == 401
    )
