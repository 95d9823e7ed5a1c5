"""Accounts and permissions in MySQL. Every query is parameterized; no SQL is built from input."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pymysql

from auth_server.db import CONNECTION_WAIT_S, Connection, ConnectionPool, DatabaseUnavailableError
from auth_server.group import GroupCommit, Pending
from auth_server.policy import Account, Permission, Role
from auth_server.tokens import new_token_key

_ACCOUNT_COLUMNS = "id, username, role, enabled, token_key, created_at, updated_at"
# `{ids}` is a list of %s placeholders, one per account id.
_BY_IDS_WITH_PERMISSIONS = (
    "SELECT a.id, a.username, a.role, a.enabled, a.token_key, a.created_at, a.updated_at, "
    "p.location, p.station, p.can_read, p.can_write "
    "FROM accounts a LEFT JOIN permissions p ON p.account_id = a.id "
    "WHERE a.id IN ({ids}) ORDER BY a.id, p.location, p.station"
)
# Accounts read by one query of AccountReader at most: a short IN list, and a short result.
ACCOUNTS_PER_READ = 100


class AccountReader(GroupCommit[int, Account]):
    """The account check of every authenticated request (its row and rights read again, so
    deletion, disabling and rights changes apply to the very next request), with the requests
    in flight at once reading their accounts in one query (group commit, auth_server.group):
    under load one round trip to MySQL serves tens of requests. A query only serves requests
    that arrived before it was sent, so none sees rows older than its own arrival.

    It reads on the pool's autocommit connections: a single SELECT opens no transaction, so it
    sees the latest committed rows, and giving the connection back costs no ROLLBACK.
    """

    def __init__(self, pool: ConnectionPool, wait_s: float = CONNECTION_WAIT_S) -> None:
        super().__init__(wait_s, ACCOUNTS_PER_READ)
        self._pool = pool

    def get(self, account_id: int) -> Account | None:
        """The account with this id, or None when there is none."""
        return self.submit(account_id)

    def _run(self, group: list[Pending[int, Account]]) -> None:
        conn = self._pool.acquire(autocommit=True)
        try:
            found = AccountStore(conn).get_by_ids(sorted({pending.item for pending in group}))
        finally:
            self._pool.release(conn)
        for pending in group:
            pending.result = found.get(pending.item)

    def _too_slow(self) -> BaseException:
        return DatabaseUnavailableError(f"no account check reached MySQL within {self._wait_s:g}s")


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
                result[row["account_id"]].append(self._permission(row))
        return result

    @staticmethod
    def _permission(row: dict[str, Any]) -> Permission:
        return Permission(row["location"], row["station"], bool(row["can_read"]), bool(row["can_write"]))

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
        return self.get_by_ids([account_id]).get(account_id)

    def get_by_ids(self, account_ids: Sequence[int]) -> dict[int, Account]:
        """The accounts that exist of `account_ids`, with their rights, in one query: every
        authenticated request needs its account (AccountReader)."""
        if not account_ids:
            return {}
        query = _BY_IDS_WITH_PERMISSIONS.format(ids=", ".join(["%s"] * len(account_ids)))
        with self.conn.cursor() as cur:
            cur.execute(query, tuple(account_ids))
            rows = cur.fetchall()
        by_id: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            by_id.setdefault(row["id"], []).append(row)
        return {
            account_id: self._account(
                rows[0],
                # LEFT JOIN: an account without permissions has one row of NULLs for them
                (self._permission(r) for r in rows if r["location"] is not None),
            )
            for account_id, rows in by_id.items()
        }

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
