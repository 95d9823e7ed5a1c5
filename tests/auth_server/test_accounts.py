"""Account administration: admin-only CRUD, validation, the first admin, the last admin."""

from __future__ import annotations

import logging
import re

import pytest

from auth_server import create_app
from tests.auth_server.conftest import ADMIN, Api, new_password
from tests.servers import MariaDBServer


def test_first_admin_is_created_from_the_settings(api: Api) -> None:
    response = api.call("GET", f"/api/accounts/{ADMIN}", token=api.admin_token)
    assert response.status_code == 200
    assert response.get_json()["role"] == "admin"
    assert response.get_json()["enabled"] is True


def test_restart_keeps_accounts_and_does_not_recreate_the_admin(settings: dict[str, str]) -> None:
    create_app(settings)
    # A second start with another ADMIN_PASSWORD: the admin exists, so nothing changes.
    app = create_app({**settings, "ADMIN_PASSWORD": new_password()})
    api = Api(app.test_client(), settings)
    assert api.login(ADMIN, settings["ADMIN_PASSWORD"]).status_code == 200
    accounts = api.call("GET", "/api/accounts", token=api.admin_token).get_json()["accounts"]
    assert [a["username"] for a in accounts] == [ADMIN]


def test_no_admin_settings_means_no_admin_and_a_warning(
    settings: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    without_admin = {k: v for k, v in settings.items() if not k.startswith("ADMIN_")}
    with caplog.at_level(logging.WARNING):
        app = create_app(without_admin)
    assert "no admin account" in caplog.text
    api = Api(app.test_client(), settings)
    assert api.login(ADMIN, settings["ADMIN_PASSWORD"]).status_code == 401


def test_create_list_get_patch_delete(api: Api) -> None:
    perms = [{"location": "UPB", "station": "*", "read": True, "write": False}]
    created = api.create_account("dev-a", new_password(), permissions=perms)
    assert created.status_code == 201
    assert created.headers["Location"].endswith("/api/accounts/dev-a")
    body = created.get_json()
    assert body["username"] == "dev-a"
    assert body["role"] == "device"
    assert body["enabled"] is True
    assert body["permissions"] == perms

    listed = api.call("GET", "/api/accounts", token=api.admin_token).get_json()["accounts"]
    assert [a["username"] for a in listed] == [ADMIN, "dev-a"]

    new_perms = [
        {"location": "*", "station": "RPi_9", "read": False, "write": True},
        {"location": "UPB", "station": "RPi_1", "read": True, "write": True},
    ]
    patched = api.call("PATCH", "/api/accounts/dev-a", token=api.admin_token, json={"permissions": new_perms})
    assert patched.status_code == 200
    assert sorted(patched.get_json()["permissions"], key=lambda p: p["location"]) == new_perms
    again = api.call("GET", "/api/accounts/dev-a", token=api.admin_token).get_json()
    assert again == patched.get_json()

    assert api.call("DELETE", "/api/accounts/dev-a", token=api.admin_token).status_code == 204
    assert api.call("GET", "/api/accounts/dev-a", token=api.admin_token).status_code == 404
    assert api.call("DELETE", "/api/accounts/dev-a", token=api.admin_token).status_code == 404


def test_duplicate_username_is_409(api: Api) -> None:
    assert api.create_account("dev-dup", new_password()).status_code == 201
    response = api.create_account("dev-dup", new_password())
    assert response.status_code == 409
    assert "error" in response.get_json()


def test_devices_cannot_administer(api: Api) -> None:
    _, token = api.device("dev-plain", ("*", "*", True, True))
    for method, path, body in [
        ("GET", "/api/accounts", None),
        ("POST", "/api/accounts", {"username": "x1", "password": new_password()}),
        ("GET", f"/api/accounts/{ADMIN}", None),
        ("PATCH", "/api/accounts/dev-plain", {"permissions": []}),
        ("DELETE", f"/api/accounts/{ADMIN}", None),
    ]:
        response = api.call(method, path, token=token, json=body)
        assert response.status_code == 403, (method, path)
        assert set(response.get_json()) == {"error"}
    assert api.call("GET", f"/api/accounts/{ADMIN}", token=api.admin_token).status_code == 200
    assert api.call("GET", "/api/accounts/x1", token=api.admin_token).status_code == 404


def test_admin_without_token_is_401(api: Api) -> None:
    assert api.call("GET", "/api/accounts").status_code == 401
    assert api.call("POST", "/api/accounts", json={"username": "x", "password": "y"}).status_code == 401


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"password": "long-enough-1"}, "username"),
        ({"username": "", "password": "long-enough-1"}, "username"),
        ({"username": "a" * 65, "password": "long-enough-1"}, "username"),
        ({"username": "bad name", "password": "long-enough-1"}, "username"),
        ({"username": "x'; DROP TABLE accounts; --", "password": "long-enough-1"}, "username"),
        ({"username": "a/b", "password": "long-enough-1"}, "username"),
        ({"username": "-leading", "password": "long-enough-1"}, "username"),
        ({"username": "dev", "password": "short"}, "password"),
        ({"username": "dev", "password": 12345678}, "password"),
        ({"username": "dev", "password": "x" * 257}, "password"),
        ({"username": "dev", "password": "\ud800 lone surrogate"}, "password"),
        ({"username": "dev", "password": "long-enough-1", "role": "root"}, "role"),
        ({"username": "dev", "password": "long-enough-1", "enabled": "yes"}, "enabled"),
        ({"username": "dev", "password": "long-enough-1", "is_admin": True}, "unknown"),
        ({"username": "dev", "password": "long-enough-1", "generate_password": True}, "either"),
        ({"username": "dev", "generate_password": "yes"}, "generate_password"),
        ({"username": "dev", "password": None}, "password"),
        ({"username": "dev", "password": "long-enough-1", "permissions": {}}, "permissions"),
        ({"username": "dev", "password": "long-enough-1", "permissions": ["UPB/RPi_1"]}, "permissions"),
        ({"username": "dev", "password": "long-enough-1", "permissions": [{"station": "x"}]}, "location"),
        (
            {
                "username": "dev",
                "password": "long-enough-1",
                "permissions": [{"location": "a/b", "station": "x"}],
            },
            "location",
        ),
        (
            {
                "username": "dev",
                "password": "long-enough-1",
                "permissions": [{"location": "UPB", "station": "+"}],
            },
            "station",
        ),
        (
            {
                "username": "dev",
                "password": "long-enough-1",
                "permissions": [{"location": "#", "station": "x"}],
            },
            "location",
        ),
        (
            {
                "username": "dev",
                "password": "long-enough-1",
                "permissions": [{"location": "$SYS", "station": "*"}],
            },
            "location",
        ),
        (
            {
                "username": "dev",
                "password": "long-enough-1",
                "permissions": [{"location": "U*", "station": "x"}],
            },
            "location",
        ),
        (
            {
                "username": "dev",
                "password": "long-enough-1",
                "permissions": [{"location": "a\nb", "station": "x"}],
            },
            "location",
        ),
        (
            {
                "username": "dev",
                "password": "long-enough-1",
                "permissions": [{"location": "UPB", "station": "x", "write": "true"}],
            },
            "write",
        ),
        (
            {
                "username": "dev",
                "password": "long-enough-1",
                "permissions": [{"location": "UPB", "station": "x"}, {"location": "UPB", "station": "x"}],
            },
            "twice",
        ),
    ],
)
def test_invalid_account_fields_are_400_and_nothing_is_created(api: Api, body: dict, fragment: str) -> None:
    response = api.call("POST", "/api/accounts", token=api.admin_token, json=body)
    assert response.status_code == 400
    assert fragment in response.get_json()["error"]
    accounts = api.call("GET", "/api/accounts", token=api.admin_token).get_json()["accounts"]
    assert [a["username"] for a in accounts] == [ADMIN]


def test_injection_shaped_series_names_are_stored_verbatim(api: Api) -> None:
    perms = [
        {"location": "x' OR '1'='1", "station": '"; DROP TABLE permissions; --', "read": True, "write": True},
        {"location": "\\'", "station": "%s", "read": False, "write": True},
    ]
    created = api.create_account("dev-inj", new_password(), permissions=perms)
    assert created.status_code == 201
    stored = api.call("GET", "/api/accounts/dev-inj", token=api.admin_token).get_json()["permissions"]
    assert sorted(stored, key=lambda p: p["location"]) == sorted(perms, key=lambda p: p["location"])


@pytest.mark.parametrize(
    ("username", "status"),
    [
        ("x' OR '1'='1", 404),
        ("%", 404),
        ("_", 404),
        ("admin%27--", 404),
        ("..", 404),
        # MySQL's `=` ignores trailing spaces: none of these may find `admin`.
        ("admin%20", 404),
        ("admin%20%20", 404),
        ("dev-keep%20", 404),
        ("admin%09", 404),
        ("admin%00", 404),
        ("ADMIN", 404),
        ("admin%E2%80%A8", 404),  # U+2028
        ("%E2%80%AEadmin", 404),  # U+202E
        # An encoded slash is refused before routing (tests/auth_server/test_gateway.py).
        ("a%2Fb", 400),
        ("admin%2f", 400),
    ],
)
def test_injection_shaped_path_usernames_are_harmless(api: Api, username: str, status: int) -> None:
    assert api.create_account("dev-keep", new_password()).status_code == 201
    assert api.call("GET", f"/api/accounts/{username}", token=api.admin_token).status_code == status
    assert api.call("DELETE", f"/api/accounts/{username}", token=api.admin_token).status_code == status
    patch = api.call("PATCH", f"/api/accounts/{username}", token=api.admin_token, json={"enabled": False})
    assert patch.status_code == status
    assert set(patch.get_json()) == {"error"}
    accounts = api.call("GET", "/api/accounts", token=api.admin_token).get_json()["accounts"]
    assert [(a["username"], a["enabled"]) for a in accounts] == [(ADMIN, True), ("dev-keep", True)]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "renamed"},
        {"password": "short"},
        {"role": "superuser"},
        {"permissions": [{}]},
        {"password": "long-enough-1", "generate_password": True},
        {"generate_password": 1},
    ],
)
def test_invalid_patch_is_400_and_changes_nothing(api: Api, body: dict) -> None:
    password, _ = api.device("dev-p", ("UPB", "RPi_1", True, True))
    response = api.call("PATCH", "/api/accounts/dev-p", token=api.admin_token, json=body)
    assert response.status_code == 400
    account = api.call("GET", "/api/accounts/dev-p", token=api.admin_token).get_json()
    assert account["permissions"] == [{"location": "UPB", "station": "RPi_1", "read": True, "write": True}]
    assert api.login("dev-p", password).status_code == 200


def test_the_last_enabled_admin_cannot_be_removed(api: Api) -> None:
    for method, body in [("DELETE", None), ("PATCH", {"enabled": False}), ("PATCH", {"role": "device"})]:
        response = api.call(method, f"/api/accounts/{ADMIN}", token=api.admin_token, json=body)
        assert response.status_code == 409, (method, body)
    # With a second admin, the first may go.
    second = new_password()
    assert api.create_account("admin-2", second, role="admin").status_code == 201
    assert api.call("DELETE", f"/api/accounts/{ADMIN}", token=api.admin_token).status_code == 204
    token = api.token("admin-2", second)
    assert api.call("DELETE", "/api/accounts/admin-2", token=token).status_code == 409


def test_role_change_revokes_tokens_and_grants_admin(api: Api) -> None:
    password, token = api.device("dev-promo")
    assert api.call("GET", "/api/accounts", token=token).status_code == 403
    patch = api.call("PATCH", "/api/accounts/dev-promo", token=api.admin_token, json={"role": "admin"})
    assert patch.status_code == 200
    assert api.call("GET", "/api/accounts", token=token).status_code == 401
    assert api.call("GET", "/api/accounts", token=api.token("dev-promo", password)).status_code == 200


def test_accounts_survive_in_mysql(api: Api, mariadb: MariaDBServer, settings: dict[str, str]) -> None:
    """The rows are really in MySQL, with a salted slow hash instead of the password."""
    password = new_password()
    assert api.create_account("dev-row", password).status_code == 201
    assert api.create_account("dev-row2", password).status_code == 201
    with mariadb.root() as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT username, password_hash FROM `{settings['MYSQL_DATABASE']}`.accounts "
            "WHERE username LIKE 'dev-row%%' ORDER BY username"
        )
        rows = cur.fetchall()
    assert [r[0] for r in rows] == ["dev-row", "dev-row2"]
    hashes = [r[1] for r in rows]
    assert all(h.startswith("scrypt:32768:8:1$") for h in hashes)
    assert password not in hashes[0]
    # Same password, different salt, different hash.
    assert hashes[0] != hashes[1]


@pytest.mark.parametrize("role", ["device", "admin"])
def test_an_account_created_without_a_password_gets_a_generated_one_shown_once(api: Api, role: str) -> None:
    body = {"username": "gen-1", "role": role}
    created = api.call("POST", "/api/accounts", token=api.admin_token, json=body)
    assert created.status_code == 201
    password = created.get_json()["password"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", password)  # 24 random bytes
    assert api.login("gen-1", password).status_code == 200
    # Never shown again.
    for path in ("/api/accounts/gen-1", "/api/accounts"):
        assert password not in api.call("GET", path, token=api.admin_token).get_data(as_text=True)
    body = {**body, "username": "gen-2", "generate_password": True}
    explicit = api.call("POST", "/api/accounts", token=api.admin_token, json=body)
    assert explicit.status_code == 201
    assert explicit.get_json()["password"] != password
    given = api.create_account("gen-3", new_password(), role=role)
    assert "password" not in given.get_json()


def test_generate_password_on_patch_replaces_the_password(api: Api) -> None:
    old, token = api.device("gen-dev", ("UPB", "G", True, True))
    generate = {"generate_password": True}
    patched = api.call("PATCH", "/api/accounts/gen-dev", token=api.admin_token, json=generate)
    assert patched.status_code == 200
    new = patched.get_json()["password"]
    assert new != old
    assert api.login("gen-dev", old).status_code == 401
    assert api.call("GET", "/api/auth/me", token=token).status_code == 401
    assert api.login("gen-dev", new).status_code == 200
    # A patch that sets no password shows none.
    again = api.call("PATCH", "/api/accounts/gen-dev", token=api.admin_token, json={"enabled": True})
    assert "password" not in again.get_json()
