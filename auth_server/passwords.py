"""Password hashing: werkzeug's salted scrypt (memory-hard, slow by design)."""

from __future__ import annotations

from functools import cache

from werkzeug.security import check_password_hash, generate_password_hash

# N=2^15, r=8, p=1: werkzeug's default, about 32 MiB and a few tens of milliseconds per hash.
METHOD = "scrypt:32768:8:1"
SALT_LENGTH = 16


def hash_password(password: str) -> str:
    return generate_password_hash(password, method=METHOD, salt_length=SALT_LENGTH)


@cache
def _dummy_hash() -> str:
    return hash_password("a password nobody has, for timing only")


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if `password` matches. With no hash (unknown user) the same work is done anyway,
    so response times do not tell which usernames exist."""
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from JSON can never match a stored password.
        check_password_hash(_dummy_hash(), "x")
        return False
    if password_hash is None:
        check_password_hash(_dummy_hash(), password)
        return False
    return check_password_hash(password_hash, password)
