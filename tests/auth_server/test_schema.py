"""The schema at start: a MySQL volume from an older version is brought up to date in place,
idempotently, and ends with the same tables as a new database."""

from __future__ import annotations

from typing import Any

from auth_server import create_app
from auth_server.passwords import hash_password
from tests.auth_server.conftest import ADMIN, Api, Sql, new_password
from tests.servers import MariaDBServer

# The accounts table as the first release created it (no token_key).
ACCOUNTS_V1 = """
CREATE TABLE accounts (
    id INT UNSIGNED NOT NULL AUTO_INCREMENT,
    username VARCHAR(64) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    role ENUM('admin', 'device') NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    token_version INT UNSIGNED NOT NULL DEFAULT 0,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_accounts_username (username)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin
"""


def columns(sql: Sql, table: str) -> list[tuple[Any, ...]]:
    return [
        tuple(r.values())
        for r in sql(
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLLATION_NAME, ORDINAL_POSITION "
            "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
            "ORDER BY ORDINAL_POSITION",
            (table,),
        )
    ]


def test_an_older_accounts_table_is_brought_up_to_date(
    sql: Sql, settings: dict[str, str], mariadb: MariaDBServer
) -> None:
    sql(ACCOUNTS_V1)
    sql(
        "INSERT INTO accounts (username, password_hash, role, token_version) VALUES (%s, %s, 'admin', 3)",
        (ADMIN, hash_password(settings["ADMIN_PASSWORD"])),
    )
    app = create_app(settings)
    assert "token_key" in [c[0] for c in columns(sql, "accounts")]
    # The existing admin has no token key until it logs in; then its token works.
    assert sql("SELECT token_key FROM accounts")[0]["token_key"] is None
    api = Api(app.test_client(), settings)
    assert api.call("GET", "/api/accounts", token=api.admin_token).status_code == 200
    key = sql("SELECT token_key FROM accounts")[0]["token_key"]
    assert key is not None and len(key) == 32
    # A second start changes nothing, and the tables match those of a new database.
    create_app(settings)
    assert sql("SELECT token_key FROM accounts")[0]["token_key"] == key
    mariadb.create_database("schema_fresh")
    try:
        create_app({**settings, "MYSQL_DATABASE": "schema_fresh"})
        fresh = Sql(mariadb, "schema_fresh")
        for table in ("accounts", "permissions", "login_throttle"):
            assert columns(sql, table) == columns(fresh, table), table
        fresh.close()
    finally:
        mariadb.drop_database("schema_fresh")


def test_an_account_an_older_replica_creates_gets_a_key_at_its_first_login(
    api: Api, sql: Sql, settings: dict[str, str]
) -> None:
    """During a rolling update the previous image still runs beside this one, and its INSERT
    names no token_key."""
    password = new_password()
    sql(
        "INSERT INTO accounts (username, password_hash, role) VALUES ('old-dev', %s, 'device')",
        (hash_password(password),),
    )
    token = api.token("old-dev", password)
    assert api.call("GET", "/api/auth/me", token=token).get_json()["username"] == "old-dev"
    # A second login keeps the key: the first token stays valid.
    api.token("old-dev", password)
    assert api.call("GET", "/api/auth/me", token=token).status_code == 200
