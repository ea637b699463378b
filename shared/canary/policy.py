"""The canary's state machine, pure (as Flagger's scheduler): state, observation, `decide`, `apply_decision`.

No I/O here. A canary goes through up to three phases, all with status `running`:
- `replay` (when started with `replay=True`): the challenger scores recent and labelled uploads offline;
  `decide_replay(state, policy, report)` → advance to the first traffic step, hold (too few cases to judge,
  no champion), or rollback (lower sensitivity, low agreement, any error) — never a single request routed;
- `traffic`: `decide(state, policy, observation, now)` → advance / hold / rollback / promote per step;
- `awaiting_approval` (policy.require_approval): the last step passed; the metrics are still judged each tick
  (a breach rolls back), and `review(state, ...)` records a human's approval (→ promote) or rejection
  (→ rollback, in any phase), as Flagger's confirm-promotion webhook.
`apply_decision` is the state after a decision. The thresholds themselves are `shared.config.CanaryPolicy`.
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
    "APPROVED",
    "AWAIT_APPROVAL",
    "AWAITING_APPROVAL",
    "HOLD",
    "PROMOTE",
    "PROMOTED",
    "REJECTED",
    "REPLAY",
    "ROLLBACK",
    "ROLLED_BACK",
    "RUNNING",
    "TRAFFIC",
    "CanaryState",
    "Decision",
    "FeedbackStats",
    "Observation",
    "ReplayReport",
    "RevisionStats",
    "apply_decision",
    "decide",
    "decide_replay",
    "rejection",
    "review",
    "start_canary",
]

ADVANCE, HOLD, ROLLBACK, PROMOTE, AWAIT_APPROVAL = "advance", "hold", "rollback", "promote", "await_approval"
RUNNING, PROMOTED, ROLLED_BACK = "running", "promoted", "rolled_back"
REPLAY, TRAFFIC, AWAITING_APPROVAL = "replay", "traffic", "awaiting_approval"  # the phases of a running canary
APPROVED, REJECTED = "approved", "rejected"


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
class ReplayReport:
    """What the offline replay measured (`shared.canary.replay`): counts only, never a key or an identifier.

    Each case was scored by both models the same way. `positives` are the labelled pneumonia cases both scored,
    `*_detected` how many of them each called pneumonia; `unlabelled` / `agreed` the unlabelled cases and how many
    got the champion's label; `errors` the inputs the challenger failed on where the champion answered
    (`error_kinds`: exception type → count); `skipped` inputs neither could score (a bad image) or gone meanwhile.
    `champion_error` / `challenger_error`: that model could not be loaded at all.
    """

    labelled: int = 0
    labelled_correct: dict[str, int] = field(default_factory=dict)  # champion / challenger → correct labels
    positives: int = 0
    champion_detected: int = 0
    challenger_detected: int = 0
    unlabelled: int = 0
    agreed: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    labels_without_input: int = 0  # labels of synchronous predict / explain requests: no stored input to replay
    champion_version: str | None = None
    champion_error: str | None = None
    challenger_error: str | None = None
    seconds: float = 0.0

    @property
    def champion_sensitivity(self) -> float | None:
        return self.champion_detected / self.positives if self.positives else None

    @property
    def challenger_sensitivity(self) -> float | None:
        return self.challenger_detected / self.positives if self.positives else None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.unlabelled if self.unlabelled else None

    def to_json(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {**asdict(self), "seconds": round(self.seconds, 3),
                "champion_sensitivity": rounded(self.champion_sensitivity),
                "challenger_sensitivity": rounded(self.challenger_sensitivity),
                "agreement": rounded(self.agreement)}


@dataclass(frozen=True)
class Decision:
    outcome: str  # advance | hold | rollback | promote | await_approval
    weight: int  # percent to the challenger after the decision
    reason: str
    reasons: tuple[str, ...] = ()  # the replay's verdict, one line per check (`reason` joins them)

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
    phase: str = TRAFFIC  # replay | traffic | awaiting_approval (while running)
    replay: dict[str, Any] | None = None  # the replay's report, verdict and reasons (`ReplayReport.to_json`)
    approval: dict[str, Any] | None = None  # {"decision": approved | rejected, "by", "time", "reason"}

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
                phase=str(data.get("phase") or TRAFFIC),  # a state saved before the replay existed: traffic
                replay=None if data.get("replay") is None else dict(data["replay"]),
                approval=None if data.get("approval") is None else dict(data["approval"]),
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
    *,
    replay: bool = False,
) -> tuple[CanaryState, bool]:
    """(new state, True) for a new challenger; (existing, False) when `version` already has one.

    With `replay` the new state is in the replay phase at 0 %; without, at the first traffic step.
    """
    if existing is not None and existing.version == str(version):
        return existing, False
    stamp = utc_iso(now)
    weight = 0 if replay else policy.steps[0]
    reason = f"challenger {version}" + (": offline replay first" if replay else "")
    state = CanaryState(
        version=str(version),
        champion_version=champion_version,
        weight=weight,
        step=0,
        status=RUNNING,
        started=stamp,
        updated=stamp,
        revisions={k: dict(v) for k, v in (revisions or {}).items()},
        history=({"time": stamp, "outcome": "start", "weight": weight, "reason": reason},),
        phase=REPLAY if replay else TRAFFIC,
    )
    return state, True


def _sensitivity(report: ReplayReport) -> str:
    return (f"sensitivity {report.challenger_sensitivity:.3f} vs the champion's {report.champion_sensitivity:.3f} "
            f"on {report.positives} labelled pneumonia cases")


def decide_replay(state: CanaryState, policy: CanaryPolicy, report: ReplayReport) -> Decision:
    """The replay's verdict: rollback on any error, lower sensitivity or low agreement; hold without evidence.

    Sensitivity is judged with at least `policy.replay_min_positives` labelled pneumonia cases, agreement with
    at least `policy.replay_min_unlabelled` unlabelled ones; a check without enough cases is said so and left out
    (so with no labels yet, agreement alone decides). With neither check possible, or no champion to compare
    with, the canary holds in its replay (run again on each tick, as uploads and labels arrive).
    """
    if state.status != RUNNING or state.phase != REPLAY:
        raise ValueError(f"canary of version {state.version} is {state.status} / {state.phase}, not in its replay")
    if report.challenger_error:
        return _verdict(ROLLBACK, [f"the challenger could not be loaded: {report.challenger_error}"])
    if report.champion_error or not report.champion_version:
        why = report.champion_error or "no champion version is known (the registry's champion alias is unset)"
        return _verdict(HOLD, [f"no champion to compare with: {why}"])
    failed, passed, judged = [], [], 0
    if report.errors:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(report.error_kinds.items()))
        failed.append(f"the challenger raised an error on {report.errors} input(s) the champion scored ({kinds})")
    if report.positives < policy.replay_min_positives:
        passed.append(f"sensitivity not judged: {report.positives} labelled pneumonia case(s) "
                      f"< {policy.replay_min_positives}")
    else:
        judged += 1
        lower = report.challenger_detected < report.champion_detected
        (failed if lower else passed).append(f"{_sensitivity(report)}: {'lower' if lower else 'not lower'}")
    agreement, cases = report.agreement, report.unlabelled
    if cases < policy.replay_min_unlabelled or agreement is None:
        passed.append(f"agreement not judged: {cases} unlabelled case(s) < {policy.replay_min_unlabelled}")
    else:
        judged += 1
        low = agreement < policy.replay_min_agreement
        sign = "<" if low else ">="
        (failed if low else passed).append(
            f"agreement {agreement:.3f} {sign} {policy.replay_min_agreement} on {cases} unlabelled cases")
    if report.skipped:
        passed.append(f"{report.skipped} input(s) neither model could score were left out")
    if failed:
        return _verdict(ROLLBACK, failed + passed)
    if not judged:
        return _verdict(HOLD, ["too few replayed cases to judge the challenger", *passed])
    return _verdict(ADVANCE, [*passed, "no errors"], policy.steps[0])


def _verdict(outcome: str, reasons: list[str], weight: int = 0) -> Decision:
    return Decision(outcome, weight, "replay: " + "; ".join(reasons), tuple(reasons))


def rejection(state: CanaryState) -> Decision | None:
    """Rollback when a human rejected this canary (`review`), else None."""
    approval = state.approval or {}
    if approval.get("decision") == REJECTED:
        why = f": {approval['reason']}" if approval.get("reason") else ""
        return Decision(ROLLBACK, 0, f"rejected by {approval.get('by')} at {approval.get('time')}{why}")
    return None


def _approved(state: CanaryState) -> bool:
    return (state.approval or {}).get("decision") == APPROVED


def review(state: CanaryState, decision: str, by: str, now: datetime, *, version: str | None = None,
           reason: str | None = None) -> CanaryState:
    """The state with a human's `decision` (approved | rejected) recorded with who and when.

    Approval is for a canary awaiting it; rejection for any running one (the next tick rolls it back). UserError
    for anything else, and when `version` is given but is not the canary's.
    """
    if decision not in (APPROVED, REJECTED):
        raise UserError(f"decision: expected {APPROVED} or {REJECTED}, got {decision!r}")
    if version is not None and str(version) != state.version:
        raise UserError(f"the canary is of version {state.version}, not {version}")
    if state.status != RUNNING:
        raise UserError(f"the canary of version {state.version} is {state.status}: nothing to {decision[:-1]}")
    if decision == APPROVED and state.phase != AWAITING_APPROVAL:
        raise UserError(f"the canary of version {state.version} is in its {state.phase} phase, not awaiting "
                        "approval (approve once its last traffic step passed; reject works in any phase)")
    if (state.approval or {}).get("decision") == REJECTED:
        raise UserError(f"the canary of version {state.version} was already rejected")
    record = {"decision": decision, "by": by, "time": utc_iso(now), "version": state.version}
    if reason:
        record["reason"] = reason
    return replace(state, approval=record)


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
    """One step of the canary: rollback on a rejection or any breach, hold without enough requests, else advance,
    promote, or (with `policy.require_approval`, after the last step) wait for approval."""
    del now  # the decision depends on the window's data only; `now` stamps the history in `apply_decision`
    if state.status != RUNNING:
        raise ValueError(f"canary of version {state.version} is {state.status}, not running")
    if state.phase == REPLAY:
        raise ValueError(f"canary of version {state.version} is in its replay: decide_replay judges it")
    rejected = rejection(state)
    if rejected is not None:
        return rejected
    reason = _breach(policy, observation)
    if reason is not None:
        return Decision(ROLLBACK, 0, reason)
    if state.phase == AWAITING_APPROVAL:  # every step passed; the metrics are still judged while it waits
        if _approved(state):
            approval = state.approval or {}
            return Decision(PROMOTE, 100, f"approved by {approval.get('by')} at {approval.get('time')}")
        return Decision(HOLD, state.weight, f"awaiting approval: triage canary approve --version {state.version}")
    if observation.challenger.requests < policy.min_requests:
        return Decision(HOLD, state.weight, f"{observation.challenger.requests:.0f} < {policy.min_requests} requests")
    if state.weight >= 100 or state.step >= len(policy.steps) - 1:
        if policy.require_approval and not _approved(state):
            return Decision(AWAIT_APPROVAL, state.weight, "every step within thresholds; awaiting approval")
        return Decision(PROMOTE, 100, "every step within thresholds")
    return Decision(ADVANCE, policy.steps[state.step + 1], "within thresholds")


def apply_decision(state: CanaryState, policy: CanaryPolicy, decision: Decision, now: datetime, *,
                   replay: ReplayReport | None = None) -> CanaryState:
    """The state after `decision`, its history extended by one entry; `replay`: the report it judged (stored
    with the verdict and its reasons). A replay that advances enters the traffic phase at the first step."""
    stamp = utc_iso(now)
    step, status, phase = state.step, state.status, state.phase
    if decision.outcome == ADVANCE and phase == REPLAY:
        step, phase = 0, TRAFFIC
    elif decision.outcome == ADVANCE:
        step = policy.steps.index(decision.weight) if decision.weight in policy.steps else step + 1
    elif decision.outcome == AWAIT_APPROVAL:
        phase = AWAITING_APPROVAL
    elif decision.outcome == ROLLBACK:
        status = ROLLED_BACK
    elif decision.outcome == PROMOTE:
        status = PROMOTED
    entry = {"time": stamp, **decision.to_json()}
    report = state.replay
    if replay is not None:
        report = {**replay.to_json(), "verdict": decision.outcome, "reasons": list(decision.reasons), "time": stamp}
    return replace(state, weight=decision.weight, step=step, status=status, phase=phase, updated=stamp,
                   history=(*state.history, entry), replay=report)
