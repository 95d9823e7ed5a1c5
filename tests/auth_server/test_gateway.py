"""Paths with an encoded slash are refused before any route runs: Werkzeug would decode `%2F`
into `/` (so `/api/auth%2Flogin` would be the login), while Kong keeps it encoded when it picks a
route, and would not apply the login route's limit to it."""

from __future__ import annotations

import pytest

from tests.auth_server.conftest import ADMIN, Api


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/auth%2Flogin"),
        ("POST", "/api/auth%2flogin"),
        ("POST", "/api%2Fauth%2Flogin"),
        ("POST", "/api%2fauth/login"),
        ("POST", "/api/auth%2F/login"),
        ("POST", "/api/auth/login%2F"),
        ("GET", "/api/auth%2Fme"),
        ("GET", "/api/accounts%2Fadmin"),
        ("DELETE", "/api/accounts/x%2F..%2Fadmin"),
        ("POST", "/api/data/UPB%2FRPi_1/x"),
        ("GET", "/healthz%2F"),
    ],
)
def test_an_encoded_slash_anywhere_in_the_path_is_400(
    api: Api, settings: dict[str, str], method: str, path: str
) -> None:
    body = {"username": ADMIN, "password": settings["ADMIN_PASSWORD"]}
    response = api.call(method, path, token=api.admin_token, json=body)
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "an encoded slash (%2F) is not allowed in the path; send `/` as it is"
    }
    # Only the admin's own login (for the token above) was ever checked.
    assert api.metric("auth_logins_total", result="success") == 1
    assert api.call("GET", f"/api/accounts/{ADMIN}", token=api.admin_token).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/api/auth/login?next=%2Fapi%2Faccounts",  # in the query string: not a path
        "/api/auth/login?x=%2f",
    ],
)
def test_an_encoded_slash_in_the_query_string_is_fine(api: Api, settings: dict[str, str], path: str) -> None:
    body = {"username": ADMIN, "password": settings["ADMIN_PASSWORD"]}
    assert api.call("POST", path, json=body).status_code == 200


def test_a_double_encoded_slash_is_just_a_name(api: Api) -> None:
    """`%252F` decodes once, to the three characters `%2F`: no route has those."""
    response = api.call("POST", "/api/auth%252Flogin", json={"username": ADMIN, "password": "x" * 8})
    assert response.status_code == 404
    assert api.metric("auth_logins_total", result="failure") == 0
