"""Canary of design §9 (Flagger-style): step traffic to the challenger while it stays within thresholds.

`policy` is the pure state machine (decide / apply_decision); `observe` the metrics and feedback sources;
`traffic` the backend interface, with `gateway` (local stack) and `knative` (the cluster) implementing it;
`controller` one observe → decide → apply step with the state in S3; `wiring` builds all of it from
`shared.config.CanarySettings` for the canary function and `triage canary`. The thresholds are
`shared.config.CanaryPolicy`.
"""

from __future__ import annotations

from shared.canary.controller import CanaryController, load_state, log_decision, tick
from shared.canary.errors import CanaryError
from shared.canary.observe import Observer, observer
from shared.canary.policy import (
    HOLD,
    PROMOTED,
    ROLLBACK,
    RUNNING,
    CanaryState,
    Decision,
    apply_decision,
    start_canary,
)
from shared.canary.traffic import Traffic
from shared.canary.wiring import backends, controller_from_settings

__all__ = [
    "HOLD",
    "PROMOTED",
    "ROLLBACK",
    "RUNNING",
    "CanaryController",
    "CanaryError",
    "CanaryState",
    "Decision",
    "Observer",
    "Traffic",
    "apply_decision",
    "backends",
    "controller_from_settings",
    "load_state",
    "log_decision",
    "observer",
    "start_canary",
    "tick",
]
