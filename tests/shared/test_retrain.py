"""Continuous training against a real local S3 server: threshold, one launch per batch, the three backends."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from shared.errors import UserError
from shared.events import (
    MODEL_REGISTERED,
    EventPublisher,
    event_from_http,
    feedback_received_event,
    object_created_event,
)
from shared.retrain import (
    Batch,
    GitHubLauncher,
    KubernetesLauncher,
    LaunchError,
    LocalLauncher,
    RetrainConfig,
    emit_model_registered,
    item_from_event,
    maybe_launch,
)
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
    batch = storage.get_json("feedback", f"_state/batches/{decision.batch_id}.json")
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
    assert storage.get_json("feedback", f"_state/batches/{decision.batch_id}.json")["items"] == [
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
    state = storage.get_json("feedback", "_state/retrain.json")
    [batch_id] = state["batches"]
    state["batches"][batch_id]["status"] = "launching"
    storage.put_json("feedback", "_state/retrain.json", state)

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


def service_account(tmp_path: Path) -> Path:
    directory = tmp_path / "sa"
    directory.mkdir()
    (directory / "token").write_text("sa-token\n")
    (directory / "namespace").write_text("triage\n")
    return directory


def test_kubernetes_backend_creates_a_valid_training_job(tmp_path):
    requests: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(201, json=json.loads(request.content))

    config = RetrainConfig(
        backend="kubernetes",
        training_image="registry.local/train:1",
        train_command=("triage", "train", "--data", "s3://processed/"),
        job_env={"S3_ENDPOINT_URL": "http://minio:9000"},
    )
    launcher = KubernetesLauncher(
        config, transport=httpx.MockTransport(api), service_account_dir=service_account(tmp_path)
    )
    batch = Batch.of(["feedback/b.json", "feedback/a.json"])
    job = launcher.launch(batch)

    [request] = requests
    assert request.method == "POST"
    assert request.url == "https://kubernetes.default.svc/apis/batch/v1/namespaces/triage/jobs"
    assert request.headers["Authorization"] == "Bearer sa-token"
    manifest = json.loads(request.content)
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert manifest["metadata"]["name"] == f"retrain-{batch.id}" and job.endswith(manifest["metadata"]["name"])
    assert len(manifest["metadata"]["name"]) <= 63
    pod = manifest["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["image"] == "registry.local/train:1"
    assert container["command"] == ["triage", "train", "--data", "s3://processed/"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["RETRAIN_BATCH_ID"] == batch.id and env["S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["RETRAIN_BATCH_URI"] == f"s3://feedback/_state/batches/{batch.id}.json"


def test_kubernetes_backend_treats_an_existing_job_as_launched_and_other_errors_as_failures(tmp_path):
    directory = service_account(tmp_path)
    batch = Batch.of(["feedback/a.json"])
    exists = KubernetesLauncher(
        RetrainConfig(), service_account_dir=directory, transport=httpx.MockTransport(lambda r: httpx.Response(409))
    )
    assert exists.launch(batch).endswith(f"retrain-{batch.id}")
    forbidden = KubernetesLauncher(
        RetrainConfig(), service_account_dir=directory, transport=httpx.MockTransport(lambda r: httpx.Response(403))
    )
    with pytest.raises(LaunchError, match="403"):
        forbidden.launch(batch)
    with pytest.raises(LaunchError, match="not running in a pod"):
        KubernetesLauncher(RetrainConfig(), service_account_dir=tmp_path / "none").launch(batch)


def test_github_backend_sends_the_continuous_training_dispatch():
    requests: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(204)

    config = RetrainConfig(backend="github", github_repository="clinic/xray-triage", github_token="ghp_x")
    batch = Batch.of(["feedback/a.json", "raw-data/b.npz"])
    GitHubLauncher(config, transport=httpx.MockTransport(api)).launch(batch)

    [request] = requests
    assert request.url == "https://api.github.com/repos/clinic/xray-triage/dispatches"
    assert request.headers["Authorization"] == "Bearer ghp_x"
    assert request.headers["Accept"] == "application/vnd.github+json"
    assert json.loads(request.content) == {
        "event_type": "continuous-training",
        "client_payload": {"batch_id": batch.id, "batch_uri": batch.uri, "items": 2},
    }
    failing = GitHubLauncher(config, transport=httpx.MockTransport(lambda r: httpx.Response(404)))
    with pytest.raises(LaunchError, match="404"):
        failing.launch(batch)
    with pytest.raises(UserError, match="GITHUB_TOKEN"):
        GitHubLauncher(RetrainConfig(backend="github", github_repository="a/b"))


def test_config_rejects_an_unknown_backend_and_reads_the_environment():
    with pytest.raises(UserError, match="RETRAIN_BACKEND"):
        RetrainConfig(backend="slurm")
    config = RetrainConfig.from_env(
        Settings(retrain_backend="github", retrain_min_labels=5, k_sink="http://broker/"),
        {"GITHUB_REPOSITORY": "a/b", "GITHUB_TOKEN": "ghp_secret", "TRAIN_COMMAND": "triage train --data x.npz"},
    )
    assert (config.backend, config.min_labels, config.github_repository) == ("github", 5, "a/b")
    assert config.train_command == ("triage", "train", "--data", "x.npz")
    assert config.job_env == {"K_SINK": "http://broker/"}
    assert "ghp_secret" not in repr(config)


def test_emit_model_registered_publishes_the_canary_trigger():
    received = []
    publisher = EventPublisher(
        "http://broker.local/",
        transport=httpx.MockTransport(
            lambda r: (received.append(event_from_http(dict(r.headers), r.content)), httpx.Response(202))[1]
        ),
    )
    emit_model_registered(7, "run-abc", publisher, batch_id="b1")
    [event] = received
    assert event["type"] == MODEL_REGISTERED and event["source"] == "triage/retrain"
    assert event.get_data() == {"name": "xray-vit", "version": "7", "run_id": "run-abc", "batch_id": "b1"}
