"""UTC timestamps as every stored record and event writes them: ISO 8601 with a `Z`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def utc_iso(value: datetime | None = None) -> str:
    """`value` (now when None; naive means UTC) as `2026-11-26T10:00:00.123456Z`."""
    value = datetime.now(UTC) if value is None else value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_utc(value: Any) -> datetime | None:
    """An aware datetime from a datetime or an ISO 8601 string (naive means UTC); None when it is neither."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
