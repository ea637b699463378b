"""The canary's decision core: steps, holds, rollbacks on each breach, policies and the persisted state."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.canary.policy import (
    ADVANCE,
    HOLD,
    PROMOTE,
    ROLLBACK,
    CanaryState,
    FeedbackStats,
    Observation,
    RevisionStats,
    apply_decision,
    decide,
    start_canary,
)
from shared.config import CanaryPolicy, CanarySettings
from shared.errors import UserError

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
POLICY = CanaryPolicy(steps=(10, 25, 50, 100), max_error_rate=0.02, max_p99_s=1.0, max_p99_ratio=2.0,
                      min_requests=20, min_feedback=10, max_accuracy_drop=0.05)
HEALTHY = Observation(champion=RevisionStats(200, 1, 0.10), challenger=RevisionStats(50, 0, 0.12))


def started(policy: CanaryPolicy = POLICY) -> CanaryState:
    state, _ = start_canary(None, "7", "6", policy, NOW)
    return state


def test_a_healthy_challenger_advances_through_every_step_then_is_promoted():
    state = started()
    assert (state.weight, state.step, state.status) == (10, 0, "running")
    weights = []
    for minute in range(1, 10):
        decision = decide(state, POLICY, HEALTHY, NOW)
        state = apply_decision(state, POLICY, decision, NOW + timedelta(minutes=minute))
        weights.append((decision.outcome, decision.weight))
        if state.status != "running":
            break
    assert weights == [(ADVANCE, 25), (ADVANCE, 50), (ADVANCE, 100), (PROMOTE, 100)]
    assert state.status == "promoted" and state.weight == 100
    assert [h["outcome"] for h in state.history] == ["start", ADVANCE, ADVANCE, ADVANCE, PROMOTE]
    with pytest.raises(ValueError, match="promoted, not running"):
        decide(state, POLICY, HEALTHY, NOW)


def test_too_few_requests_holds_at_the_current_weight():
    state = started()
    quiet = Observation(RevisionStats(200, 0, 0.1), RevisionStats(19, 0, 0.1))
    decision = decide(state, POLICY, quiet, NOW)
    assert (decision.outcome, decision.weight) == (HOLD, 10) and "19 < 20 requests" in decision.reason
    assert apply_decision(state, POLICY, decision, NOW).step == 0


@pytest.mark.parametrize("challenger, feedback, reason", [
    (RevisionStats(100, 3, 0.1), None, "error rate 0.030 > 0.02"),
    (RevisionStats(100, 0, 1.5), None, "p99 1.500 s > 1.0 s"),
    (RevisionStats(100, 0, 0.25), None, "p99 0.250 s > 2.0 x champion's 0.100 s"),
    (RevisionStats(100, 0, 0.1), (FeedbackStats(40, 38), FeedbackStats(10, 8)), "accuracy 0.800 < champion's 0.950"),
    (RevisionStats(5, 0, None), (FeedbackStats(40, 38), FeedbackStats(12, 6)), "accuracy 0.500 < champion's"),
])
def test_any_breach_rolls_back_to_zero(challenger, feedback, reason):
    state = apply_decision(started(), POLICY, decide(started(), POLICY, HEALTHY, NOW), NOW)  # at 25 %
    champion_fb, challenger_fb = feedback or (FeedbackStats(), FeedbackStats())
    obs = Observation(RevisionStats(300, 1, 0.1), challenger, champion_fb, challenger_fb)
    decision = decide(state, POLICY, obs, NOW)
    assert (decision.outcome, decision.weight) == (ROLLBACK, 0)
    assert reason in decision.reason
    after = apply_decision(state, POLICY, decision, NOW)
    assert after.status == "rolled_back" and after.weight == 0


def test_few_labels_and_an_absolute_accuracy_floor():
    state = started()
    few = Observation(HEALTHY.champion, HEALTHY.challenger, FeedbackStats(40, 40), FeedbackStats(9, 0))
    assert decide(state, POLICY, few, NOW).outcome == ADVANCE  # 9 labels < min_feedback: not judged yet
    floor = CanaryPolicy(min_feedback=10, min_accuracy=0.9, max_accuracy_drop=1.0)
    low = Observation(HEALTHY.champion, HEALTHY.challenger, FeedbackStats(), FeedbackStats(10, 8))
    assert decide(started(floor), floor, low, NOW).reason == "feedback accuracy 0.800 < 0.9"


def test_starting_is_idempotent_on_the_version():
    state = started()
    again, created = start_canary(state, "7", "6", POLICY, NOW + timedelta(hours=1))
    assert again is state and created is False
    newer, created = start_canary(state, "8", "6", POLICY, NOW)
    assert created and newer.version == "8" and newer.weight == 10 and newer.history[0]["outcome"] == "start"


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": (10, 50)}, "ending at 100"),
    ({"steps": (50, 25, 100)}, "strictly increasing"),
    ({"steps": (0, 100)}, "1..100"),
    ({"max_error_rate": 1.5}, "max_error_rate"),
    ({"max_p99_s": 0}, "max_p99_s"),
    ({"min_requests": 0}, "min_requests"),
])
def test_invalid_policies_name_the_field(kwargs, message):
    with pytest.raises(UserError, match=message):
        CanaryPolicy(**kwargs)


def test_settings_from_env_and_state_round_trip():
    settings = CanarySettings.from_env({"CANARY_STEPS": "5,50,100", "CANARY_MAX_P99_S": "none",
                                        "CANARY_MIN_REQUESTS": "3", "KNATIVE_NAMESPACE": "ns"})
    assert settings.policy.steps == (5, 50, 100) and settings.policy.max_p99_s is None
    assert settings.policy.min_requests == 3 and settings.namespace == "ns"
    assert settings.prometheus_url == "http://prometheus.ns.svc.cluster.local:9090"
    local = CanarySettings.from_env({"CANARY_GATEWAY_URL": "http://127.0.0.1:8080"})
    assert local.prometheus_url is None and local.model_uri == "models:/xray-vit/{version}"  # the gateway's metrics
    assert CanarySettings.from_env({"CANARY_MODEL_URI": ""}).model_uri is None  # canary the running revisions as is
    with pytest.raises(UserError, match="steps"):
        CanarySettings.from_env({"CANARY_STEPS": "ten,100"})
    state = started()
    assert CanaryState.from_json(json.loads(json.dumps(state.to_json()))) == state
    with pytest.raises(UserError, match="canary state: invalid"):
        CanaryState.from_json({"version": "1"})
