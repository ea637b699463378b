"""Settings of one deployable, read once from the environment into a frozen object and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

BUCKETS = ("raw-data", "processed", "inference-inputs", "inference-results", "feedback", "dead-letter")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from exc


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _float(env, name, default)
    if value != int(value):
        raise ValueError(f"environment variable {name}={value!r} is not a whole number")
    return int(value)


@dataclass(frozen=True)
class Settings:
    """Every environment variable the functions and the local stack read, in one place."""

    # S3 (moto server locally, MinIO in production); credentials default to MinIO's.
    s3_endpoint_url: str | None = None
    aws_access_key_id: str = "minioadmin"
    aws_secret_access_key: str = field(default="minioadmin", repr=False)
    aws_region: str = "us-east-1"
    # Model: a local path, s3://bucket/prefix/, or models:/xray-vit@champion.
    model_uri: str | None = None
    model_cache_dir: Path = PROJECT_ROOT / ".cache" / "models"
    model_variant: str = "model.onnx"  # or model.int8.onnx
    mlflow_tracking_uri: str | None = None
    # Events: K_SINK is where a function posts CloudEvents (Knative's SinkBinding sets it).
    k_sink: str | None = None
    # Security: the webhook token of the MinIO adapter and the reviewers' tokens ("name:token,name2:token2").
    webhook_token: str | None = field(default=None, repr=False)
    reviewer_tokens: str | None = field(default=None, repr=False)
    # Limits.
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    url_fetch_timeout_s: float = 5.0
    # Networks a {"url"} input may point into despite the SSRF guard ("127.0.0.1/32,::1"): local stack and tests only.
    url_allow_networks: str = ""
    # ONNX Runtime intra-op threads: 1 keeps one request per core predictable under concurrency.
    ort_intra_op_threads: int = 1
    # Retraining.
    retrain_min_labels: int = 50
    retrain_backend: str = "local"  # local | kubernetes | github
    # Set by retrain on the training job it launches: which batch of labels the job trains on.
    retrain_batch_id: str | None = None
    retrain_batch_uri: str | None = None  # s3://feedback/_state/batches/<id>.json: the labels to train on
    # Revision label this process serves (the gateway / Knative route splits traffic between revisions).
    revision: str = "champion"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            s3_endpoint_url=env.get("S3_ENDPOINT_URL") or None,
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID", "minioadmin"),
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", "minioadmin"),
            aws_region=env.get("AWS_REGION", "us-east-1"),
            model_uri=env.get("MODEL_URI") or None,
            model_cache_dir=Path(env.get("MODEL_CACHE_DIR") or PROJECT_ROOT / ".cache" / "models"),
            model_variant=env.get("MODEL_VARIANT", "model.onnx"),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            k_sink=env.get("K_SINK") or None,
            webhook_token=env.get("WEBHOOK_TOKEN") or None,
            reviewer_tokens=env.get("REVIEWER_TOKENS") or None,
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 20 * 1024 * 1024),
            max_pixels=_int(env, "MAX_PIXELS", 50_000_000),
            url_fetch_timeout_s=_float(env, "URL_FETCH_TIMEOUT_S", 5.0),
            url_allow_networks=env.get("URL_ALLOW_NETWORKS", ""),
            ort_intra_op_threads=_int(env, "ORT_INTRA_OP_THREADS", 1),
            retrain_min_labels=_int(env, "RETRAIN_MIN_LABELS", 50),
            retrain_backend=env.get("RETRAIN_BACKEND", "local"),
            retrain_batch_id=env.get("RETRAIN_BATCH_ID") or None,
            retrain_batch_uri=env.get("RETRAIN_BATCH_URI") or None,
            revision=env.get("REVISION", "champion"),
        )


def default_tracking_uri() -> str:
    """MLflow tracking URI: $MLFLOW_TRACKING_URI, else a local store inside the project's working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlruns.db'}"
