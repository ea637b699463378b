"""The training backends: `local` (a subprocess running the training command), `kubernetes` (a batch/v1 Job
created through the API server with the pod's service-account token), `github` (a `repository_dispatch` of type
`continuous-training`). Each starts one job for a batch and returns a reference to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx

from shared.config import RetrainConfig
from shared.errors import TriageError, UserError
from shared.kubernetes import SERVICE_ACCOUNT_DIR, KubernetesAPI, KubernetesError
from shared.retrain.batch import Batch

__all__ = [
    "GitHubLauncher",
    "KubernetesLauncher",
    "LaunchError",
    "Launcher",
    "LocalLauncher",
    "Runner",
    "detached_runner",
    "launcher_from_config",
    "training_job_manifest",
]


class LaunchError(TriageError):
    """The backend did not start the training job: our side's fault, so 502 and the event is retried."""

    status = 502
    code = "training_launch_failed"


class Launcher(Protocol):
    """Starts a training job for a batch and returns a reference to it (pid, Job name, dispatch)."""

    name: str

    def launch(self, batch: Batch) -> str: ...


Runner = Callable[[Sequence[str], Mapping[str, str]], str]


def detached_runner(command: Sequence[str], env: Mapping[str, str]) -> str:
    """Start the training command in its own session (it outlives this request) and return its pid."""
    try:
        process = subprocess.Popen(  # noqa: S603 - the command comes from our own configuration
            list(command), env={**os.environ, **env}, stdin=subprocess.DEVNULL, start_new_session=True
        )
    except OSError as exc:
        raise LaunchError(f"cannot start the training command {command[0]!r}: {exc}") from exc
    return f"pid:{process.pid}"


class LocalLauncher:
    """Runs the training command (`triage train ...`) as a local subprocess."""

    name = "local"

    def __init__(self, config: RetrainConfig, *, runner: Runner = detached_runner) -> None:
        command = list(config.train_command)
        if command and command[0] == "triage":  # the console script may not be on PATH; the module always is
            command = [sys.executable, "-m", "triage.cli", *command[1:]]
        self.command = command
        self.env = dict(config.job_env)
        self.runner = runner

    def launch(self, batch: Batch) -> str:
        return self.runner(self.command, {**self.env, **batch.job_env()})


def training_job_manifest(batch: Batch, config: RetrainConfig, namespace: str) -> dict[str, Any]:
    """A batch/v1 Job running the training image on one batch; its name is derived from the batch id."""
    labels = {
        "app.kubernetes.io/name": "xray-triage",
        "app.kubernetes.io/component": "training",
        "triage.io/batch-id": batch.id,
    }
    env = [{"name": name, "value": value} for name, value in sorted({**config.job_env, **batch.job_env()}.items())]
    container: dict[str, Any] = {
        "name": "train",
        "image": config.training_image,
        "command": list(config.train_command),
        "env": env,
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
    }
    if config.env_secret:
        container["envFrom"] = [{"secretRef": {"name": config.env_secret, "optional": True}}]
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if config.service_account:
        pod_spec["serviceAccountName"] = config.service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"retrain-{batch.id}", "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": 4 * 3600,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


class KubernetesLauncher:
    """Creates the training Job through the API server, authenticated with the pod's service-account token."""

    name = "kubernetes"

    def __init__(
        self,
        config: RetrainConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    ) -> None:
        self.config = config
        self.service_account_dir = service_account_dir
        self.transport = transport

    def launch(self, batch: Batch) -> str:
        try:  # read at each launch: the function starts (and answers /healthz) outside a pod too
            api = KubernetesAPI.in_cluster(self.config.kubernetes_api, service_account_dir=self.service_account_dir,
                                           transport=self.transport, timeout_s=10.0)
        except KubernetesError as exc:
            raise LaunchError(f"kubernetes backend: {exc.message}") from exc
        namespace = self.config.namespace or api.namespace
        if not namespace:
            raise LaunchError("kubernetes backend: no namespace (set TRAINING_NAMESPACE, or run in a pod)")
        manifest = training_job_manifest(batch, self.config, namespace)
        name = manifest["metadata"]["name"]
        with api:
            try:
                api.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", json=manifest)
            except KubernetesError as exc:
                if exc.status_code == 409:  # the Job of this batch exists: an earlier launch got through
                    return f"job/{namespace}/{name}"
                if exc.status_code is None:
                    unreachable = type(exc.__cause__).__name__
                    raise LaunchError(f"kubernetes backend: API server unreachable ({unreachable})") from exc
                raise LaunchError(f"kubernetes backend: creating Job {name} answered {exc.status_code}") from exc
        return f"job/{namespace}/{name}"


class GitHubLauncher:
    """Sends a `repository_dispatch` of type `continuous-training` (the workflow trains and registers)."""

    name = "github"
    event_type = "continuous-training"

    def __init__(self, config: RetrainConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        if not config.github_repository or "/" not in config.github_repository:
            raise UserError("github backend: GITHUB_REPOSITORY must be set to owner/name")
        if not config.github_token:
            raise UserError("github backend: GITHUB_TOKEN must be set")
        self.config = config
        self.transport = transport

    def launch(self, batch: Batch) -> str:
        url = f"{self.config.github_api.rstrip('/')}/repos/{self.config.github_repository}/dispatches"
        payload = {
            "event_type": self.event_type,
            "client_payload": {"batch_id": batch.id, "batch_uri": batch.uri, "items": len(batch.items)},
        }
        headers = {
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {self.config.github_token}",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        try:
            with httpx.Client(transport=self.transport, timeout=10.0) as client:
                response = client.post(url, json=payload, headers=headers)
        except httpx.HTTPError as exc:
            raise LaunchError(f"github backend: api unreachable ({type(exc).__name__})") from exc
        if response.status_code != 204:
            raise LaunchError(
                f"github backend: dispatch to {self.config.github_repository} answered {response.status_code}"
            )
        return f"dispatch/{self.config.github_repository}/{batch.id}"


def launcher_from_config(config: RetrainConfig, *, transport: httpx.BaseTransport | None = None) -> Launcher:
    """The backend named by `config.backend`."""
    if config.backend == "kubernetes":
        return KubernetesLauncher(config, transport=transport)
    if config.backend == "github":
        return GitHubLauncher(config, transport=transport)
    return LocalLauncher(config)
