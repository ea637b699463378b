"""Where the canary's split is applied (as Flagger's router.go): one interface, one module per backend.

`GatewayTraffic` (shared.canary.gateway) drives the local stack's gateway; `KnativeTraffic`
(shared.canary.knative) patches the Knative Services' `spec.traffic`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["Traffic"]


class Traffic(Protocol):
    """Where the split is applied. `revisions()` names each side per service; `set_weight` routes percent."""

    def prepare(self, version: str) -> None: ...

    def revisions(self) -> dict[str, dict[str, str]]: ...

    def set_weight(self, weight: int, revisions: Mapping[str, Mapping[str, str]], *, promote: bool = False) -> None: ...
