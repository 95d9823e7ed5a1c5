"""Sets a client's password in Mosquitto's dynamic-security file, as the plugin would set it.

    printf '%s' PASSWORD | python3 backup/dynsec_password.py dynamic-security.json USERNAME

restore.sh runs it after putting a backup's plugin file into a deployment whose broker admin
has another password (a new deployment has new secrets): without it, the broker's health check
and the auth server could no longer log in as the admin, while every device account keeps the
password it had. The file is edited while the broker is stopped; it is replaced in one rename,
with the old file's owner and mode.

Mosquitto 2.0's format (plugins/dynamic-security): the password is PBKDF2-HMAC-SHA512 of 64
bytes over a random 12-byte salt, both base64 in the client's "password" and "salt", with its
"iterations" (101 for a password the plugin sets).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

SALT_BYTES = 12
HASH_BYTES = 64
ITERATIONS = 101


class DynsecError(RuntimeError):
    """The file is not a dynamic-security file, or it has no such client."""


def password_fields(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> dict[str, Any]:
    """The "password", "salt" and "iterations" of a client with this password."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def set_password(config: dict[str, Any], username: str, password: str) -> None:
    """Gives the client `username` of a loaded plugin file this password."""
    clients = config.get("clients")
    if not isinstance(clients, list):
        raise DynsecError("no list of clients: not a dynamic-security file")
    for client in clients:
        if isinstance(client, dict) and client.get("username") == username:
            client.update(password_fields(password))
            return
    raise DynsecError(f"the file has no client {username!r}")


def rewrite(path: Path, username: str, password: str) -> None:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DynsecError(f"{path}: {exc}") from exc
    if not isinstance(config, dict):
        raise DynsecError(f"{path}: not a dynamic-security file")
    set_password(config, username, password)
    stat = path.stat()
    new = path.with_name(path.name + ".restore")
    new.write_text(json.dumps(config, indent="\t") + "\n", encoding="utf-8")
    os.chmod(new, stat.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.chown(new, stat.st_uid, stat.st_gid)
    new.replace(path)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    password = sys.stdin.read()
    if not password:
        print("dynsec_password: no password on stdin", file=sys.stderr)
        return 2
    try:
        rewrite(Path(argv[0]), argv[1], password)
    except DynsecError as exc:
        print(f"dynsec_password: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
