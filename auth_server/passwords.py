"""Password hashing (werkzeug's salted scrypt: memory-hard, slow by design) and generation."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import cache
from typing import TypeVar

from gevent import get_hub, monkey
from werkzeug.security import check_password_hash, generate_password_hash

# N=2^15, r=8, p=1: werkzeug's default, about 32 MiB and a few tens of milliseconds per hash.
METHOD = "scrypt:32768:8:1"
SALT_LENGTH = 16
# 24 random bytes, 32 URL-safe characters: 192 bits, beyond any guessing rate (the secure
# broker has no lockout of its own).
GENERATED_PASSWORD_BYTES = 24

T = TypeVar("T")


def _off_the_event_loop(work: Callable[..., T], *args: str) -> T:
    """Run `work` in a real thread when the server runs under gevent (python -m auth_server):
    scrypt holds the CPU for tens of milliseconds, during which the event loop would serve no
    one else, while the hashing itself releases the GIL. Called directly otherwise (tests)."""
    if monkey.is_module_patched("threading"):
        return get_hub().threadpool.apply(work, args)
    return work(*args)


def generate_password() -> str:
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


def hash_password(password: str) -> str:
    return _off_the_event_loop(_hash, password)


def _hash(password: str) -> str:
    return generate_password_hash(password, method=METHOD, salt_length=SALT_LENGTH)


@cache
def _dummy_hash() -> str:
    return _hash("a password nobody has, for timing only")


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if `password` matches. With no hash (unknown user) the same work is done anyway,
    so response times do not tell which usernames exist."""
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from JSON can never match a stored password.
        _off_the_event_loop(check_password_hash, _dummy_hash(), "x")
        return False
    if password_hash is None:
        _off_the_event_loop(check_password_hash, _dummy_hash(), password)
        return False
    return _off_the_event_loop(check_password_hash, password_hash, password)
