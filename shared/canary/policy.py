"""The canary's state machine, pure (as Flagger's scheduler): state, observation, `decide`, `apply_decision`.

No I/O here: `decide(state, policy, observation, now)` → advance / hold / rollback / promote, and
`apply_decision` the state after it. The thresholds themselves are `shared.config.CanaryPolicy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from shared.config import CanaryPolicy
from shared.errors import UserError
from shared.timestamps import utc_iso

__all__ = [
    "ADVANCE",
    "HOLD",
    "PROMOTE",
    "PROMOTED",
    "ROLLBACK",
    "ROLLED_BACK",
    "RUNNING",
    "CanaryState",
    "Decision",
    "FeedbackStats",
    "Observation",
    "RevisionStats",
    "apply_decision",
    "decide",
    "start_canary",
]

ADVANCE, HOLD, ROLLBACK, PROMOTE = "advance", "hold", "rollback", "promote"
RUNNING, PROMOTED, ROLLED_BACK = "running", "promoted", "rolled_back"


@dataclass(frozen=True)
class RevisionStats:
    """Requests, 5xx answers and p99 latency (seconds, None without data) of one side over the window."""

    requests: float = 0.0
    errors: float = 0.0
    p99_s: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class FeedbackStats:
    """Radiologist labels of predictions made by one model version, and how many the model got right."""

    labelled: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


@dataclass(frozen=True)
class Observation:
    champion: RevisionStats
    challenger: RevisionStats
    champion_feedback: FeedbackStats = FeedbackStats()
    challenger_feedback: FeedbackStats = FeedbackStats()


@dataclass(frozen=True)
class Decision:
    outcome: str  # advance | hold | rollback | promote
    weight: int  # percent to the challenger after the decision
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "weight": self.weight, "reason": self.reason}


@dataclass(frozen=True)
class CanaryState:
    """The canary of one challenger `version`, persisted as JSON between ticks."""

    version: str
    champion_version: str | None
    weight: int
    step: int  # index into the policy's steps
    status: str  # running | promoted | rolled_back
    started: str
    updated: str
    revisions: dict[str, dict[str, str]] = field(default_factory=dict)  # service → {champion, challenger}
    history: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "history": list(self.history)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "canary state") -> CanaryState:
        try:
            return cls(
                version=str(data["version"]),
                champion_version=None if data.get("champion_version") is None else str(data["champion_version"]),
                weight=int(data["weight"]),
                step=int(data["step"]),
                status=str(data["status"]),
                started=str(data["started"]),
                updated=str(data["updated"]),
                revisions={k: dict(v) for k, v in dict(data.get("revisions") or {}).items()},
                history=tuple(dict(h) for h in data.get("history") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where}: invalid ({type(exc).__name__}: {exc})") from exc


def start_canary(
    existing: CanaryState | None,
    version: str,
    champion_version: str | None,
    policy: CanaryPolicy,
    now: datetime,
    revisions: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[CanaryState, bool]:
    """(state at the first step, True) for a new challenger; (existing, False) when `version` already has one."""
    if existing is not None and existing.version == str(version):
        return existing, False
    stamp = utc_iso(now)
    entry = {"time": stamp, "outcome": "start", "weight": policy.steps[0], "reason": f"challenger {version}"}
    state = CanaryState(
        version=str(version),
        champion_version=champion_version,
        weight=policy.steps[0],
        step=0,
        status=RUNNING,
        started=stamp,
        updated=stamp,
        revisions={k: dict(v) for k, v in (revisions or {}).items()},
        history=(entry,),
    )
    return state, True


def _breach(policy: CanaryPolicy, obs: Observation) -> str | None:
    """The first threshold the challenger breaks, as a reason; None when it keeps every one."""
    challenger = obs.challenger
    if challenger.requests >= policy.min_requests:
        if challenger.error_rate > policy.max_error_rate:
            return f"error rate {challenger.error_rate:.3f} > {policy.max_error_rate}"
        if challenger.p99_s is not None and policy.max_p99_s is not None and challenger.p99_s > policy.max_p99_s:
            return f"p99 {challenger.p99_s:.3f} s > {policy.max_p99_s} s"
        p99, champion_p99, ratio = challenger.p99_s, obs.champion.p99_s, policy.max_p99_ratio
        if p99 is not None and champion_p99 and ratio is not None and p99 > ratio * champion_p99:
            return f"p99 {p99:.3f} s > {ratio} x champion's {champion_p99:.3f} s"
    feedback = obs.challenger_feedback
    if feedback.labelled >= policy.min_feedback and feedback.accuracy is not None:
        if policy.min_accuracy is not None and feedback.accuracy < policy.min_accuracy:
            return f"feedback accuracy {feedback.accuracy:.3f} < {policy.min_accuracy}"
        champion = obs.champion_feedback.accuracy
        if champion is not None and feedback.accuracy < champion - policy.max_accuracy_drop:
            return f"feedback accuracy {feedback.accuracy:.3f} < champion's {champion:.3f} - {policy.max_accuracy_drop}"
    return None


def decide(state: CanaryState, policy: CanaryPolicy, observation: Observation, now: datetime) -> Decision:
    """One step of the canary: rollback on any breach, hold without enough requests, else advance or promote."""
    del now  # the decision depends on the window's data only; `now` stamps the history in `apply_decision`
    if state.status != RUNNING:
        raise ValueError(f"canary of version {state.version} is {state.status}, not running")
    reason = _breach(policy, observation)
    if reason is not None:
        return Decision(ROLLBACK, 0, reason)
    if observation.challenger.requests < policy.min_requests:
        return Decision(HOLD, state.weight, f"{observation.challenger.requests:.0f} < {policy.min_requests} requests")
    if state.weight >= 100 or state.step >= len(policy.steps) - 1:
        return Decision(PROMOTE, 100, "every step within thresholds")
    return Decision(ADVANCE, policy.steps[state.step + 1], "within thresholds")


def apply_decision(state: CanaryState, policy: CanaryPolicy, decision: Decision, now: datetime) -> CanaryState:
    """The state after `decision`, its history extended by one entry."""
    stamp = utc_iso(now)
    step, status = state.step, state.status
    if decision.outcome == ADVANCE:
        step = policy.steps.index(decision.weight) if decision.weight in policy.steps else step + 1
    elif decision.outcome == ROLLBACK:
        status = ROLLED_BACK
    elif decision.outcome == PROMOTE:
        status = PROMOTED
    entry = {"time": stamp, **decision.to_json()}
    return replace(state, weight=decision.weight, step=step, status=status, updated=stamp,
                   history=(*state.history, entry))
