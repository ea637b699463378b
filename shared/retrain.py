"""Continuous training: count labels not yet used, launch one training job per new batch, never twice.

Items are the radiologists' labels (`feedback/<request_id>.json`) and new training objects (`raw-data/...`);
one object counts as one item. When the unused items reach `retrain_min_labels`, they form a batch whose id is
the hash of their sorted names. The state object `feedback/_state/retrain.json` records every batch and which
batch used each item; it is only ever replaced with a conditional write (If-Match on its ETag, If-None-Match
for the first write), so two retrain instances racing on the same labels cannot both reserve them: the loser
re-reads and finds the batch taken. A batch is reserved ("launching") before the backend is called and marked
"launched" after; a failed launch frees its items for the next event, and a reservation older than
`stale_after_s` (a process killed mid-launch) may be taken over. The batch's item list is written to
`feedback/_state/batches/<batch_id>.json`; the job reads it through `RETRAIN_BATCH_URI`.

Backends: `local` (a subprocess running the training command), `kubernetes` (a batch/v1 Job created through
the API server with the pod's service-account token), `github` (a `repository_dispatch` of type
`continuous-training`). When the job has registered its model it calls `emit_model_registered`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from shared.config import RETRAIN_BACKENDS as BACKENDS
from shared.config import RetrainConfig
from shared.errors import TriageError, UserError
from shared.events import (
    FEEDBACK_RECEIVED,
    OBJECT_CREATED,
    CloudEvent,
    Publisher,
    event_data,
    model_registered_event,
)
from shared.storage import Storage
from shared.timestamps import utc_iso

__all__ = [
    "BACKENDS",
    "Batch",
    "GitHubLauncher",
    "KubernetesLauncher",
    "LaunchError",
    "Launcher",
    "LocalLauncher",
    "RetrainConfig",
    "RetrainDecision",
    "StateConflict",
    "emit_model_registered",
    "item_from_event",
    "launcher_from_config",
    "maybe_launch",
    "training_job_manifest",
]

log = logging.getLogger(__name__)

FEEDBACK_BUCKET = "feedback"
RAW_BUCKET = "raw-data"
STATE_PREFIX = "_state/"
STATE_KEY = "_state/retrain.json"
BATCH_PREFIX = "_state/batches/"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class LaunchError(TriageError):
    """The backend did not start the training job: our side's fault, so 502 and the event is retried."""

    status = 502
    code = "training_launch_failed"


class StateConflict(TriageError):
    """The retrain state kept changing under us (many concurrent writers): 503, the event is retried."""

    status = 503
    code = "retrain_state_conflict"


@dataclass(frozen=True)
class Batch:
    """Items (as `bucket/key`) that one training job will use; `id` is the hash of their sorted names."""

    id: str
    items: tuple[str, ...]
    uri: str  # s3://feedback/_state/batches/<id>.json

    @classmethod
    def of(cls, items: Sequence[str]) -> Batch:
        ordered = tuple(sorted(items))
        batch_id = hashlib.sha256("\n".join(ordered).encode("utf-8")).hexdigest()[:20]
        return cls(batch_id, ordered, f"s3://{FEEDBACK_BUCKET}/{BATCH_PREFIX}{batch_id}.json")

    def job_env(self) -> dict[str, str]:
        return {"RETRAIN_BATCH_ID": self.id, "RETRAIN_BATCH_URI": self.uri, "RETRAIN_BATCH_SIZE": str(len(self.items))}


@dataclass(frozen=True)
class RetrainDecision:
    """What one call did: `waiting` (below the threshold), `launched` or `already_launched`."""

    status: str
    pending: int
    needed: int
    batch_id: str | None = None
    job: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "pending": self.pending,
            "needed": self.needed,
            "batch_id": self.batch_id,
            "job": self.job,
        }


class Launcher(Protocol):
    """Starts a training job for a batch and returns a reference to it (pid, Job name, dispatch)."""

    name: str

    def launch(self, batch: Batch) -> str: ...


# --- backends ----------------------------------------------------------------------------------------------------
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

    def _read(self, name: str) -> str:
        path = self.service_account_dir / name
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise LaunchError(f"kubernetes backend: cannot read {path} (not running in a pod?)") from exc

    def launch(self, batch: Batch) -> str:
        namespace = self.config.namespace or self._read("namespace")
        token = self._read("token")
        ca_file = self.service_account_dir / "ca.crt"
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file.is_file() else True
        manifest = training_job_manifest(batch, self.config, namespace)
        url = f"{self.config.kubernetes_api.rstrip('/')}/apis/batch/v1/namespaces/{namespace}/jobs"
        try:
            with httpx.Client(transport=self.transport, verify=verify, timeout=10.0) as client:
                response = client.post(url, json=manifest, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise LaunchError(f"kubernetes backend: API server unreachable ({type(exc).__name__})") from exc
        name = manifest["metadata"]["name"]
        if response.status_code == 409:  # the Job of this batch exists: an earlier launch got through
            return f"job/{namespace}/{name}"
        if not response.is_success:
            raise LaunchError(f"kubernetes backend: creating Job {name} answered {response.status_code}")
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


# --- state -------------------------------------------------------------------------------------------------------
def _now_iso(clock: Callable[[], float]) -> str:
    return utc_iso(datetime.fromtimestamp(clock(), UTC))


class RetrainState:
    """The state object, read with its ETag and replaced only if nobody changed it meanwhile."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def read(self) -> tuple[dict[str, Any], str | None]:
        state, etag = self.storage.get_json_versioned(FEEDBACK_BUCKET, STATE_KEY)
        state = state or {}
        state.setdefault("used", {})
        state.setdefault("batches", {})
        return state, etag

    def write(self, state: Mapping[str, Any], etag: str | None) -> bool:
        """Replace the state if it still has `etag` (create it if None); False when someone else wrote first."""
        return self.storage.put_json_if(FEEDBACK_BUCKET, STATE_KEY, state, etag)


def _blocking(batch: Mapping[str, Any] | None, now: float, stale_after_s: float) -> bool:
    """Whether a batch record holds its items: launched, or launching and not yet stale."""
    if not batch:
        return False
    if batch.get("status") == "launched":
        return True
    return batch.get("status") == "launching" and now - float(batch.get("reserved_at_s", 0)) < stale_after_s


MAX_CAS_ATTEMPTS = 8


def maybe_launch(
    storage: Storage,
    config: RetrainConfig,
    launcher: Launcher,
    *,
    new_item: str | None = None,
    clock: Callable[[], float] = time.time,
) -> RetrainDecision:
    """Count unused items; at the threshold reserve them as one batch (conditional write), launch, record.

    `new_item` (`bucket/key`) is the item the triggering event announced: it is counted even if a listing does
    not show it yet. The state is replaced with a conditional write (`Storage.put_json_if`).
    """
    client = storage.client
    state_store = RetrainState(storage)
    for _attempt in range(MAX_CAS_ATTEMPTS):
        state, etag = state_store.read()
        now = clock()
        items = {
            f"{FEEDBACK_BUCKET}/{key}" for key in storage.iter_keys(FEEDBACK_BUCKET) if not key.startswith(STATE_PREFIX)
        }
        items |= {f"{RAW_BUCKET}/{key}" for key in storage.iter_keys(RAW_BUCKET)}
        if new_item:
            items.add(new_item)
        batches: dict[str, Any] = state["batches"]
        used: dict[str, str] = state["used"]
        pending = [item for item in items if not _blocking(batches.get(used.get(item, "")), now, config.stale_after_s)]
        if len(pending) < config.min_labels:
            return RetrainDecision("waiting", len(pending), config.min_labels)
        batch = Batch.of(pending)
        record = batches.get(batch.id)
        if _blocking(record, now, config.stale_after_s):  # a guard: held items never form a batch again
            return RetrainDecision("already_launched", len(pending), config.min_labels, batch.id, record.get("job"))
        # Write the item list first: the job may start before we mark the batch launched.
        client.put_object(
            Bucket=FEEDBACK_BUCKET,
            Key=f"{BATCH_PREFIX}{batch.id}.json",
            ContentType="application/json",
            Body=json.dumps({"batch_id": batch.id, "items": list(batch.items)}).encode("utf-8"),
        )
        batches[batch.id] = {
            "status": "launching",
            "items": len(batch.items),
            "backend": launcher.name,
            "reserved_at": _now_iso(clock),
            "reserved_at_s": now,
        }
        used.update({item: batch.id for item in batch.items})
        if state_store.write(state, etag):
            break
        log.info("retrain state changed concurrently; re-reading")
    else:
        raise StateConflict(f"retrain state s3://{FEEDBACK_BUCKET}/{STATE_KEY} kept changing; retry later")

    try:
        job = launcher.launch(batch)
    except Exception as exc:
        _update_batch(state_store, batch.id, {"status": "failed", "error": str(exc)[:300]})
        if isinstance(exc, TriageError):
            raise
        raise LaunchError(f"{launcher.name} backend failed: {exc}") from exc
    _update_batch(state_store, batch.id, {"status": "launched", "job": job, "launched_at": _now_iso(clock)})
    log.info("launched training batch %s (%d items) via %s: %s", batch.id, len(batch.items), launcher.name, job)
    return RetrainDecision("launched", len(batch.items), config.min_labels, batch.id, job)


def _update_batch(state_store: RetrainState, batch_id: str, changes: Mapping[str, Any]) -> None:
    for _attempt in range(MAX_CAS_ATTEMPTS):
        state, etag = state_store.read()
        state["batches"].setdefault(batch_id, {}).update(changes)
        if state_store.write(state, etag):
            return
    raise StateConflict(f"cannot record batch {batch_id} in s3://{FEEDBACK_BUCKET}/{STATE_KEY}; retry later")


def item_from_event(event: CloudEvent) -> str | None:
    """The item (`bucket/key`) an event announces, or None when retraining does not care about it."""
    if event["type"] == FEEDBACK_RECEIVED:
        data = event_data(event, "request_id")
        return str(data.get("key") or f"{FEEDBACK_BUCKET}/{data['request_id']}.json")
    if event["type"] == OBJECT_CREATED and event.get("bucket") == RAW_BUCKET:
        data = event_data(event, "key")
        return f"{RAW_BUCKET}/{data['key']}"
    return None


def emit_model_registered(
    version: str | int, run_id: str | None, publisher: Publisher, *, batch_id: str | None = None
) -> None:
    """Announce a newly registered model version (the training job calls this after registering)."""
    extra = {"batch_id": batch_id} if batch_id else None
    publisher.publish(model_registered_event(version, run_id, extra=extra))
