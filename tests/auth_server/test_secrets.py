"""No password, password hash or signing secret appears in any response or log line."""

from __future__ import annotations

import logging

import pytest

from auth_server import create_app
from tests.auth_server.conftest import ADMIN, Api, new_password
from tests.servers import MariaDBServer


def test_no_secret_in_responses_or_logs(
    settings: dict[str, str], mariadb: MariaDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = create_app(settings)
    api = Api(app.test_client(), settings)
    secrets = [settings["ADMIN_PASSWORD"], settings["JWT_SECRET"], settings["MYSQL_PASSWORD"]]

    device_password = new_password()
    secrets.append(device_password)
    perms = [{"location": "UPB", "station": "S1", "read": True, "write": True}]
    assert api.create_account("leak-dev", device_password, permissions=perms).status_code == 201
    token = api.token("leak-dev", device_password)
    api.login("leak-dev", device_password + "x")
    api.login(ADMIN, device_password)
    api.login(device_password, device_password)  # a password typed into the username field
    changed = new_password()
    secrets.append(changed)
    api.call("PATCH", "/api/accounts/leak-dev", token=api.admin_token, json={"password": changed})
    # Refused requests that carry a password must not echo it either.
    too_long = "p" * 300
    secrets.append(too_long)
    api.call("POST", "/api/accounts", token=api.admin_token, json={"username": "x y", "password": too_long})
    api.call(
        "POST", "/api/accounts", token=api.admin_token, json={"username": "ok-name", "password": too_long}
    )
    api.call("PATCH", "/api/accounts/leak-dev", token=api.admin_token, json={"password": too_long})
    api.call(
        "POST", "/api/accounts", token=api.admin_token, json={"username": "leak-dev", "password": changed}
    )
    api.call("GET", "/api/accounts", token=api.admin_token)
    api.call("GET", "/api/accounts/leak-dev", token=api.admin_token)
    api.call("GET", "/api/auth/me", token=api.token("leak-dev", changed))
    api.call("POST", "/api/data/UPB/S1", token=token, json={"A": 1})
    api.call("DELETE", "/api/accounts/leak-dev", token=api.admin_token)

    with mariadb.root() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT password_hash FROM `{settings['MYSQL_DATABASE']}`.accounts")
        hashes = [row[0] for row in cur.fetchall()]
    assert hashes, "the admin's hash at least"
    # The salt$digest part of each hash; the method prefix is public knowledge.
    secrets += [h.split("$", 1)[1] for h in hashes]

    texts = [caplog.text] + [
        r.get_data(as_text=True) + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
        for r in api.responses
    ]
    assert len(api.responses) >= 15
    assert "login refused" in caplog.text  # the log was captured at all
    for secret in secrets:
        for text in texts:
            assert secret not in text
    for r in api.responses:
        body = r.get_json(silent=True)
        if isinstance(body, dict):
            for account in body.get("accounts", [body]):
                assert not {"password", "password_hash", "hash"} & set(account)
