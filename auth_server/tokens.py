"""Access tokens: JWT signed with HS256, short-lived, checked with the algorithm pinned.

A token names its account by the account's id (never reused) and the account's token key (random,
replaced whenever the password, role or enabled state changes). A username alone would not do:
an account deleted and created again under the same name must not accept the old one's tokens.
"""

from __future__ import annotations

import functools
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import jwt

from auth_server.policy import Account

ISSUER = "iot-auth-server"
ALGORITHM = "HS256"
TOKEN_KEY_BYTES = 16  # 128 random bits, stored as 32 hex digits (accounts.token_key CHAR(32))

_ACCOUNT_ID_RE = re.compile(r"^[1-9][0-9]{0,9}$")  # accounts.id is INT UNSIGNED
_TOKEN_KEY_RE = re.compile(rf"^[0-9a-f]{{{2 * TOKEN_KEY_BYTES}}}$")


class TokenError(Exception):
    """The token is missing, malformed, expired, or not signed by us."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    account_id: int
    token_key: str
    # When the password was checked for the login this token descends from (refreshes keep it).
    auth_time: int

    def matches(self, account: Account) -> bool:
        """Whether the token was issued to this very account, since its last revocation."""
        return (
            account.id == self.account_id
            and account.token_key is not None
            and hmac.compare_digest(account.token_key, self.token_key)
        )


def new_token_key() -> str:
    return secrets.token_hex(TOKEN_KEY_BYTES)


def issue_token(
    account: Account, secret: str, expires_s: int, now: float | None = None, auth_time: int | None = None
) -> str:
    """A token for `account`; `auth_time` is its password login's (None: this one's)."""
    if account.token_key is None:
        raise ValueError("the account has no token key yet")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "sub": str(account.id),  # RFC 7519: `sub` is a string
        "iat": issued,
        "exp": issued + expires_s,
        "key": account.token_key,
        "auth_time": issued if auth_time is None else auth_time,  # the OpenID Connect claim name
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# Verified tokens, by their exact text: a device sends the same token with every request for
# its lifetime, and checking the signature again (HMAC key preparation and all) is about a tenth
# of an authenticated request's cost. Only a token that verified goes in, so an attacker cannot
# fill it without our secret; each use still checks the expiry, and revocation never depended
# on this check (the account row is read on every request).
_VERIFIED_CACHE_SIZE = 16_384


def verify_token(token: str, secret: str) -> TokenClaims:
    claims, expires = _verified(token, secret)
    # As PyJWT checks it (no leeway): expired from the `exp` second on.
    if expires <= time.time():
        raise TokenError("Signature has expired")
    return claims


@functools.lru_cache(maxsize=_VERIFIED_CACHE_SIZE)
def _verified(token: str, secret: str) -> tuple[TokenClaims, int]:
    try:
        # algorithms is pinned: the token's own `alg` header (e.g. "none") is never trusted.
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "sub", "key"]},
        )
    except jwt.InvalidTokenError as exc:
        raise TokenError(str(exc)) from exc
    subject, key = claims["sub"], claims["key"]
    # Tokens of the previous release (`sub` a username, a `ver` counter) fail here.
    if not isinstance(subject, str) or not _ACCOUNT_ID_RE.match(subject):
        raise TokenError("malformed subject")
    if not isinstance(key, str) or not _TOKEN_KEY_RE.match(key):
        raise TokenError("malformed token key")
    # Tokens issued before refreshes existed have none: their own issue time is their login's.
    auth_time = claims.get("auth_time", claims["iat"])
    if type(auth_time) is not int or auth_time > claims["iat"]:
        raise TokenError("malformed auth_time")
    return TokenClaims(int(subject), key, auth_time), int(claims["exp"])
