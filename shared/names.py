"""Every name two places need: buckets, object keys, state keys, event types, the request-id pattern.

Change a bucket name, a key layout or an event type here and nowhere else (design §3, §4; docs/contracts.md).
"""

from __future__ import annotations

import re

__all__ = [
    "BUCKETS",
    "CLASS_NAMES",
    "IMAGE_CONTENT_TYPES",
    "POSITIVE",
    "CANARY_STATE_KEY",
    "DEAD_LETTER_BUCKET",
    "FEEDBACK_BUCKET",
    "FEEDBACK_RECEIVED",
    "INPUT_BUCKET",
    "MLFLOW_BUCKET",
    "MODEL_REGISTERED",
    "MONITOR_LABELS_KEY",
    "MONITOR_REPORT_KEY",
    "MONITOR_STATE_KEY",
    "NOTIFYING_BUCKETS",
    "OBJECT_CREATED",
    "PING",
    "PREDICTION_CREATED",
    "PROCESSED_BUCKET",
    "RAW_BUCKET",
    "REQUEST_ID",
    "RESULT_BUCKET",
    "RETRAIN_BATCH_PREFIX",
    "RETRAIN_STATE_KEY",
    "RETRAIN_STATE_PREFIX",
    "SOURCE_FEEDBACK",
    "SOURCE_INGEST",
    "SOURCE_RETRAIN",
    "feedback_key",
    "heatmap_key",
    "request_record_key",
    "result_key",
    "retrain_batch_key",
]

# --- buckets (design §3) -----------------------------------------------------------------------------------------
RAW_BUCKET = "raw-data"
PROCESSED_BUCKET = "processed"
INPUT_BUCKET = "inference-inputs"
RESULT_BUCKET = "inference-results"
FEEDBACK_BUCKET = "feedback"
DEAD_LETTER_BUCKET = "dead-letter"
MLFLOW_BUCKET = "mlflow"  # MLflow's artifact store in production (MinIO); not one of the functions' buckets
BUCKETS = (RAW_BUCKET, PROCESSED_BUCKET, INPUT_BUCKET, RESULT_BUCKET, FEEDBACK_BUCKET, DEAD_LETTER_BUCKET)
NOTIFYING_BUCKETS = (INPUT_BUCKET, RAW_BUCKET)  # an upload here starts work (minio-source → broker)

# --- what the model answers, and what an image upload may be ---------------------------------------------------
CLASS_NAMES = ("normal", "pneumonia")  # class 0, class 1 of the model's logits; also the labels reviewers give
POSITIVE = "pneumonia"
IMAGE_CONTENT_TYPES = frozenset({"image/png", "image/jpeg", "application/dicom", "application/octet-stream"})

# --- keys --------------------------------------------------------------------------------------------------------
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a request id is also a key segment: nothing else passes


def result_key(key: str) -> str:
    """Key in RESULT_BUCKET of ingest's result for INPUT_BUCKET/`key`."""
    return f"{key}.json"


def heatmap_key(key: str) -> str:
    """Key in RESULT_BUCKET of the heatmap overlay for INPUT_BUCKET/`key`."""
    return f"{key}.heatmap.png"


def request_record_key(request_id: str) -> str:
    """Key in RESULT_BUCKET of the record of one answered request (feedback, monitor and canary join on it)."""
    return f"requests/{request_id}.json"


def feedback_key(request_id: str) -> str:
    """Key in FEEDBACK_BUCKET of the label of one request."""
    return f"{request_id}.json"


# State of the event functions: canary and monitor in RESULT_BUCKET, retrain in FEEDBACK_BUCKET.
CANARY_STATE_KEY = "_canary/state.json"
MONITOR_STATE_KEY = "_monitor/state.json"
MONITOR_LABELS_KEY = "_monitor/labels.json"
MONITOR_REPORT_KEY = "_monitor/report.json"
RETRAIN_STATE_PREFIX = "_state/"  # in FEEDBACK_BUCKET: retrain's state, not labels
RETRAIN_STATE_KEY = f"{RETRAIN_STATE_PREFIX}retrain.json"
RETRAIN_BATCH_PREFIX = f"{RETRAIN_STATE_PREFIX}batches/"


def retrain_batch_key(batch_id: str) -> str:
    """Key in FEEDBACK_BUCKET of the item list of one training batch (the job reads it via RETRAIN_BATCH_URI)."""
    return f"{RETRAIN_BATCH_PREFIX}{batch_id}.json"


# --- events (design §4) ------------------------------------------------------------------------------------------
OBJECT_CREATED = "io.minio.object.created"
PREDICTION_CREATED = "triage.prediction.created"
FEEDBACK_RECEIVED = "triage.feedback.received"
MODEL_REGISTERED = "triage.model.registered"
PING = "dev.knative.sources.ping"
SOURCE_INGEST = "triage/ingest"
SOURCE_FEEDBACK = "triage/feedback"
SOURCE_RETRAIN = "triage/retrain"
