"""Event-triggered inference: an object created in `inference-inputs` → a result in `inference-results`.

Per object version (bucket/key/etag), in this order:
1. a result `inference-results/<key>.json` with the same etag already exists → `duplicate`, nothing written;
2. read the bytes of exactly that version (If-Match on the etag; a newer version → `stale`, its own event
   will come; the object gone → an error result);
3. de-identify DICOM before anything derived from it exists;
4. predict + occlusion-sensitivity heatmap;
5. write the heatmap PNG, the request index, publish `triage.prediction.created` (when a publisher is given),
   and the result JSON last: the result is the commit mark, so a crash anywhere before it leaves no result and
   the redelivered event redoes the work (same request id, same keys, same event id).
A bad image is the uploader's fault and final: an error result is stored (so nothing is lost silently) and the
call succeeds, so the broker does not retry. A storage or model failure raises: 5xx, and the broker retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError

from shared import metrics
from shared.errors import NotFound, TriageError, UserError
from shared.events import (
    OBJECT_CREATED,
    BadEvent,
    CloudEvent,
    Publisher,
    deterministic_id,
    event_data,
    normalize_etag,
    prediction_created_event,
)
from shared.feedback import record_request
from shared.imaging import mean_intensity
from shared.storage import Storage, StorageUnavailable
from shared.timestamps import parse_utc, utc_iso

__all__ = [
    "INPUT_BUCKET",
    "RESULT_BUCKET",
    "IngestOutcome",
    "ObjectVersion",
    "StorageUnavailable",
    "ingest_object",
    "object_from_event",
    "result_key",
]

log = logging.getLogger(__name__)

INPUT_BUCKET = "inference-inputs"
RESULT_BUCKET = "inference-results"
# Occlusion, not rollout: measured by deletion / insertion AUC (`triage bench`), rollout through the conv stem is
# no more faithful than a random map, occlusion clearly is; it costs ~20 ms more per image, off the HTTP path.
EXPLAIN_METHOD = "occlusion"
_DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class ObjectVersion:
    """The object version an `io.minio.object.created` event announces."""

    bucket: str
    key: str
    etag: str
    size: int | None = None
    event_time: str | None = None

    @property
    def request_id(self) -> str:
        """Deterministic, so a redelivered event reuses the same ids and keys."""
        return deterministic_id(self.bucket, self.key, self.etag)[:32]


@dataclass(frozen=True)
class IngestOutcome:
    """`created`, `duplicate`, `stale`, `error` (final, stored) or `ignored` (another bucket)."""

    status: str
    obj: ObjectVersion
    result: dict[str, Any] | None = None
    event: CloudEvent | None = None  # the prediction event, when the caller is to reply with it

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.status,
            "bucket": self.obj.bucket,
            "key": self.obj.key,
            "etag": self.obj.etag,
        }
        if self.status in ("created", "error", "duplicate"):
            body["result"] = f"s3://{RESULT_BUCKET}/{result_key(self.obj.key)}"
        if self.result is not None:
            body["request_id"] = self.result.get("request_id")
            body["label"] = self.result.get("label")
            body["error"] = self.result.get("error")
        return {k: v for k, v in body.items() if v is not None}


def result_key(key: str) -> str:
    return f"{key}.json"


def heatmap_key(key: str) -> str:
    return f"{key}.heatmap.png"


def object_from_event(event: CloudEvent) -> ObjectVersion:
    """The object version of an `io.minio.object.created` event (400 `bad_event` when fields are missing)."""
    if event["type"] != OBJECT_CREATED:
        raise BadEvent(f"expected a {OBJECT_CREATED} event, got {event['type']}")
    data = event_data(event, "bucket", "key", "etag")
    size = data.get("size")
    return ObjectVersion(
        bucket=str(data["bucket"]),
        key=str(data["key"]),
        etag=normalize_etag(str(data["etag"])),
        size=size if isinstance(size, int) else None,
        event_time=data.get("event_time") or event.get("time"),
    )






def _is_code(exc: ClientError, *codes: str) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code")) in codes or str(status) in codes


def _existing_result(storage: Storage, key: str) -> dict[str, Any] | None:
    try:
        result = storage.get_json(RESULT_BUCKET, result_key(key))
    except NotFound:
        return None
    except ValueError:
        return None  # an unreadable result is replaced, never trusted
    return result if isinstance(result, dict) else None


def _read_version(storage: Storage, obj: ObjectVersion) -> tuple[bytes, datetime | None] | str:
    """(bytes, last modified) of exactly this version, or 'stale' / 'missing'."""
    try:
        response = storage.client.get_object(Bucket=obj.bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
    except ClientError as exc:
        if _is_code(exc, "PreconditionFailed", "412"):
            return "stale"
        if _is_code(exc, "NoSuchKey", "NotFound", "404"):
            return "missing"
        raise
    return response["Body"].read(), response.get("LastModified")


def _is_dicom(data: bytes, key: str) -> bool:
    return (len(data) >= 132 and data[128:132] == b"DICM") or key.lower().endswith(_DICOM_SUFFIXES)


def ingest_object(
    storage: Storage,
    model: Any,
    obj: ObjectVersion,
    *,
    publisher: Publisher | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> IngestOutcome:
    """Triage one uploaded object version (see the module docstring for the order and the guarantees).

    `model` is a loaded-on-demand `shared.runtime.TriageModel`. With `publisher` the prediction event is
    published before the result is written; without it the outcome carries the event for a Knative reply.
    """
    if obj.bucket != INPUT_BUCKET:
        return IngestOutcome("ignored", obj)
    try:
        outcome = _ingest(storage, model, obj, publisher, now)
    except (BotoCoreError, ClientError) as exc:
        # Class name only: boto messages can quote keys, and keys are named by the hospital.
        raise StorageUnavailable(
            f"S3 failed while ingesting ({type(exc).__name__}); the event will come again"
        ) from exc
    metrics.EVENTS_PROCESSED.labels(function="ingest", type=OBJECT_CREATED, outcome=outcome.status).inc()
    return outcome


def _ingest(
    storage: Storage, model: Any, obj: ObjectVersion, publisher: Publisher | None, now: Callable[[], datetime]
) -> IngestOutcome:
    existing = _existing_result(storage, obj.key)
    if existing is not None and normalize_etag(existing.get("etag")) == obj.etag:
        return IngestOutcome("duplicate", obj, existing)
    model.ensure_loaded()  # NotReady / ModelLoadError (5xx) before anything is read: the event comes back
    t0 = time.perf_counter()
    read = _read_version(storage, obj)
    if read == "stale":
        return IngestOutcome("stale", obj)
    uploaded_at = parse_utc(obj.event_time)
    if read == "missing":
        return _store_error(storage, model, obj, NotFound("the input object no longer exists"), uploaded_at, now)
    data, last_modified = read
    uploaded_at = uploaded_at or parse_utc(last_modified)
    read_ms = (time.perf_counter() - t0) * 1000.0
    try:
        t1 = time.perf_counter()
        dicom = _is_dicom(data, obj.key)
        if dicom:
            from shared.dicom import deidentify_bytes

            data = deidentify_bytes(data)  # before any derived object (heatmap, result) exists
        deidentify_ms = (time.perf_counter() - t1) * 1000.0
        prepared = model.preprocess(data, "application/dicom" if dicom else None)
        explanation = model.explain(prepared, EXPLAIN_METHOD, request_id=obj.request_id)
    except UserError as exc:
        return _store_error(storage, model, obj, exc, uploaded_at, now)
    t2 = time.perf_counter()
    storage.put_bytes(RESULT_BUCKET, heatmap_key(obj.key), explanation.overlay_png, "image/png")
    prediction = explanation.prediction.to_json()
    completed = now()
    upload_to_result = max(0.0, (completed - uploaded_at).total_seconds()) if uploaded_at else None
    result = {
        **prediction,
        "status": "ok",
        "bucket": obj.bucket,
        "key": obj.key,
        "etag": obj.etag,
        "size": obj.size if obj.size is not None else len(data),
        "revision": getattr(model.settings, "revision", None),
        "heatmap": {"bucket": RESULT_BUCKET, "key": heatmap_key(obj.key), "method": EXPLAIN_METHOD},
        # What the monitor's input-drift statistic needs (never the pixels themselves).
        "input": {"mean_intensity": round(float(mean_intensity(prepared.model_input[np.newaxis])[0]), 4)},
        "timings_ms": {
            **prediction["timings_ms"],
            "storage_read": round(read_ms, 3),
            "deidentify": round(deidentify_ms, 3),
            "storage_write": 0.0,
        },
        "uploaded_at": utc_iso(uploaded_at) if uploaded_at else None,
        "completed_at": utc_iso(completed),
        "upload_to_result_s": round(upload_to_result, 4) if upload_to_result is not None else None,
    }
    record_request(storage, result, source="ingest", result_uri=f"s3://{RESULT_BUCKET}/{result_key(obj.key)}")
    event = prediction_created_event(result)
    if publisher is not None:
        publisher.publish(event)  # before the commit mark: a failure here redoes the work, never skips the event
    result["timings_ms"]["storage_write"] = round((time.perf_counter() - t2) * 1000.0, 3)
    storage.put_json(RESULT_BUCKET, result_key(obj.key), result)
    if upload_to_result is not None:
        metrics.UPLOAD_TO_RESULT.observe(upload_to_result)
    log.info(
        "ingested %s/%s (%s) in %.1f ms",
        obj.bucket,
        obj.request_id,
        result["label"],
        (time.perf_counter() - t0) * 1000.0,
    )
    return IngestOutcome("created", obj, result, None if publisher is not None else event)


def _store_error(
    storage: Storage,
    model: Any,
    obj: ObjectVersion,
    exc: TriageError,
    uploaded_at: datetime | None,
    now: Callable[[], datetime],
) -> IngestOutcome:
    """A final error result: the upload can never succeed as is, and the uploader can see why."""
    result = {
        "status": "error",
        "request_id": obj.request_id,
        "bucket": obj.bucket,
        "key": obj.key,
        "etag": obj.etag,
        "error": {"code": exc.code, "message": exc.message},
        "model": dict(getattr(model, "model_ref", {}) or {}),
        "uploaded_at": utc_iso(uploaded_at) if uploaded_at else None,
        "completed_at": utc_iso(now()),
    }
    storage.put_json(RESULT_BUCKET, result_key(obj.key), result)
    log.warning("input %s/%s rejected: %s", obj.bucket, obj.request_id, exc.code)
    return IngestOutcome("error", obj, result)
