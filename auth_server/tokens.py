"""Access tokens: JWT signed with HS256, short-lived, checked with the algorithm pinned."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from auth_server.policy import Account

ISSUER = "iot-auth-server"
ALGORITHM = "HS256"


class TokenError(Exception):
    """The token is missing, malformed, expired, or not signed by us."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    username: str
    token_version: int


def issue_token(account: Account, secret: str, expires_s: int, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "sub": account.username,
        "iat": issued,
        "exp": issued + expires_s,
        # The account's token_version at login: changing the password, role or enabled
        # state bumps it, which invalidates every token issued before.
        "ver": account.token_version,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: str, secret: str) -> TokenClaims:
    try:
        # algorithms is pinned: the token's own `alg` header (e.g. "none") is never trusted.
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "sub", "ver"]},
        )
    except jwt.InvalidTokenError as exc:
        raise TokenError(str(exc)) from exc
    username, version = claims["sub"], claims["ver"]
    if not isinstance(username, str) or type(version) is not int:
        raise TokenError("malformed claims")
    return TokenClaims(username, version)
