"""Requests that used to end in 500 or in the wrong account: deep JSON, names MySQL pads with
spaces, and names with line separators or bidirectional controls. Each is a clear 4xx now."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from adapter.contract import Ignore, Reject, parse_message
from auth_server.db import connect
from auth_server.policy import Permission
from auth_server.store import AccountStore, DuplicatePermissionError
from tests.auth_server.conftest import ADMIN, Api, new_password

# --- JSON nested deeper than Python's json module goes (about 1000 levels) -----------------


def _nested(depth: int, shape: str) -> str:
    if shape == "array":
        return "[" * depth + "]" * depth
    return '{"a": ' * depth + "1" + "}" * depth


def _deep_bodies() -> list[tuple[str, str]]:
    bodies = []
    # Up to about 200 KB, under MAX_MESSAGE_BYTES (2 bytes a level for arrays, 7 for objects).
    for shape, depths in (("array", (1_000, 100_000)), ("object", (1_000, 30_000))):
        for depth in depths:
            bodies.append((f"{shape}-{depth}", _nested(depth, shape)))
        # Deep inside an otherwise well-formed body.
        bodies.append((f"field-{shape}", f'{{"username": "dev", "password": {_nested(5_000, shape)}}}'))
    return bodies


# Each route goes through every body in one app (an app per case costs a second apiece).
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/auth/login"), ("POST", "/api/accounts"), ("PATCH", f"/api/accounts/{ADMIN}")],
)
def test_deeply_nested_json_is_400(api: Api, method: str, path: str) -> None:
    token = None if path.endswith("login") else api.admin_token
    for label, body in _deep_bodies():
        response = api.call(method, path, token=token, data=body, content_type="application/json")
        assert response.status_code == 400, label
        assert set(response.get_json()) == {"error"}, label
    # Nothing changed, and the server is fine.
    accounts = api.call("GET", "/api/accounts", token=api.admin_token).get_json()["accounts"]
    assert [(a["username"], a["role"]) for a in accounts] == [(ADMIN, "admin")]


def test_deeply_nested_json_on_the_data_path_is_400(api: Api) -> None:
    _, token = api.device("deep-dev", ("UPB", "D", True, True))
    for depth in (1_000, 50_000):
        response = api.call("POST", "/api/data/UPB/D", token=token, data=_nested(depth, "array"))
        assert response.status_code == 400
        assert "nothing was stored" in response.get_json()["error"]


# --- Names that MySQL's PAD SPACE collation considers equal -------------------------------

PERMISSION = {"read": True, "write": True}


# Pairs of (location, station) that MySQL's unique key takes for one series.
SAME_IN_MYSQL = [
    (("UPB", "x"), ("UPB ", "x")),
    (("UPB", "x"), ("UPB", "x ")),
    (("UPB ", "x"), ("UPB  ", "x")),
    (("UPB", "x"), ("UPB   ", "x   ")),
    (("Sala 1", "x"), ("Sala 1 ", "x")),
]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_permissions_differing_only_in_trailing_spaces_are_400(api: Api, method: str) -> None:
    if method == "PATCH":
        api.device("pad-dev", ("UPB", "kept", True, False))
    for first, second in SAME_IN_MYSQL:
        perms = [
            {"location": first[0], "station": first[1], **PERMISSION},
            {"location": second[0], "station": second[1], **PERMISSION},
        ]
        if method == "POST":
            response = api.create_account("pad-dev", new_password(), permissions=perms)
        else:
            body = {"permissions": perms}
            response = api.call("PATCH", "/api/accounts/pad-dev", token=api.admin_token, json=body)
        assert response.status_code == 400, (first, second)
        assert "trailing spaces" in response.get_json()["error"], (first, second)
        account = api.call("GET", "/api/accounts/pad-dev", token=api.admin_token)
        if method == "POST":
            assert account.status_code == 404
        else:
            assert [p["station"] for p in account.get_json()["permissions"]] == ["kept"]


def test_leading_spaces_do_make_another_name(api: Api) -> None:
    """MySQL pads only at the end: ` UPB` and `UPB` are two series, both kept."""
    perms = [{"location": loc, "station": "x", **PERMISSION} for loc in ("UPB", " UPB")]
    created = api.create_account("lead-dev", new_password(), permissions=perms)
    assert created.status_code == 201
    assert sorted(p["location"] for p in created.get_json()["permissions"]) == [" UPB", "UPB"]


def test_a_duplicate_mysql_refuses_is_a_conflict_not_a_crash(api: Api) -> None:
    """The store's own guard, for anything the validation above would miss: the API answers
    DuplicatePermissionError with 409 (errors.py)."""
    api.device("dup-dev")
    conn = connect(api.client.application.config["AUTH"])
    try:
        store = AccountStore(conn)
        account = store.get("dup-dev")
        assert account is not None
        with pytest.raises(DuplicatePermissionError):
            store.update(
                account,
                permissions=[Permission("UPB", "x", True, True), Permission("UPB ", "x", True, True)],
            )
        conn.rollback()
    finally:
        conn.close()
    assert api.call("GET", "/api/accounts/dup-dev", token=api.admin_token).get_json()["permissions"] == []


def test_a_username_with_trailing_spaces_does_not_log_in(api: Api, settings: dict[str, str]) -> None:
    for name in (f"{ADMIN} ", f"{ADMIN}  ", f"{ADMIN}\t"):
        assert api.login(name, settings["ADMIN_PASSWORD"]).status_code == 401
    assert api.login(ADMIN, settings["ADMIN_PASSWORD"]).status_code == 200


# --- Line and paragraph separators, bidirectional controls ---------------------------------

MISLEADING = {
    "U+2028 line separator": "\u2028",
    "U+2029 paragraph separator": "\u2029",
    "U+0085 next line": "\x85",
    "U+009B C1 control": "\x9b",
    "U+202E right-to-left override": "\u202e",
    "U+202A left-to-right embedding": "\u202a",
    "U+200F right-to-left mark": "\u200f",
    "U+2066 left-to-right isolate": "\u2066",
    "U+2069 pop directional isolate": "\u2069",
    "U+061C Arabic letter mark": "\u061c",
}


def _bad_names() -> dict[str, str]:
    return {label: f"RPi{char}1" for label, char in MISLEADING.items()}


@pytest.mark.parametrize("bad", list(_bad_names().values()), ids=list(_bad_names()))
def test_the_contract_refuses_them_in_mqtt_topics_and_keys(bad: str) -> None:
    assert parse_message(f"UPB/{bad}", b'{"T": 1}', 0) is Reject.BAD_TOPIC
    assert parse_message(f"{bad}/RPi_1", b'{"T": 1}', 0) is Reject.BAD_TOPIC
    parsed = parse_message("UPB/RPi_1", json.dumps({bad: 1, "T": 2}).encode(), 0)
    assert not isinstance(parsed, Reject)
    assert [p.metric for p in parsed.points] == ["T"]
    assert parsed.records[0].ignored == [(bad, Ignore.BAD_NAME)]


# The HTTP checks go through every character of the table in one app each (an app per case
# would cost a second apiece); a failure names the character.


@pytest.mark.parametrize("field", ["username", "location", "station"])
def test_account_names_with_them_are_400(api: Api, field: str) -> None:
    for label, bad in _bad_names().items():
        permission = {"location": "UPB", "station": "RPi_1", **PERMISSION}
        body = {"username": "named-dev", "password": new_password(), "permissions": [permission]}
        if field == "username":
            body["username"] = bad
        else:
            permission[field] = bad
        response = api.call("POST", "/api/accounts", token=api.admin_token, json=body)
        assert response.status_code == 400, label
        assert field in response.get_json()["error"], label
    accounts = api.call("GET", "/api/accounts", token=api.admin_token).get_json()["accounts"]
    assert [a["username"] for a in accounts] == [ADMIN]


def test_the_data_api_refuses_them_in_paths_and_metrics(api: Api) -> None:
    _, token = api.device("bidi-dev", ("*", "*", True, True))
    for label, bad in _bad_names().items():
        encoded = quote(bad, safe="")
        for path in (f"/api/data/UPB/{encoded}", f"/api/data/{encoded}/RPi_1"):
            assert api.call("POST", path, token=token, json={"T": 1}).status_code == 400, (label, path)
            assert api.call("GET", path, token=token).status_code == 400, (label, path)
        read = api.call("GET", "/api/data/UPB/RPi_1", token=token, query_string={"metric": bad})
        assert read.status_code == 400, label
        written = api.call("POST", "/api/data/UPB/RPi_1", token=token, json={bad: 1, "T": 2})
        assert written.get_json() == {"stored": 1, "ignored": [{"key": bad, "reason": "bad_name"}]}, label


@pytest.mark.parametrize("name", ["Bucureşti", "温度", "Zürich-Süd", "RPi 1", "שלום"])
def test_other_unicode_names_are_still_fine(api: Api, name: str) -> None:
    _, token = api.device("uni-dev", (name, name, True, True))
    path = f"/api/data/{quote(name, safe='')}/{quote(name, safe='')}"
    assert api.call("POST", path, token=token, json={name: 1}).get_json() == {"stored": 1, "ignored": []}
