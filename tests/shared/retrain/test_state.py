"""Continuous training against a real local S3 server: threshold, one launch per batch, races, stale reservations."""

from __future__ import annotations

import threading

import pytest

from shared.config import RetrainConfig, Settings
from shared.events import feedback_received_event, object_created_event
from shared.retrain import LaunchError, LocalLauncher, item_from_event, maybe_launch
from shared.storage import Storage


class RecordingRunner:
    """Stands in for the subprocess: records each training command it was asked to start."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, command, env) -> str:
        with self.lock:
            if self.fail:
                raise LaunchError("runner could not start")
            self.calls.append((list(command), dict(env)))
            return f"pid:{1000 + len(self.calls)}"


def add_labels(storage: Storage, *request_ids: str) -> None:
    for request_id in request_ids:
        storage.put_json("feedback", f"{request_id}.json", {"request_id": request_id, "label": "normal"})


def local(min_labels: int, runner: RecordingRunner) -> tuple[RetrainConfig, LocalLauncher]:
    config = RetrainConfig(backend="local", min_labels=min_labels, train_command=("triage", "train", "--data", "d"))
    return config, LocalLauncher(config, runner=runner)


def test_launches_once_when_the_threshold_is_passed_and_never_twice_for_the_same_labels(storage):
    runner = RecordingRunner()
    config, launcher = local(3, runner)
    add_labels(storage, "r1", "r2")
    assert maybe_launch(storage, config, launcher).status == "waiting"
    assert runner.calls == []

    add_labels(storage, "r3")
    decision = maybe_launch(storage, config, launcher, new_item="feedback/r3.json")
    assert (decision.status, decision.pending) == ("launched", 3)
    for _ in range(3):  # redelivered events, or the next trigger without new labels
        assert maybe_launch(storage, config, launcher, new_item="feedback/r3.json").status == "waiting"
    assert len(runner.calls) == 1

    command, env = runner.calls[0]
    assert command[1:] == ["-m", "triage.cli", "train", "--data", "d"]  # `triage` runs as a module of this Python
    assert env["RETRAIN_BATCH_ID"] == decision.batch_id
    batch = storage.get_json("triage-state", f"retrain/batches/{decision.batch_id}.json")
    assert batch["items"] == ["feedback/r1.json", "feedback/r2.json", "feedback/r3.json"]

    add_labels(storage, "r4", "r5")  # two new labels: below the threshold again
    assert maybe_launch(storage, config, launcher).status == "waiting"
    add_labels(storage, "r6")
    assert maybe_launch(storage, config, launcher).status == "launched"
    assert len(runner.calls) == 2


def test_new_raw_data_objects_count_and_a_just_announced_label_counts_before_it_is_listed(storage):
    runner = RecordingRunner()
    config, launcher = local(2, runner)
    storage.put_bytes("raw-data", "sets/new.npz", b"npz")
    decision = maybe_launch(storage, config, launcher, new_item="feedback/in-flight.json")
    assert decision.status == "launched"
    assert storage.get_json("triage-state", f"retrain/batches/{decision.batch_id}.json")["items"] == [
        "feedback/in-flight.json",
        "raw-data/sets/new.npz",
    ]


def test_concurrent_triggers_launch_exactly_once(storage):
    runner = RecordingRunner()
    config, launcher = local(4, runner)
    add_labels(storage, "a", "b", "c", "d")
    decisions: list[str] = []

    def trigger() -> None:
        own = Storage.from_settings(Settings(s3_endpoint_url=storage.client.meta.endpoint_url))  # one per instance
        decisions.append(maybe_launch(own, config, launcher).status)

    threads = [threading.Thread(target=trigger) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(runner.calls) == 1
    assert decisions.count("launched") == 1


def test_a_failed_launch_is_retried_by_the_next_event_and_then_runs_once(storage):
    config, failing = local(1, RecordingRunner(fail=True))
    add_labels(storage, "r1")
    with pytest.raises(LaunchError) as excinfo:
        maybe_launch(storage, config, failing)
    assert excinfo.value.status == 502

    runner = RecordingRunner()
    _, working = local(1, runner)
    assert maybe_launch(storage, config, working).status == "launched"
    assert maybe_launch(storage, config, working).status == "waiting"
    assert len(runner.calls) == 1


def test_a_reservation_left_by_a_killed_process_is_taken_over_only_when_stale(storage):
    runner = RecordingRunner()
    config = RetrainConfig(min_labels=1, stale_after_s=60)
    launcher = LocalLauncher(config, runner=runner)
    add_labels(storage, "r1")

    class Crash(Exception):
        pass

    def crash(command, env):
        raise Crash  # the process dies between reserving and launching

    with pytest.raises(LaunchError):
        maybe_launch(storage, config, LocalLauncher(config, runner=crash), clock=lambda: 1000.0)
    # A failure we saw is released at once; a silent death leaves "launching" behind:
    state = storage.get_json("triage-state", "retrain/state.json")
    [batch_id] = state["batches"]
    state["batches"][batch_id]["status"] = "launching"
    storage.put_json("triage-state", "retrain/state.json", state)

    held = maybe_launch(storage, config, launcher, clock=lambda: 1030.0)
    assert (held.status, held.pending, runner.calls) == ("waiting", 0, [])  # its labels are still reserved
    assert maybe_launch(storage, config, launcher, clock=lambda: 1100.0).status == "launched"
    assert len(runner.calls) == 1


def test_item_from_event_picks_feedback_and_raw_data_only():
    feedback = feedback_received_event(
        {"request_id": "r9", "label": "normal", "reviewer": "ann", "time": "t", "key": "feedback/r9.json"}
    )
    assert item_from_event(feedback) == "feedback/r9.json"
    assert item_from_event(object_created_event("raw-data", "x/y.png", "e", 1)) == "raw-data/x/y.png"
    assert item_from_event(object_created_event("inference-inputs", "a.png", "e", 1)) is None
