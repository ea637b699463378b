"""Canary of design §9 (Flagger-style): step traffic to the challenger while it stays within thresholds.

`policy` is the pure state machine (decide / apply_decision); `observe` the metrics and feedback sources;
`traffic` the backend interface, with `gateway` (local stack) and `knative` (the cluster) implementing it;
`replay` the offline replay of stored uploads a new challenger passes before any traffic;
`controller` one observe → decide → apply step with the state in S3; `wiring` builds all of it from
`shared.config.CanarySettings` for the canary function and `triage canary`. The thresholds are
`shared.config.CanaryPolicy`.
"""

from __future__ import annotations

from shared.canary.controller import CanaryController, load_state, log_decision, review_canary, tick
from shared.canary.errors import CanaryError
from shared.canary.observe import Observer, observer
from shared.canary.policy import (
    APPROVED,
    AWAITING_APPROVAL,
    HOLD,
    PROMOTED,
    REJECTED,
    REPLAY,
    ROLLBACK,
    RUNNING,
    CanaryState,
    Decision,
    ReplayReport,
    apply_decision,
    start_canary,
)
from shared.canary.replay import Replayer
from shared.canary.traffic import Traffic
from shared.canary.wiring import backends, controller_from_settings

__all__ = [
    "APPROVED",
    "AWAITING_APPROVAL",
    "HOLD",
    "PROMOTED",
    "REJECTED",
    "REPLAY",
    "ROLLBACK",
    "RUNNING",
    "CanaryController",
    "CanaryError",
    "CanaryState",
    "Decision",
    "Observer",
    "ReplayReport",
    "Replayer",
    "Traffic",
    "apply_decision",
    "backends",
    "controller_from_settings",
    "load_state",
    "log_decision",
    "observer",
    "review_canary",
    "start_canary",
    "tick",
]
