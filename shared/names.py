"""Every name two places need: buckets, object keys, state keys, event types, the request-id pattern.

Change a bucket name, a key layout or an event type here and nowhere else (design §3, §4; docs/contracts.md).
The system's own state (request records, monitor, canary and retrain state) lives in STATE_BUCKET, which no
input key maps into: a result for `inference-inputs/<key>` is `inference-results/<key>.json` whatever `<key>` is.
Logs name an object by `key_ref` (a short keyed hash), never by its key: hospitals name files after patients.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import secrets

__all__ = [
    "AE_TITLE",
    "API_TOKENS_KEY",
    "BUCKETS",
    "CLASS_NAMES",
    "IMAGE_CONTENT_TYPES",
    "POSITIVE",
    "CANARY_STATE_KEY",
    "DEAD_LETTER_BUCKET",
    "DICOM_INPUT_PREFIX",
    "FEEDBACK_BUCKET",
    "FEEDBACK_RECEIVED",
    "HEATMAP_REQUESTED",
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
    "SOURCE_FEEDBACK",
    "SOURCE_INGEST",
    "SOURCE_RETRAIN",
    "STATE_BUCKET",
    "dicom_instance_key",
    "feedback_key",
    "feedback_request_id",
    "heatmap_key",
    "key_ref",
    "request_batch_key",
    "request_batch_of",
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
STATE_BUCKET = "triage-state"  # request records, monitor / canary / retrain state: never written for an input key
MLFLOW_BUCKET = "mlflow"  # MLflow's artifact store in production (MinIO); not one of the functions' buckets
BUCKETS = (
    RAW_BUCKET, PROCESSED_BUCKET, INPUT_BUCKET, RESULT_BUCKET, FEEDBACK_BUCKET, DEAD_LETTER_BUCKET, STATE_BUCKET,
)
NOTIFYING_BUCKETS = (INPUT_BUCKET, RAW_BUCKET)  # an upload here starts work (minio-source → broker)

# --- what the model answers, and what an image upload may be ---------------------------------------------------
CLASS_NAMES = ("normal", "pneumonia")  # class 0, class 1 of the model's logits; also the labels reviewers give
POSITIVE = "pneumonia"
IMAGE_CONTENT_TYPES = frozenset({"image/png", "image/jpeg", "application/dicom", "application/octet-stream"})

# --- keys --------------------------------------------------------------------------------------------------------
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a request id is also a key segment: nothing else passes
# A DICOM AE title (PS3.5): 1 to 16 characters of the default repertoire without backslash, trimmed of spaces first.
AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


def result_key(key: str) -> str:
    """Key in RESULT_BUCKET of ingest's result for INPUT_BUCKET/`key`."""
    return f"{key}.json"


def heatmap_key(key: str) -> str:
    """Key in RESULT_BUCKET of the heatmap overlay for INPUT_BUCKET/`key`."""
    return f"{key}.heatmap.png"


DICOM_INPUT_PREFIX = "dicom/"  # instances received over DICOM / DICOMweb, in INPUT_BUCKET


def dicom_instance_key(study_uid: str, sop_instance_uid: str) -> str:
    """Key in INPUT_BUCKET of one received DICOM instance: a hash of its UIDs, so the key names no identifier and
    a resent instance lands on the same key."""
    digest = hashlib.sha256(f"{study_uid}/{sop_instance_uid}".encode("ascii", "backslashreplace")).hexdigest()
    return f"{DICOM_INPUT_PREFIX}{digest}.dcm"


def request_record_key(request_id: str) -> str:
    """Key in STATE_BUCKET of the record of one answered request (feedback, monitor and canary join on it)."""
    return f"requests/{request_id}.json"


# The id of a request predict / explain answered: `<batch>.<the model's uuid4 hex>`; its record is one of many in
# the batch object `requests/batches/<batch>.json` (one S3 write per batch: shared.request_records).
_BATCHED_REQUEST_ID = re.compile(r"^([0-9a-f]{16})\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,46}$")


def request_batch_key(batch: str) -> str:
    """Key in STATE_BUCKET of a batch of request records (a request id never holds a slash: no collision)."""
    return f"requests/batches/{batch}.json"


def request_batch_of(request_id: str) -> str | None:
    """The batch a request id names (predict / explain ids), None for an id with its own record (ingest)."""
    match = _BATCHED_REQUEST_ID.match(request_id)
    return match.group(1) if match else None


def feedback_key(request_id: str) -> str:
    """Key in FEEDBACK_BUCKET of the label of one request."""
    return f"{request_id}.json"


def feedback_request_id(key: str) -> str | None:
    """The request id whose label FEEDBACK_BUCKET/`key` is; None for any other object found there."""
    request_id = key[: -len(".json")] if key.endswith(".json") else ""
    return request_id if REQUEST_ID.match(request_id) else None


# State of the event functions, all in STATE_BUCKET.
CANARY_STATE_KEY = "canary/state.json"
MONITOR_STATE_KEY = "monitor/state.json"
MONITOR_LABELS_KEY = "monitor/labels.json"
MONITOR_REPORT_KEY = "monitor/report.json"
RETRAIN_STATE_KEY = "retrain/state.json"
RETRAIN_BATCH_PREFIX = "retrain/batches/"
API_TOKENS_KEY = "auth/api-tokens.json"  # who may call predict / explain: names + SHA-256 hashes only


def retrain_batch_key(batch_id: str) -> str:
    """Key in STATE_BUCKET of the item list of one training batch (the job reads it via RETRAIN_BATCH_URI)."""
    return f"{RETRAIN_BATCH_PREFIX}{batch_id}.json"


def key_ref(bucket: str, key: str) -> str:
    """How logs name `bucket`/`key`: "obj:" + 12 hex of its HMAC-SHA256 keyed with the installation's
    LOG_REF_SECRET, the same in every process of the installation (`_ref_key`).

    Keyed, not a plain hash: keys carry names and record numbers, and a plain hash of a guessable key is found by
    hashing the guesses; without the secret a reference matches no guess. Results keep the key itself (they live
    in the hospital's storage); a log line never does.
    """
    message = f"{bucket}/{key}".encode("utf-8", "surrogatepass")
    return "obj:" + hmac.new(_ref_key(), message, hashlib.sha256).hexdigest()[:12]


@functools.cache
def _ref_key() -> bytes:
    """LOG_REF_SECRET, read once per process from its environment: every process logs, the local stack's S3 server
    and broker included, which have no `Settings`. Without it (a tool run outside an installation), a random key of
    this process: its references match nothing outside it, and still no guessed key."""
    secret = os.environ.get("LOG_REF_SECRET", "")
    return b"xray-triage key_ref\0" + (secret.encode() if secret else secrets.token_bytes(32))


# --- events (design §4) ------------------------------------------------------------------------------------------
OBJECT_CREATED = "io.minio.object.created"
PREDICTION_CREATED = "triage.prediction.created"
HEATMAP_REQUESTED = "triage.heatmap.requested"  # ingest's flag step hands the heatmap on to its own delivery
FEEDBACK_RECEIVED = "triage.feedback.received"
MODEL_REGISTERED = "triage.model.registered"
PING = "dev.knative.sources.ping"
SOURCE_INGEST = "triage/ingest"
SOURCE_FEEDBACK = "triage/feedback"
SOURCE_RETRAIN = "triage/retrain"
