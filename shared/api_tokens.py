"""The API token table: who may call predict and explain (design §5), as names and SHA-256 hashes only.

One entry per token: the client system's name ("pacs-bridge", "ward-3-viewer"), the hex SHA-256 of the token,
the functions it may call, optional rate settings, and when it was created or revoked. The plaintext token is
shown once, by `triage tokens add` / `rotate`, and never stored, logged or kept in memory beyond the check.
Tokens are 256 random bits, so a plain SHA-256 cannot be reversed by guessing (no slow KDF needed).

A revoked entry stays in the table, so its token is answered 403 (revoked), not 401 (unknown).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace

from shared.errors import InvalidField, UserError

__all__ = [
    "API_FUNCTIONS",
    "TOKEN_PREFIX",
    "TokenEntry",
    "TokenTable",
    "TokenTableError",
    "new_token",
    "token_hash",
]

API_FUNCTIONS = ("predict", "explain", "dicomweb")  # what a token may call (OIP / OpenAPI routes go with them)
TOKEN_PREFIX = "xrt_"  # makes a leaked token recognisable (secret scanners, log review)
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class TokenTableError(UserError):
    """A token table that cannot be used (not JSON, wrong shape) or a change to it that is not allowed."""

    code = "bad_token_table"


def new_token() -> str:
    """A fresh API token: the prefix and 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """Hex SHA-256 of a token: the only form the table keeps."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidField(f"name: {name!r} must be 1-63 lowercase letters, digits and '-' (e.g. pacs-bridge)")
    return name


@dataclass(frozen=True)
class TokenEntry:
    """One token of the table (never the token itself)."""

    name: str
    sha256: str
    functions: tuple[str, ...] = API_FUNCTIONS
    created_at: str = ""
    revoked_at: str | None = None
    rate_per_s: float | None = None  # None: the service's default (API_RATE_PER_S)
    burst: int | None = None  # None: the service's default (API_RATE_BURST)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, function: str) -> bool:
        return function in self.functions

    def to_json(self) -> dict:
        value = asdict(self)
        value["functions"] = list(self.functions)
        return value

    @classmethod
    def from_json(cls, value: object) -> TokenEntry:
        if not isinstance(value, dict):
            raise TokenTableError("token table: every entry must be an object")
        try:
            entry = cls(
                name=_check_name(value["name"]),
                sha256=str(value["sha256"]),
                functions=tuple(str(f) for f in value.get("functions", API_FUNCTIONS)),
                created_at=str(value.get("created_at", "")),
                revoked_at=None if value.get("revoked_at") is None else str(value["revoked_at"]),
                rate_per_s=None if value.get("rate_per_s") is None else float(value["rate_per_s"]),
                burst=None if value.get("burst") is None else int(value["burst"]),
            )
        except (KeyError, TypeError, ValueError, InvalidField) as exc:
            raise TokenTableError(f"token table: an entry is malformed ({type(exc).__name__})") from exc
        if not _SHA256.match(entry.sha256):
            raise TokenTableError(f"token table: entry {entry.name!r} has no hex SHA-256 hash")
        return entry


@dataclass(frozen=True)
class TokenTable:
    """Every token entry, active and revoked; immutable (each change returns a new table)."""

    entries: tuple[TokenEntry, ...] = field(default_factory=tuple)

    # -- the stored form ---------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes | None) -> TokenTable:
        """The table from its JSON bytes (None or empty: no tokens). TokenTableError when it is malformed."""
        if not data:
            return cls()
        try:
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TokenTableError("token table: not JSON") from exc
        return cls.from_value(value)

    @classmethod
    def from_value(cls, value: object) -> TokenTable:
        """The table from its parsed JSON (None: no tokens)."""
        if value is None:
            return cls()
        if not isinstance(value, dict) or not isinstance(value.get("tokens"), list):
            raise TokenTableError('token table: expected {"tokens": [...]}')
        return cls(tuple(TokenEntry.from_json(item) for item in value["tokens"]))

    def to_json(self) -> dict:
        return {"version": 1, "tokens": [entry.to_json() for entry in self.entries]}

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=2, sort_keys=True).encode()

    # -- the check ---------------------------------------------------------------------------------------------
    def lookup(self, token: str) -> TokenEntry | None:
        """The entry whose hash is the token's, else None. Every entry is compared in constant time."""
        digest = token_hash(token).encode()
        found: TokenEntry | None = None
        for entry in self.entries:
            if hmac.compare_digest(digest, entry.sha256.encode()) and found is None:
                found = entry
        return found

    # -- changes (the CLI) -------------------------------------------------------------------------------------
    def active(self, name: str) -> TokenEntry | None:
        return next((entry for entry in self.entries if entry.name == name and entry.active), None)

    def add(self, name: str, *, now: str, functions: Iterable[str] = API_FUNCTIONS,
            rate_per_s: float | None = None, burst: int | None = None) -> tuple[TokenTable, str]:
        """(new table, the new plaintext token) with an active token for `name`; refused if it already has one."""
        _check_name(name)
        allowed = tuple(dict.fromkeys(functions))
        unknown = [f for f in allowed if f not in API_FUNCTIONS]
        if unknown or not allowed:
            raise InvalidField(f"functions: {unknown or 'none'} — choose from {', '.join(API_FUNCTIONS)}")
        if rate_per_s is not None and not rate_per_s > 0:
            raise InvalidField(f"rate: {rate_per_s} must be a positive number of requests per second")
        if burst is not None and burst < 1:
            raise InvalidField(f"burst: {burst} must be at least 1")
        if self.active(name) is not None:
            raise TokenTableError(f"{name!r} already has an active token: revoke it first, or rotate it")
        token = new_token()
        entry = TokenEntry(name=name, sha256=token_hash(token), functions=allowed, created_at=now,
                           rate_per_s=rate_per_s, burst=burst)
        return TokenTable((*self.entries, entry)), token

    def revoke(self, name: str, *, now: str) -> TokenTable:
        """A table in which `name`'s active token is revoked (its hash kept, so it is answered 403)."""
        current = self.active(_check_name(name))
        if current is None:
            raise TokenTableError(f"{name!r} has no active token")
        return TokenTable(tuple(replace(entry, revoked_at=now) if entry is current else entry
                                for entry in self.entries))

    def without(self, name: str) -> TokenTable:
        """A table with no entry for `name` at all (its tokens become unknown: 401): for a token that is reissued
        on every start, such as the local stack's own, so the table does not grow."""
        return TokenTable(tuple(entry for entry in self.entries if entry.name != _check_name(name)))

    def rotate(self, name: str, *, now: str) -> tuple[TokenTable, str]:
        """Revoke `name`'s active token and add a new one with the same functions and rate settings."""
        current = self.active(_check_name(name))
        if current is None:
            raise TokenTableError(f"{name!r} has no active token to rotate")
        return self.revoke(name, now=now).add(name, now=now, functions=current.functions,
                                              rate_per_s=current.rate_per_s, burst=current.burst)
