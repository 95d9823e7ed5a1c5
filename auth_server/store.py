"""Accounts and permissions in MySQL. Every query is parameterized; no SQL is built from input."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pymysql

from auth_server.db import Connection
from auth_server.policy import Account, Permission, Role
from auth_server.tokens import new_token_key

_ACCOUNT_COLUMNS = "id, username, role, enabled, token_key, created_at, updated_at"
_BY_ID_WITH_PERMISSIONS = (
    "SELECT a.id, a.username, a.role, a.enabled, a.token_key, a.created_at, a.updated_at, "
    "p.location, p.station, p.can_read, p.can_write "
    "FROM accounts a LEFT JOIN permissions p ON p.account_id = a.id "
    "WHERE a.id = %s ORDER BY p.location, p.station"
)


class AccountExistsError(Exception):
    """INSERT of a username that is already taken."""


class DuplicatePermissionError(Exception):
    """Two permissions MySQL considers the same series (its unique key refused the second)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What login needs. Kept apart from Account so the hash cannot end up in a response."""

    account: Account
    password_hash: str


class AccountStore:
    """Reads and writes accounts on one connection; the caller owns the transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _permissions(self, account_ids: Sequence[int]) -> dict[int, list[Permission]]:
        result: dict[int, list[Permission]] = {i: [] for i in account_ids}
        if not account_ids:
            return result
        placeholders = ", ".join(["%s"] * len(account_ids))
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT account_id, location, station, can_read, can_write FROM permissions "
                f"WHERE account_id IN ({placeholders}) ORDER BY location, station",
                tuple(account_ids),
            )
            for row in cur.fetchall():
                result[row["account_id"]].append(
                    Permission(row["location"], row["station"], bool(row["can_read"]), bool(row["can_write"]))
                )
        return result

    @staticmethod
    def _account(row: dict[str, Any], permissions: Iterable[Permission]) -> Account:
        return Account(
            id=row["id"],
            username=row["username"],
            role=Role(row["role"]),
            enabled=bool(row["enabled"]),
            token_key=row["token_key"],
            permissions=tuple(permissions),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def _row(self, columns: str, where: str, key: Any, for_update: bool = False) -> dict[str, Any] | None:
        lock = " FOR UPDATE" if for_update else ""
        with self.conn.cursor() as cur:
            # `columns` and `where` are fixed text of this class; only `key` comes from a request.
            cur.execute(f"SELECT {columns} FROM accounts WHERE {where} = %s{lock}", (key,))
            row = cur.fetchone()
        # MySQL's `=` ignores trailing spaces ('admin ' finds 'admin'); Python's does not.
        if row is None or row[where] != key:
            return None
        return row

    def get(self, username: str, for_update: bool = False) -> Account | None:
        row = self._row(_ACCOUNT_COLUMNS, "username", username, for_update)
        if row is None:
            return None
        return self._account(row, self._permissions([row["id"]])[row["id"]])

    def get_by_id(self, account_id: int) -> Account | None:
        """The account and its rights in one query: every authenticated request runs it."""
        with self.conn.cursor() as cur:
            cur.execute(_BY_ID_WITH_PERMISSIONS, (account_id,))
            rows = cur.fetchall()
        if not rows:
            return None
        permissions = [
            Permission(r["location"], r["station"], bool(r["can_read"]), bool(r["can_write"]))
            for r in rows
            if r["location"] is not None  # LEFT JOIN: an account without permissions has one NULL row
        ]
        return self._account(rows[0], permissions)

    def credentials(self, username: str) -> Credentials | None:
        row = self._row(f"{_ACCOUNT_COLUMNS}, password_hash", "username", username)
        if row is None:
            return None
        account = self._account(row, self._permissions([row["id"]])[row["id"]])
        return Credentials(account, row["password_hash"])

    def give_token_key(self, account: Account) -> Account:
        """The account with a token key, given one now if an older version created it without."""
        if account.token_key is not None:
            return account
        key = new_token_key()
        with self.conn.cursor() as cur:
            # Only if still NULL: a concurrent login may have set one, and it must stay valid.
            cur.execute(
                "UPDATE accounts SET token_key = %s WHERE id = %s AND token_key IS NULL", (key, account.id)
            )
        updated = self.get_by_id(account.id)
        assert updated is not None and updated.token_key is not None  # set just above
        return updated

    def accounts(self, role: Role | None = None) -> list[Account]:
        with self.conn.cursor() as cur:
            if role is None:
                cur.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY username")
            else:
                cur.execute(
                    f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE role = %s ORDER BY username", (str(role),)
                )
            rows = cur.fetchall()
        permissions = self._permissions([r["id"] for r in rows])
        return [self._account(r, permissions[r["id"]]) for r in rows]

    def count_enabled_admins(self, for_update: bool = False) -> int:
        # FOR UPDATE locks the admin rows, so two requests cannot each remove "the other" admin.
        lock = " FOR UPDATE" if for_update else ""
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT id FROM accounts WHERE role = 'admin' AND enabled{lock}")
            return len(cur.fetchall())

    def create(
        self,
        username: str,
        password_hash: str,
        role: Role,
        enabled: bool,
        permissions: Sequence[Permission],
    ) -> Account:
        with self.conn.cursor() as cur:
            try:
                cur.execute(
                    "INSERT INTO accounts (username, password_hash, role, enabled, token_key) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (username, password_hash, str(role), enabled, new_token_key()),
                )
            except pymysql.err.IntegrityError as exc:
                raise AccountExistsError(username) from exc
            account_id = cur.lastrowid
        self._insert_permissions(account_id, permissions)
        account = self.get(username)
        assert account is not None  # just inserted in this transaction
        return account

    def _insert_permissions(self, account_id: int, permissions: Sequence[Permission]) -> None:
        if not permissions:
            return
        with self.conn.cursor() as cur:
            try:
                cur.executemany(
                    "INSERT INTO permissions (account_id, location, station, can_read, can_write) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [(account_id, p.location, p.station, p.read, p.write) for p in permissions],
                )
            except pymysql.err.IntegrityError as exc:
                raise DuplicatePermissionError(str(exc.args[-1])) from exc

    def update(
        self,
        account: Account,
        password_hash: str | None = None,
        role: Role | None = None,
        enabled: bool | None = None,
        permissions: Sequence[Permission] | None = None,
    ) -> Account:
        """Change the given fields; a new password, role or enabled state revokes old tokens
        (the account gets a new token key)."""
        assignments: list[str] = []
        params: list[Any] = []
        if password_hash is not None:
            assignments.append("password_hash = %s")
            params.append(password_hash)
        if role is not None and role is not account.role:
            assignments.append("role = %s")
            params.append(str(role))
        if enabled is not None and enabled != account.enabled:
            assignments.append("enabled = %s")
            params.append(enabled)
        with self.conn.cursor() as cur:
            if assignments:
                # The column list is fixed text chosen above; only values come from the request.
                cur.execute(
                    f"UPDATE accounts SET {', '.join(assignments)}, token_key = %s WHERE id = %s",
                    (*params, new_token_key(), account.id),
                )
            if permissions is not None:
                cur.execute("DELETE FROM permissions WHERE account_id = %s", (account.id,))
        if permissions is not None:
            self._insert_permissions(account.id, permissions)
        updated = self.get(account.username)
        assert updated is not None  # locked by the caller's transaction
        return updated

    def delete(self, account: Account) -> None:
        with self.conn.cursor() as cur:
            # permissions go with it (ON DELETE CASCADE)
            cur.execute("DELETE FROM accounts WHERE id = %s", (account.id,))
