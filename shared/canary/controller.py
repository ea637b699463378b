"""The canary controller: one observe → decide → apply step (`tick`), with the state kept in S3.

The function scales to zero between PingSource wake-ups, so `CanaryController` loads the state from
STATE_BUCKET/CANARY_STATE_KEY before each step and saves it after. Each decision is logged (no patient data)
and exported as metrics (`triage_canary_weight_percent`, `triage_canary_decisions_total`).
With a `replay` (`shared.canary.replay.Replayer`) a new canary first replays stored uploads offline; only a
passing replay makes the challenger's revision (`traffic.prepare`) and routes the first step. The state is
saved with a compare-and-swap that keeps the human review (`approval`) `triage canary approve|reject` wrote
meanwhile (`save_state`, `review_canary`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from shared.canary.errors import CanaryError
from shared.canary.observe import Observer
from shared.canary.policy import (
    ADVANCE,
    HOLD,
    PROMOTE,
    REPLAY,
    ROLLBACK,
    RUNNING,
    TRAFFIC,
    CanaryState,
    Decision,
    ReplayReport,
    apply_decision,
    decide,
    decide_replay,
    rejection,
    review,
    start_canary,
)
from shared.canary.traffic import Traffic
from shared.config import CanaryPolicy
from shared.errors import NotFound, UserError
from shared.names import CANARY_STATE_KEY, STATE_BUCKET
from shared.storage import Storage

__all__ = ["CanaryController", "Replay", "load_state", "log_decision", "review_canary", "save_state", "tick"]

Replay = Callable[[CanaryState], ReplayReport]

log = logging.getLogger("triage.canary")

WEIGHT = Gauge("triage_canary_weight_percent", "Percent of traffic the canary sends to the challenger.", ["service"])
DECISIONS = Counter("triage_canary_decisions_total", "Canary decisions, by outcome.", ["outcome"])


def log_decision(state: CanaryState, decision: Decision, services: Iterable[str]) -> None:
    """One log line (no patient data) and the metrics of a decision."""
    DECISIONS.labels(outcome=decision.outcome).inc()
    for service in services:
        WEIGHT.labels(service=service).set(decision.weight)
    log.info("canary version=%s outcome=%s weight=%d->%d reason=%s",
             state.version, decision.outcome, state.weight, decision.weight, decision.reason)


def load_state(storage: Storage) -> CanaryState | None:
    try:
        data = storage.get_json(STATE_BUCKET, CANARY_STATE_KEY)
    except NotFound:
        return None
    return CanaryState.from_json(data, f"s3://{STATE_BUCKET}/{CANARY_STATE_KEY}")


def save_state(storage: Storage, state: CanaryState) -> None:
    """Write the controller's state; a review stored meanwhile for the same version is kept (CAS)."""

    def mutate(current: Any) -> tuple[None, dict[str, Any]]:
        value = state.to_json()
        if isinstance(current, dict) and str(current.get("version")) == state.version and current.get("approval"):
            value["approval"] = current["approval"]  # the human's record is theirs: the controller only reads it
        return None, value

    storage.update_json(STATE_BUCKET, CANARY_STATE_KEY, mutate)


def review_canary(storage: Storage, decision: str, by: str, *, version: str | None = None,
                  reason: str | None = None, now: datetime | None = None) -> CanaryState:
    """Record a human's approval or rejection in the stored state (CAS); the next tick acts on it."""
    where = f"s3://{STATE_BUCKET}/{CANARY_STATE_KEY}"

    def mutate(current: Any) -> tuple[CanaryState, dict[str, Any]]:
        if not isinstance(current, dict):
            raise UserError(f"no canary to review: {where} holds none")
        state = review(CanaryState.from_json(current, where), decision, by, now or datetime.now(UTC),
                       version=version, reason=reason)
        return state, state.to_json()

    state = storage.update_json(STATE_BUCKET, CANARY_STATE_KEY, mutate)
    log.info("canary version=%s %s by a reviewer", state.version, decision)
    return state


def tick(
    state: CanaryState,
    policy: CanaryPolicy,
    observe: Observer,
    traffic: Traffic,
    *,
    now: datetime,
    promote: Callable[[str], Any] | None = None,
    replay: Replay | None = None,
) -> tuple[CanaryState, Decision]:
    """Observe, decide and apply one step; the returned state is what to persist.

    In the replay phase the step is the replay (no traffic is touched: the challenger has no revision yet);
    without a `replay` to run (CANARY_REPLAY=false since it started) the canary goes on to the traffic steps.
    """
    if state.phase == REPLAY:
        report = None
        decision = rejection(state)
        if decision is None and replay is None:  # started with a replay, the setting turned off since
            why = "not configured (CANARY_REPLAY=false): on to the traffic steps"
            report, decision = ReplayReport(), Decision(ADVANCE, policy.steps[0], f"replay: {why}", (why,))
        elif decision is None:
            report = replay(state)
            decision = decide_replay(state, policy, report)
        log_decision(state, decision, ())
        return apply_decision(state, policy, decision, now, replay=report), decision
    if not state.revisions and (rejected := rejection(state)) is not None:  # rejected before any split
        log_decision(state, rejected, ())
        return apply_decision(state, policy, rejected, now), rejected
    if not state.revisions:
        if state.replay is not None:  # its revision is made only now that the replay passed (idempotent)
            traffic.prepare(state.version)
        state = replace(state, revisions=traffic.revisions())
        if not state.revisions:
            decision = Decision(HOLD, state.weight, "no challenger revision beside the champion yet")
        else:  # the first step is routed now; its data is judged on the next tick
            traffic.set_weight(state.weight, state.revisions)
            decision = Decision(HOLD, state.weight, f"routed the first step of {state.weight} %")
        log_decision(state, decision, state.revisions)
        return apply_decision(state, policy, decision, now), decision
    decision = decide(state, policy, observe(state), now)
    if decision.outcome in (ADVANCE, ROLLBACK, PROMOTE):
        traffic.set_weight(decision.weight, state.revisions, promote=decision.outcome == PROMOTE)
    if decision.outcome == PROMOTE and promote is not None:
        try:
            promote(state.version)
        except Exception as exc:  # not persisted as promoted: the next tick promotes again (both steps idempotent)
            raise CanaryError(f"registry: cannot move champion to {state.version}: {type(exc).__name__}") from exc
    log_decision(state, decision, state.revisions)
    return apply_decision(state, policy, decision, now), decision


class CanaryController:
    """The canary with its state in S3: `start` on a registered model, `tick` on each PingSource wake-up."""

    def __init__(self, storage: Storage, policy: CanaryPolicy, observe: Observer, traffic: Traffic, *,
                 promote: Callable[[str], Any] | None = None,
                 champion_version: Callable[[], str | None] = lambda: None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 replay: Replay | None = None) -> None:
        self.champion_version = champion_version
        self.replay = replay
        self.storage = storage
        self.policy = policy
        self.observe = observe
        self.traffic = traffic
        self.promote = promote
        self.clock = clock
        # One decision at a time: a slow tick must not race the next ping on the state or the metric deltas.
        self._busy = threading.Lock()

    def start(self, version: str, champion_version: str | None = None) -> dict[str, Any]:
        """A canary at the first step for `version`; a redelivered event for the same version changes nothing."""
        with self._busy:
            return self._start(version, champion_version)

    def _start(self, version: str, champion_version: str | None) -> dict[str, Any]:
        existing = load_state(self.storage)
        if existing is not None and existing.version == str(version):
            return {"status": "unchanged", "version": existing.version, "weight": existing.weight}
        champion_version = champion_version or self.champion_version()
        state, started = start_canary(existing, version, champion_version, self.policy, self.clock(),
                                      replay=self.replay is not None)
        if not started:
            return {"status": "unchanged", "version": state.version, "weight": state.weight}
        log.info("canary version=%s outcome=start weight=0->%d phase=%s", state.version, state.weight, state.phase)
        if state.phase != REPLAY:
            self.traffic.prepare(state.version)  # idempotent: a redelivery after a failure here prepares again
        save_state(self.storage, state)  # saved before replaying / routing: a failure is retried by the next tick
        state, decision = self._step(state)
        return {"status": "started", "version": state.version, "phase": state.phase, **decision.to_json()}

    def _step(self, state: CanaryState) -> tuple[CanaryState, Decision]:
        """One tick, saved; a replay that passed is saved, then its first step routed at once."""
        replayed = state.phase == REPLAY
        state, decision = tick(state, self.policy, self.observe, self.traffic, now=self.clock(),
                               promote=self.promote, replay=self.replay)
        save_state(self.storage, state)
        if replayed and state.status == RUNNING and state.phase == TRAFFIC:
            state, decision = tick(state, self.policy, self.observe, self.traffic, now=self.clock(),
                                   promote=self.promote, replay=self.replay)
            save_state(self.storage, state)
        return state, decision

    def tick(self) -> dict[str, Any]:
        """One step decision; a ping that arrives while one is being made is skipped (the next one comes)."""
        if not self._busy.acquire(blocking=False):
            return {"status": "busy"}
        try:
            return self._tick()
        finally:
            self._busy.release()

    def _tick(self) -> dict[str, Any]:
        state = load_state(self.storage)
        if state is None or state.status != RUNNING:
            return {"status": "idle", "version": state.version if state else None}
        state, decision = self._step(state)
        return {"status": state.status, "version": state.version, "phase": state.phase, **decision.to_json()}
