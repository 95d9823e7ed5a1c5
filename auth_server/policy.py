"""Account rules: valid names and passwords, rights over series, and their MQTT topics. No I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from adapter.contract import split_topic, valid_name

# Usernames travel in URLs, logs and MQTT CONNECT packets: a plain, unambiguous alphabet.
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_CHARS = 8
# scrypt's cost does not depend on the length, but nothing legitimate needs more.
MAX_PASSWORD_CHARS = 256
MAX_SERIES_PART_CHARS = 255  # the permissions columns are VARCHAR(255)
WILDCARD = "*"


class ValidationError(ValueError):
    """A request field that breaks the rules; the message tells the caller which and why."""


class Role(StrEnum):
    ADMIN = "admin"
    DEVICE = "device"


class Right(StrEnum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class Permission:
    """A right over the series of `<location>/<station>`; either part may be `*` (any)."""

    location: str
    station: str
    read: bool
    write: bool

    def covers(self, location: str, station: str) -> bool:
        return self.location in (WILDCARD, location) and self.station in (WILDCARD, station)

    def mqtt_topic(self) -> str:
        """The MQTT topic filter of the same series: `*` becomes the one-level wildcard `+`."""
        location = "+" if self.location == WILDCARD else self.location
        station = "+" if self.station == WILDCARD else self.station
        return f"{location}/{station}"

    def to_json(self) -> dict[str, Any]:
        return {"location": self.location, "station": self.station, "read": self.read, "write": self.write}


@dataclass(frozen=True, slots=True)
class Account:
    """An account as the API shows it. The password hash is deliberately not part of it."""

    id: int
    username: str
    role: Role
    enabled: bool
    # Random, replaced at every revocation (tokens.py); None for an account an older version
    # created that has not logged in since.
    token_key: str | None
    permissions: tuple[Permission, ...]
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def may(self, right: Right, location: str, station: str) -> bool:
        """Admins may read and write every series; devices only where a permission says so."""
        if self.is_admin:
            return True
        return any(
            p.covers(location, station) and (p.read if right is Right.READ else p.write)
            for p in self.permissions
        )

    def mqtt_publish_topics(self) -> list[str]:
        """The topics this account may publish to in secure MQTT mode (devices only)."""
        if self.is_admin:
            return []
        return sorted({p.mqtt_topic() for p in self.permissions if p.write})

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "role": str(self.role),
            "enabled": self.enabled,
            "permissions": [p.to_json() for p in self.permissions],
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


def _iso(moment: datetime | None) -> str | None:
    # MySQL TIMESTAMP columns are read back in the session time zone, which we set to UTC.
    return None if moment is None else moment.isoformat(timespec="microseconds") + "Z"


def _utf8(field: str, value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON allows lone surrogates (`"\ud800"`); MySQL, MQTT and hashing do not.
        raise ValidationError(f"{field} is not valid Unicode text") from exc
    return value


def is_username(value: Any) -> bool:
    """Whether `value` could be a username. Every lookup by name checks this first: MySQL
    would also find `admin` for `admin ` (its collation pads with spaces)."""
    # The contract's rule for names first, so the username rule can only be stricter.
    return isinstance(value, str) and valid_name(value) and USERNAME_RE.match(value) is not None


def validate_username(value: Any) -> str:
    if not is_username(value):
        raise ValidationError(
            "username must be 1-64 characters from A-Z a-z 0-9 . _ @ - and start with a letter or digit"
        )
    return value


def validate_password(value: Any) -> str:
    if not isinstance(value, str) or not MIN_PASSWORD_CHARS <= len(value) <= MAX_PASSWORD_CHARS:
        raise ValidationError(
            f"password must be a string of {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
        )
    return _utf8("password", value)


def validate_role(value: Any) -> Role:
    try:
        return Role(value)
    except ValueError as exc:
        raise ValidationError("role must be admin or device") from exc


def _series_part(field: str, value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_SERIES_PART_CHARS:
        raise ValidationError(f"{field} must be a string of 1 to {MAX_SERIES_PART_CHARS} characters")
    if value == WILDCARD:
        return value
    _utf8(field, value)
    # The topic rules of the contract, plus what would change meaning as an MQTT ACL topic:
    # `+`/`#` are wildcards there, and `$` topics belong to the broker ($SYS, $CONTROL).
    if split_topic(f"{value}/x") is None or any(c in value for c in "+#*") or value.startswith("$"):
        raise ValidationError(
            f"{field} {value!r} is not usable: it must be `*` or a topic level without / + # *, "
            "control, line-separator or bidirectional characters, a trailing backslash or a leading $"
        )
    return value


def _same_in_mysql(location: str, station: str) -> tuple[str, str]:
    # The permissions table's unique key compares with trailing spaces ignored.
    return location.rstrip(" "), station.rstrip(" ")


def _flag(field: str, raw: Mapping[str, Any], default: bool = False) -> bool:
    value = raw.get(field, default)
    if not isinstance(value, bool):
        raise ValidationError(f"permission field {field!r} must be true or false")
    return value


def parse_permissions(value: Any) -> tuple[Permission, ...]:
    """The `permissions` list of a request → validated Permission objects, one per series."""
    if not isinstance(value, list):
        raise ValidationError("permissions must be a list of {location, station, read, write} objects")
    result: list[Permission] = []
    seen: set[tuple[str, str]] = set()
    for index, raw in enumerate(value):
        if not isinstance(raw, dict):
            raise ValidationError(f"permissions[{index}] must be an object")
        unknown = set(raw) - {"location", "station", "read", "write"}
        if unknown:
            raise ValidationError(f"permissions[{index}] has unknown fields: {', '.join(sorted(unknown))}")
        location = _series_part("location", raw.get("location"))
        station = _series_part("station", raw.get("station"))
        if _same_in_mysql(location, station) in seen:
            raise ValidationError(
                f"permissions list {location!r}/{station!r} twice "
                "(names that differ only in trailing spaces count as the same)"
            )
        seen.add(_same_in_mysql(location, station))
        result.append(Permission(location, station, _flag("read", raw), _flag("write", raw)))
    return tuple(result)
