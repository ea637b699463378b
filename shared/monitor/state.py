"""The monitor's JSON state in S3: how a stored value is read, and the error when concurrent writers keep winning.

Every write of `state.json` and `labels.json` goes through `Storage.update_json` (If-Match on the ETag), so
concurrent events never lose one another's update; `MonitorStateConflict` is what it raises after too many races.
"""

from __future__ import annotations

from typing import Any

from shared.errors import TriageError

__all__ = ["MonitorStateConflict", "as_object"]


class MonitorStateConflict(TriageError):
    """The monitor state kept changing under us (many concurrent writers): 503, the event is retried."""

    status = 503
    code = "monitor_state_conflict"


def as_object(value: Any) -> dict[str, Any] | None:
    """A stored JSON value as the monitor reads it: an object, or None for anything else (started afresh)."""
    return value if isinstance(value, dict) else None
