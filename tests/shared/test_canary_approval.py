"""Human approval before promotion (CANARY_REQUIRE_APPROVAL), as Flagger's confirm-promotion webhook: the gate holds
until `triage canary approve`, `reject` rolls back, and the review survives the controller's own writes (CAS)."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest

from shared.canary.controller import CanaryController, load_state, review_canary
from shared.canary.policy import (
    AWAIT_APPROVAL,
    AWAITING_APPROVAL,
    HOLD,
    PROMOTE,
    ROLLBACK,
    Observation,
    RevisionStats,
    apply_decision,
    decide,
    review,
    start_canary,
)
from shared.config import CanaryPolicy
from shared.errors import UserError
from tests.shared.canary.test_controller import RecordingTraffic
from tests.shared.canary.test_policy import HEALTHY, NOW
from triage.canary import run_action
from triage.cli import main

GATED = CanaryPolicy(steps=(50, 100), min_requests=1, require_approval=True)
BREACH = Observation(RevisionStats(100, 0, 0.1), RevisionStats(100, 10, 0.1))  # 10 % 5xx


def at_last_step():
    state, _ = start_canary(None, "7", "6", GATED, NOW)
    state = apply_decision(state, GATED, decide(state, GATED, HEALTHY, NOW), NOW)  # 50 → 100
    assert state.weight == 100
    return state


def test_the_last_step_waits_for_approval_and_only_an_approval_promotes():
    state = at_last_step()
    decision = decide(state, GATED, HEALTHY, NOW)
    assert (decision.outcome, decision.weight) == (AWAIT_APPROVAL, 100)
    state = apply_decision(state, GATED, decision, NOW)
    assert state.phase == AWAITING_APPROVAL and state.status == "running"
    for _ in range(3):  # ticks keep holding, however healthy
        held = decide(state, GATED, HEALTHY, NOW)
        assert held.outcome == HOLD and "triage canary approve --version 7" in held.reason
    approved = review(state, "approved", "alice", NOW, reason="reviewed the replay")
    assert approved.approval == {"decision": "approved", "by": "alice", "time": "2026-11-26T12:00:00Z",
                                 "version": "7", "reason": "reviewed the replay"}
    promoted = decide(approved, GATED, HEALTHY, NOW)
    assert promoted.outcome == PROMOTE and promoted.reason == "approved by alice at 2026-11-26T12:00:00Z"
    assert decide(state, GATED, BREACH, NOW).outcome == ROLLBACK  # still judged while it waits
    ungated = CanaryPolicy(steps=(50, 100), min_requests=1)
    assert decide(at_last_step(), ungated, HEALTHY, NOW).outcome == PROMOTE  # without the setting: no wait


def test_review_refuses_what_it_cannot_mean():
    state = at_last_step()
    with pytest.raises(UserError, match="not awaiting approval"):
        review(state, "approved", "alice", NOW)  # a step is still being judged
    awaiting = apply_decision(state, GATED, decide(state, GATED, HEALTHY, NOW), NOW)
    with pytest.raises(UserError, match="of version 7, not 8"):
        review(awaiting, "approved", "alice", NOW, version="8")
    rejected = review(awaiting, "rejected", "bob", NOW)
    assert decide(rejected, GATED, HEALTHY, NOW).outcome == ROLLBACK
    with pytest.raises(UserError, match="already rejected"):
        review(rejected, "approved", "alice", NOW)
    done = apply_decision(rejected, GATED, decide(rejected, GATED, HEALTHY, NOW), NOW)
    with pytest.raises(UserError, match="rolled_back: nothing to reject"):
        review(done, "rejected", "bob", NOW)


def cli(action: str, **options) -> Namespace:
    defaults = {"version": None, "by": "alice", "reason": None, "json": False, "history": 8}
    return Namespace(action=action, **{**defaults, **options})


def test_cli_approval_gates_the_stored_canary_until_approved(storage, capsys):
    traffic, promoted = RecordingTraffic(), []
    controller = CanaryController(storage, GATED, lambda state: HEALTHY, traffic, promote=promoted.append,
                                  clock=lambda: NOW)
    controller.start("7", "6")
    assert controller.tick()["outcome"] == "advance" and traffic.weights == [50, 100]
    assert controller.tick()["outcome"] == AWAIT_APPROVAL
    assert controller.tick()["outcome"] == HOLD and promoted == []
    with pytest.raises(UserError, match="not 8"):
        run_action(cli("approve", version="8"), storage)
    assert run_action(cli("status"), storage) == 0
    out = capsys.readouterr().out
    assert "phase awaiting_approval, 100 %" in out and "approval: awaited: triage canary approve --version 7" in out
    assert run_action(cli("approve", version="7"), storage) == 0
    assert "approved by alice" in capsys.readouterr().out
    assert load_state(storage).approval["by"] == "alice"
    result = controller.tick()
    assert result["outcome"] == PROMOTE and result["status"] == "promoted" and promoted == ["7"]
    run_action(cli("status", json=True), storage)
    stored = json.loads(capsys.readouterr().out)
    assert stored["status"] == "promoted" and stored["approval"]["decision"] == "approved"
    with pytest.raises(UserError, match="promoted: nothing to approve"):
        run_action(cli("approve"), storage)
    with pytest.raises(UserError, match="--by"):
        run_action(cli("reject", by="not a name!"), storage)


def test_cli_reject_rolls_back_and_a_review_written_during_a_tick_is_kept(storage, capsys):
    traffic = RecordingTraffic()

    def observe(state):
        if state.weight == 100 and state.approval is None:  # the reviewer writes while this tick decides
            review_canary(storage, "rejected", "bob", reason="artefacts on portable films", now=NOW)
        return HEALTHY

    controller = CanaryController(storage, GATED, observe, traffic, clock=lambda: NOW)
    controller.start("7", "6")
    controller.tick()
    assert controller.tick()["outcome"] == AWAIT_APPROVAL  # decided without the rejection it did not see
    assert load_state(storage).approval["decision"] == "rejected"  # saved over it, the review survived (CAS)
    result = controller.tick()
    assert result["outcome"] == ROLLBACK and "rejected by bob" in result["reason"] and traffic.weights[-1] == 0
    run_action(cli("status"), storage)
    out = capsys.readouterr().out
    assert "rolled_back" in out and "approval: rejected by bob" in out and "artefacts on portable films" in out


def test_the_cli_subcommands_through_triage_and_without_a_canary(storage, s3_server, capsys, monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server)
    assert main(["canary", "status"]) == 0
    assert "no canary" in capsys.readouterr().out
    assert main(["canary", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"status": "none"}
    assert main(["canary", "reject", "--by", "bob"]) == 2
    assert "no canary to review" in capsys.readouterr().err
    CanaryController(storage, GATED, lambda state: HEALTHY, RecordingTraffic(), clock=lambda: NOW).start("7", "6")
    assert main(["canary", "approve", "--version", "7", "--by", "alice"]) == 2  # at 50 %: not awaiting yet
    assert "not awaiting approval" in capsys.readouterr().err
    assert main(["canary", "reject", "--version", "7", "--by", "bob", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["approval"]["by"] == "bob"
    with pytest.raises(SystemExit):
        main(["canary", "approve", "--help"])
    assert "--version" in capsys.readouterr().out
