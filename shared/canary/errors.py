"""The canary's one error: a metrics source, traffic backend or the registry failed (our side, retried)."""

from __future__ import annotations

from shared.errors import TriageError

__all__ = ["CanaryError"]


class CanaryError(TriageError):
    """A source or traffic backend failed (unreachable, non-2xx): our side, so 502 and a retry next tick."""

    status = 502
    code = "canary_backend_failed"
