"""The training backends: a Kubernetes Job through the API server, a GitHub dispatch; and their settings."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from shared.config import RetrainConfig, Settings
from shared.errors import UserError
from shared.retrain import Batch, GitHubLauncher, KubernetesLauncher, LaunchError


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
    assert env["RETRAIN_BATCH_URI"] == f"s3://triage-state/retrain/batches/{batch.id}.json"


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
