"""Login, token use and expiry; forged, tampered and `alg: none` tokens are refused."""

from __future__ import annotations

import base64
import json
import re
import time

import jwt
import pytest

from auth_server.tokens import ISSUER
from tests.auth_server.conftest import ADMIN, Api, new_password


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_login_returns_a_bearer_token_that_opens_me(api: Api) -> None:
    password, _ = api.device("dev-1", ("UPB", "RPi_1", True, True))
    response = api.login("dev-1", password)
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    me = api.call("GET", "/api/auth/me", token=body["access_token"])
    assert me.status_code == 200
    assert me.get_json()["username"] == "dev-1"
    assert me.get_json()["role"] == "device"
    assert me.get_json()["permissions"] == [
        {"location": "UPB", "station": "RPi_1", "read": True, "write": True}
    ]


def _claims(api: Api, token: str) -> dict:
    return jwt.decode(token, api.settings["JWT_SECRET"], algorithms=["HS256"], issuer=ISSUER)


def test_token_is_hs256_signed_with_the_configured_secret_and_expires(api: Api) -> None:
    token = api.admin_token
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = _claims(api, token)
    # The account's id and its random token key; no username (tests/auth_server/test_tokens.py).
    assert claims["sub"].isdigit()
    assert re.fullmatch(r"[0-9a-f]{32}", claims["key"])
    assert ADMIN not in json.dumps(claims)
    assert claims["exp"] - claims["iat"] == 900


@pytest.mark.parametrize(
    ("username", "password"),
    [
        (ADMIN, "wrong-password"),
        ("nobody", "whatever-password"),
        ("", ""),
        ("admin' OR '1'='1", "' OR '1'='1"),
        ("admin'; DROP TABLE accounts; --", "x"),
        ('admin" OR ""="', "\\"),
        (ADMIN, "\ud800\udfff-lone-surrogates"),
    ],
)
def test_wrong_credentials_are_401(api: Api, username: str, password: str) -> None:
    response = api.login(username, password)
    assert response.status_code == 401
    assert response.get_json() == {"error": "invalid username or password"}
    # The accounts table is intact and the admin can still log in.
    assert api.call("GET", "/api/accounts", token=api.admin_token).status_code == 200


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'{"username": "admin"}', b'{"username": 1, "password": 2}'],
)
def test_malformed_login_is_400(api: Api, body: bytes) -> None:
    response = api.call("POST", "/api/auth/login", data=body, content_type="application/json")
    assert response.status_code == 400
    assert set(response.get_json()) == {"error"}


def test_disabled_account_cannot_log_in_and_its_token_stops_working(api: Api) -> None:
    password, token = api.device("dev-off")
    assert api.call("GET", "/api/auth/me", token=token).status_code == 200
    patch = api.call("PATCH", "/api/accounts/dev-off", token=api.admin_token, json={"enabled": False})
    assert patch.status_code == 200
    assert api.call("GET", "/api/auth/me", token=token).status_code == 401
    assert api.login("dev-off", password).status_code == 401


def test_password_change_revokes_older_tokens(api: Api) -> None:
    old_password, token = api.device("dev-pw")
    new = new_password()
    assert (
        api.call("PATCH", "/api/accounts/dev-pw", token=api.admin_token, json={"password": new}).status_code
        == 200
    )
    assert api.call("GET", "/api/auth/me", token=token).status_code == 401
    assert api.login("dev-pw", old_password).status_code == 401
    assert api.call("GET", "/api/auth/me", token=api.token("dev-pw", new)).status_code == 200


def test_deleted_account_token_is_401(api: Api) -> None:
    _, token = api.device("dev-gone")
    assert api.call("DELETE", "/api/accounts/dev-gone", token=api.admin_token).status_code == 204
    assert api.call("GET", "/api/auth/me", token=token).status_code == 401


def test_expired_token_is_401(api: Api) -> None:
    secret = api.settings["JWT_SECRET"]
    claims = _claims(api, api.admin_token)
    # Signed with the right key, but issued an hour ago with a 15-minute lifetime.
    hour_ago = int(time.time()) - 3600
    expired = jwt.encode({**claims, "iat": hour_ago, "exp": hour_ago + 900}, secret, algorithm="HS256")
    fresh = jwt.encode({**claims, "iat": hour_ago + 3600}, secret, algorithm="HS256")
    assert api.call("GET", "/api/auth/me", token=fresh).status_code == 200
    response = api.call("GET", "/api/auth/me", token=expired)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_forged_tokens_are_401(api: Api) -> None:
    good = api.admin_token
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = {
        # Claims edited, signature kept.
        "tampered payload": f"{header}.{_b64({**claims, 'sub': 'someone-else'})}.{signature}",
        # Signature edited.
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        # Same claims, signed with another key.
        "other key": jwt.encode(claims, "another-secret-of-sufficient-length-0123456789", algorithm="HS256"),
        # "alg": "none" and no signature.
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "alg none upper": f"{_b64({'alg': 'NONE', 'typ': 'JWT'})}.{payload}.",
        # Same key, another HMAC algorithm than the pinned one.
        "HS512": jwt.encode(claims, api.settings["JWT_SECRET"], algorithm="HS512"),
        "garbage": "not.a.token",
        "empty": "",
    }
    assert api.call("GET", "/api/auth/me", token=good).status_code == 200
    for name, token in forged.items():
        response = api.call("GET", "/api/auth/me", token=token)
        assert response.status_code == 401, name
        assert set(response.get_json()) == {"error"}, name


# Claims edited one at a time, each token signed with the right key.
BAD_CLAIMS = [
    {"key": None},
    {"exp": None},
    {"iat": None},
    {"sub": None},
    {"iss": "someone"},
    {"sub": 1},  # a number, not RFC 7519's string
    {"sub": "01"},
    {"sub": "1 OR 1=1"},
    {"key": "0" * 32},
    {"key": 7},
    {"key": ""},
]


def test_a_token_with_a_missing_or_bad_claim_is_401(api: Api) -> None:
    secret = api.settings["JWT_SECRET"]
    claims = _claims(api, api.admin_token)
    assert api.call("GET", "/api/auth/me", token=api.admin_token).status_code == 200
    for change in BAD_CLAIMS:
        edited = {k: v for k, v in {**claims, **change}.items() if v is not None}
        token = jwt.encode(edited, secret, algorithm="HS256")
        assert api.call("GET", "/api/auth/me", token=token).status_code == 401, change


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer ", "Basic YWRtaW46YWRtaW4=", "Token abc"])
def test_missing_or_wrong_scheme_is_401(api: Api, header: str) -> None:
    response = api.call("GET", "/api/auth/me", headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    assert "error" in response.get_json()
