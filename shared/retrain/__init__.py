"""Continuous training (design §2): launch one training job per batch of new labels and raw data, never twice.

`state` counts the unused items and reserves a batch in S3 (compare-and-swap); `launchers` start the job
(`local`, `kubernetes`, `github`); `batch` names a batch. The settings are `shared.config.RetrainConfig`. The
training job announces its registered model with `training_jobs.registry.emit_model_registered`.
"""

from __future__ import annotations

from shared.retrain.batch import Batch
from shared.retrain.launchers import (
    GitHubLauncher,
    KubernetesLauncher,
    Launcher,
    LaunchError,
    LocalLauncher,
    launcher_from_config,
    training_job_manifest,
)
from shared.retrain.state import RetrainDecision, RetrainStateConflict, item_from_event, maybe_launch

__all__ = [
    "Batch",
    "GitHubLauncher",
    "KubernetesLauncher",
    "LaunchError",
    "Launcher",
    "LocalLauncher",
    "RetrainDecision",
    "RetrainStateConflict",
    "item_from_event",
    "launcher_from_config",
    "maybe_launch",
    "training_job_manifest",
]
