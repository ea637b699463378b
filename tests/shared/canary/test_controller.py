"""The canary controller with its state in S3 (moto): start, ticks, promotion retries, one decision at a time."""

from __future__ import annotations

import threading

import pytest

from shared.canary.controller import CanaryController, load_state
from shared.canary.errors import CanaryError
from shared.canary.policy import ADVANCE, HOLD, PROMOTE
from shared.config import CanaryPolicy
from tests.shared.canary.test_policy import HEALTHY, NOW


class RecordingTraffic:
    def __init__(self) -> None:
        self.weights: list[int] = []
        self.prepared: list[str] = []

    def prepare(self, version):
        self.prepared.append(version)

    def revisions(self):
        return {"predict": {"champion": "champion", "challenger": "challenger"}}

    def set_weight(self, weight, revisions, *, promote=False):
        self.weights.append(weight)


def test_controller_keeps_state_in_s3_and_a_redelivered_start_changes_nothing(storage):
    traffic, promoted = RecordingTraffic(), []
    controller = CanaryController(storage, CanaryPolicy(steps=(50, 100), min_requests=1), lambda state: HEALTHY,
                                  traffic, promote=promoted.append, clock=lambda: NOW)
    assert controller.tick() == {"status": "idle", "version": None}
    first = controller.start("7", "6")
    assert first["status"] == "started" and traffic.weights == [50] and traffic.prepared == ["7"]
    assert controller.start("7")["status"] == "unchanged" and traffic.weights == [50] and traffic.prepared == ["7"]
    assert controller.tick()["outcome"] == ADVANCE and traffic.weights == [50, 100]
    assert controller.tick()["outcome"] == PROMOTE and promoted == ["7"]
    assert controller.tick()["status"] == "idle"
    saved = load_state(storage)
    assert saved.status == "promoted" and [h["outcome"] for h in saved.history] == ["start", HOLD, ADVANCE, PROMOTE]


def test_a_failed_registry_promotion_is_retried_on_the_next_tick(storage):
    traffic, calls = RecordingTraffic(), []

    def flaky_promote(version):
        calls.append(version)
        if len(calls) == 1:
            raise ConnectionError("mlflow down")

    controller = CanaryController(storage, CanaryPolicy(steps=(100,), min_requests=1), lambda state: HEALTHY,
                                  traffic, promote=flaky_promote, clock=lambda: NOW)
    controller.start("7", "6")
    with pytest.raises(CanaryError, match="cannot move champion to 7: ConnectionError"):
        controller.tick()
    assert load_state(storage).status == "running"
    assert controller.tick()["status"] == "promoted" and calls == ["7", "7"]


def test_a_ping_during_a_slow_decision_is_skipped_not_run_alongside(storage):
    entered, release = threading.Event(), threading.Event()

    def slow_observe(state):
        entered.set()
        assert release.wait(10)
        return HEALTHY

    controller = CanaryController(storage, CanaryPolicy(steps=(50, 100), min_requests=1), slow_observe,
                                  RecordingTraffic(), clock=lambda: NOW)
    controller.start("7", "6")
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(controller.tick()))
    worker.start()
    assert entered.wait(10)
    assert controller.tick() == {"status": "busy"}  # the state and the metric deltas stay one decision's
    release.set()
    worker.join(10)
    assert first["outcome"] == ADVANCE and load_state(storage).weight == 100
