"""The replay phase of the canary state machine (pure): its verdicts, the rule for too few cases, the report."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from shared.canary.policy import (
    ADVANCE,
    HOLD,
    REPLAY,
    ROLLBACK,
    TRAFFIC,
    CanaryState,
    ReplayReport,
    apply_decision,
    decide,
    decide_replay,
    review,
    start_canary,
)
from shared.config import CanaryPolicy, CanarySettings
from shared.errors import UserError
from tests.shared.canary.test_policy import HEALTHY, NOW

POLICY = CanaryPolicy(steps=(10, 50, 100), replay_min_agreement=0.9, replay_min_positives=5, replay_min_unlabelled=20)
# 12 labelled pneumonia cases (the champion found 10), 100 unlabelled ones.
GOOD = ReplayReport(labelled=30, labelled_correct={"champion": 27, "challenger": 28}, positives=12,
                    champion_detected=10, challenger_detected=11, unlabelled=100, agreed=96, champion_version="6")


def replaying(policy: CanaryPolicy = POLICY) -> CanaryState:
    state, created = start_canary(None, "7", "6", policy, NOW, replay=True)
    assert created
    return state


def test_a_new_canary_with_replay_starts_at_zero_percent_in_its_replay():
    state = replaying()
    assert (state.phase, state.weight, state.status, state.revisions) == (REPLAY, 0, "running", {})
    assert state.history[0]["reason"] == "challenger 7: offline replay first"
    with pytest.raises(ValueError, match="decide_replay judges it"):
        decide(state, POLICY, HEALTHY, NOW)


def test_a_replay_as_good_as_the_champion_advances_to_the_first_step_and_keeps_its_report():
    state = replaying()
    decision = decide_replay(state, POLICY, GOOD)
    assert (decision.outcome, decision.weight) == (ADVANCE, 10)
    assert decision.reasons == ("sensitivity 0.917 vs the champion's 0.833 on 12 labelled pneumonia cases: not lower",
                                "agreement 0.960 >= 0.9 on 100 unlabelled cases", "no errors")
    after = apply_decision(state, POLICY, decision, NOW, replay=GOOD)
    assert (after.phase, after.weight, after.step) == (TRAFFIC, 10, 0)
    report = after.replay
    assert report["verdict"] == ADVANCE and report["reasons"] == list(decision.reasons)
    assert report["challenger_sensitivity"] == 0.9167 and report["champion_sensitivity"] == 0.8333
    assert report["agreement"] == 0.96 and report["errors"] == 0
    assert decide(after, POLICY, HEALTHY, NOW).outcome == ADVANCE  # the traffic steps take over
    restored = CanaryState.from_json(json.loads(json.dumps(after.to_json())))
    assert restored == after  # the report travels with the stored state


@pytest.mark.parametrize("report, reason", [
    (replace(GOOD, challenger_detected=9), "sensitivity 0.750 vs the champion's 0.833 on 12 labelled pneumonia "
                                           "cases: lower"),
    (replace(GOOD, challenger_detected=0, agreed=50), "agreement 0.500 < 0.9 on 100 unlabelled cases"),
    (replace(GOOD, agreed=89), "agreement 0.890 < 0.9"),
    (replace(GOOD, errors=2, error_kinds={"RuntimeError": 2}),
     "the challenger raised an error on 2 input(s) the champion scored (RuntimeError x2)"),
    (ReplayReport(champion_version="6", challenger_error="ModelLoadError: sha256 differs"),
     "the challenger could not be loaded: ModelLoadError: sha256 differs"),
])
def test_a_worse_or_failing_challenger_is_rolled_back_without_traffic(report, reason):
    state = replaying()
    decision = decide_replay(state, POLICY, report)
    assert (decision.outcome, decision.weight) == (ROLLBACK, 0)
    assert reason in decision.reason
    after = apply_decision(state, POLICY, decision, NOW, replay=report)
    assert after.status == "rolled_back" and after.weight == 0 and after.revisions == {}
    assert after.replay["verdict"] == ROLLBACK and any(reason in line for line in after.replay["reasons"])


def test_without_labels_agreement_alone_decides_and_the_report_says_so():
    unlabelled_only = ReplayReport(unlabelled=40, agreed=39, champion_version="6")
    decision = decide_replay(replaying(), POLICY, unlabelled_only)
    assert decision.outcome == ADVANCE
    assert decision.reasons[0] == "sensitivity not judged: 0 labelled pneumonia case(s) < 5"
    few_labels = replace(GOOD, positives=4, champion_detected=4, challenger_detected=0)  # too few to judge
    assert decide_replay(replaying(), POLICY, few_labels).outcome == ADVANCE
    labels_only = replace(GOOD, unlabelled=19, agreed=0)  # too few unlabelled: sensitivity alone decides
    decision = decide_replay(replaying(), POLICY, labels_only)
    assert decision.outcome == ADVANCE and "agreement not judged: 19 unlabelled case(s) < 20" in decision.reasons


@pytest.mark.parametrize("report, reason", [
    (ReplayReport(unlabelled=19, agreed=19, champion_version="6"), "too few replayed cases to judge the challenger"),
    (ReplayReport(), "no champion version is known"),
    (ReplayReport(champion_version="6", champion_error="ModelLoadError: registry down"),
     "no champion to compare with: ModelLoadError: registry down"),
])
def test_without_evidence_or_a_champion_the_replay_holds_at_zero(report, reason):
    state = replaying()
    decision = decide_replay(state, POLICY, report)
    assert (decision.outcome, decision.weight) == (HOLD, 0) and reason in decision.reason
    after = apply_decision(state, POLICY, decision, NOW, replay=report)
    assert (after.phase, after.status, after.weight) == (REPLAY, "running", 0)  # replayed again next tick


def test_decide_replay_only_judges_a_canary_in_its_replay_and_a_rejection_stops_it():
    traffic, _ = start_canary(None, "7", "6", POLICY, NOW)
    with pytest.raises(ValueError, match="not in its replay"):
        decide_replay(traffic, POLICY, GOOD)
    rejected = review(replaying(), "rejected", "alice", NOW)
    assert rejected.approval["by"] == "alice" and rejected.approval["decision"] == "rejected"
    with pytest.raises(UserError, match="not awaiting approval"):
        review(replaying(), "approved", "alice", NOW)


def test_replay_settings_are_read_once_from_the_environment():
    settings = CanarySettings.from_env({"CANARY_REPLAY_UPLOADS": "50", "CANARY_REPLAY_MIN_AGREEMENT": "0.8",
                                        "CANARY_REQUIRE_APPROVAL": "TRUE", "CANARY_REPLAY_MIN_POSITIVES": "3"})
    assert settings.replay and settings.replay_uploads == 50
    assert settings.policy.replay_min_agreement == 0.8 and settings.policy.require_approval
    assert settings.policy.replay_min_positives == 3 and settings.policy.replay_min_unlabelled == 20
    defaults = CanarySettings.from_env({})
    assert defaults.replay_uploads == 200 and defaults.policy.replay_min_agreement == 0.9
    assert not defaults.policy.require_approval and not CanarySettings.from_env({"CANARY_REPLAY": "false"}).replay
    for env, message in (({"CANARY_REPLAY_UPLOADS": "0"}, "CANARY_REPLAY_UPLOADS"),
                         ({"CANARY_REPLAY_MIN_AGREEMENT": "1.5"}, "replay_min_agreement"),
                         ({"CANARY_REQUIRE_APPROVAL": "maybe"}, "CANARY_REQUIRE_APPROVAL")):
        with pytest.raises(UserError, match=message):
            CanarySettings.from_env(env)


def test_a_state_saved_before_the_replay_existed_reads_as_in_traffic():
    state, _ = start_canary(None, "7", "6", POLICY, NOW)
    old = {k: v for k, v in state.to_json().items() if k not in ("phase", "replay", "approval")}
    assert CanaryState.from_json(old) == state


def test_the_controller_replays_until_it_can_judge_then_prepares_and_routes_the_first_step(storage):
    from shared.canary.controller import CanaryController, load_state, review_canary
    from tests.shared.canary.test_controller import RecordingTraffic

    too_few = ReplayReport(unlabelled=3, agreed=3, champion_version="6")
    reports = [too_few, GOOD]  # then too few again
    calls: list[str] = []

    def replay(state):
        calls.append(state.version)
        return reports.pop(0) if reports else too_few

    traffic = RecordingTraffic()
    controller = CanaryController(storage, POLICY, lambda state: HEALTHY, traffic, clock=lambda: NOW, replay=replay)
    started = controller.start("7", "6")
    assert started["outcome"] == HOLD and started["phase"] == REPLAY and started["weight"] == 0
    assert traffic.prepared == [] and traffic.weights == []  # holding: no revision, no split
    result = controller.tick()  # replayed again: now there is enough to judge
    assert result["outcome"] == HOLD and result["reason"] == "routed the first step of 10 %"
    assert calls == ["7", "7"] and traffic.prepared == ["7"] and traffic.weights == [10]
    state = load_state(storage)
    assert [h["outcome"] for h in state.history] == ["start", HOLD, ADVANCE, HOLD]
    assert state.replay["verdict"] == ADVANCE and state.replay["unlabelled"] == 100
    assert controller.tick()["outcome"] == ADVANCE and calls == ["7", "7"]  # the traffic steps, no more replays

    controller.start("8", "6")  # a new challenger, rejected while its replay still holds
    review_canary(storage, "rejected", "alice", now=NOW)
    assert controller.tick()["outcome"] == ROLLBACK and calls == ["7", "7", "8"]  # not replayed once rejected
    assert traffic.prepared == ["7"]

    without = CanaryController(storage, POLICY, lambda state: HEALTHY, RecordingTraffic(), clock=lambda: NOW)
    with_replay = CanaryController(storage, POLICY, lambda state: HEALTHY, traffic, clock=lambda: NOW,
                                   replay=lambda state: ReplayReport())
    with_replay.start("9", None)  # held: no champion to compare with
    assert load_state(storage).phase == REPLAY
    result = without.tick()  # CANARY_REPLAY turned off meanwhile: on to the traffic steps, revision made
    state = load_state(storage)
    assert result["phase"] == TRAFFIC and "not configured" in state.history[-2]["reason"]
    assert state.replay["verdict"] == ADVANCE and "not configured" in state.replay["reasons"][0]
    assert without.traffic.prepared == ["9"] and without.traffic.weights == [10]
