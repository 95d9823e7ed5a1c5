"""No token outlives its account: tokens name the account's id and its random token key, which
every revocation replaces, so a username deleted and created again never accepts an old token."""

from __future__ import annotations

import time

import jwt
import pytest

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
