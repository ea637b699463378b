"""Event-triggered inference: an object created in `inference-inputs` → a result in `inference-results`.

Per object version (bucket/key/etag), in this order:
1. a result `inference-results/<key>.json` (`names.result_key`) with the same etag already exists → `duplicate`,
   nothing written;
2. read the bytes of exactly that version (If-Match on the etag; a newer version → `stale`, its own event
   will come; the object gone → an error result);
3. de-identify DICOM before anything derived from it exists;
4. predict, then at once (the flag before the picture) the request index and the result JSON with the label,
   probability and urgency and `heatmap: {"status": "pending", "method"}`: the worklist shows the case and its
   urgency while the heatmap is still being computed;
5. the occlusion-sensitivity heatmap (its occluded copies in one batched ONNX run), its PNG, publish
   `triage.prediction.created` (when a publisher is given), and the result JSON again, last, with
   `heatmap: {"status": "ready", "bucket", "key", "method", "completed_at"}`: this final result is the commit
   mark. A redelivered event finds a result whose heatmap is still pending and redoes the work (same request id,
   same keys, same event id); only a result whose heatmap is ready (or an error result) makes it a duplicate.
   An input the gate refuses (`assessable: false`, a `reason`, no label, no probability, not urgent) has no
   heatmap: its final result says `heatmap: {"status": "none", "reason": "not_assessable"}`, and its event is
   published all the same (the monitor counts it; the PACS export sends an SR saying it is not assessable).
   `completed_at` / `upload_to_result_s` time the flag (when the label became readable), not the picture.
A bad image is the uploader's fault and final: an error result is stored (so nothing is lost silently) and the
call succeeds, so the broker does not retry — a DICOM the decoders refuse (a window width of 0, an unknown VOI LUT
function, sequences nested 2,000 deep) and one whose pixels carry burned-in text under BURNED_IN_ANNOTATION=refuse
included. A storage or model failure raises: 5xx, and the broker retries; so does a missing DEID_SECRET (503: the
operator's to fix, and the event must not be lost meanwhile).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared import metrics
from shared.dicom import deidentify_bytes, is_dicom
from shared.errors import NotFound, TriageError, UserError
from shared.events import (
    BadEvent,
    CloudEvent,
    Publisher,
    deterministic_id,
    event_data,
    normalize_etag,
    prediction_created_event,
)
from shared.names import INPUT_BUCKET, OBJECT_CREATED, RESULT_BUCKET, heatmap_key, result_key
from shared.request_records import record_request
from shared.storage import Stale, Storage, unavailable_on_s3_failure
from shared.timestamps import parse_utc, utc_iso

if TYPE_CHECKING:
    from shared.model import Prediction, TriageModel

__all__ = ["EXPLAIN_METHOD", "IngestOutcome", "ObjectVersion", "ingest_object", "object_from_event"]

log = logging.getLogger(__name__)

# Occlusion, not rollout: measured by deletion / insertion AUC (`triage bench`), rollout through the conv stem is
# no more faithful than a random map, occlusion clearly is; it costs ~20 ms more per image, off the HTTP path.
EXPLAIN_METHOD = "occlusion"
_DICOM_SUFFIXES = (".dcm", ".dicom")  # DICOM written without the preamble has no magic to sniff


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
            body["assessable"] = self.result.get("assessable")
            body["label"] = self.result.get("label")
            body["error"] = self.result.get("error")
        return {k: v for k, v in body.items() if v is not None}


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


def ingest_object(
    storage: Storage,
    model: TriageModel,
    obj: ObjectVersion,
    *,
    publisher: Publisher | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> IngestOutcome:
    """Triage one uploaded object version (see the module docstring for the order and the guarantees).

    `model` is a loaded-on-demand `shared.model.TriageModel`. With `publisher` the prediction event is
    published before the result is written; without it the outcome carries the event for a Knative reply.
    """
    if obj.bucket != INPUT_BUCKET:
        return IngestOutcome("ignored", obj)
    with unavailable_on_s3_failure("while ingesting"):
        outcome = _ingest(storage, model, obj, publisher, now)
    metrics.EVENTS_PROCESSED.labels(function="ingest", type=OBJECT_CREATED, outcome=outcome.status).inc()
    return outcome


def _existing_result(storage: Storage, key: str) -> dict[str, Any] | None:
    try:
        result = storage.get_json(RESULT_BUCKET, result_key(key))
    except NotFound:
        return None
    except ValueError:
        return None  # an unreadable result is replaced, never trusted
    return result if isinstance(result, dict) else None


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def _ingest(
    storage: Storage, model: TriageModel, obj: ObjectVersion, publisher: Publisher | None, now: Callable[[], datetime]
) -> IngestOutcome:
    existing = _existing_result(storage, obj.key)
    if existing is not None and normalize_etag(existing.get("etag")) == obj.etag and not _heatmap_pending(existing):
        return IngestOutcome("duplicate", obj, existing)
    model.ensure_loaded()  # NotReady / ModelLoadError (5xx) before anything is read: the event comes back
    t0 = time.perf_counter()
    uploaded_at = parse_utc(obj.event_time)
    try:
        stored = storage.get_object(obj.bucket, obj.key, if_match=obj.etag)  # exactly this version
    except Stale:
        return IngestOutcome("stale", obj)
    except NotFound:
        return _store_error(storage, model, obj, NotFound("the input object no longer exists"), uploaded_at, now)
    uploaded_at = uploaded_at or parse_utc(stored.last_modified)
    timings = {"storage_read": _ms_since(t0)}
    try:
        t1 = time.perf_counter()
        data = stored.data
        dicom = is_dicom(data) or obj.key.lower().endswith(_DICOM_SUFFIXES)
        if dicom:
            # Before any derived object (heatmap, result) exists; a burned-in image refused here stores no pixels.
            model.screen(data, "application/dicom")
            data = deidentify_bytes(data, secret=model.settings.deid_secret)
        timings["deidentify"] = _ms_since(t1)
        flagged: list[dict[str, Any]] = []

        def flag(prediction: Prediction) -> None:
            """The result with the label, before the heatmap exists (the flag before the picture)."""
            t2 = time.perf_counter()
            result = _result(model, obj, prediction, len(data), timings, uploaded_at, now())
            record_request(storage, result, source="ingest", result_uri=f"s3://{RESULT_BUCKET}/{result_key(obj.key)}")
            result["timings_ms"]["storage_write"] = _ms_since(t2)
            storage.put_json(RESULT_BUCKET, result_key(obj.key), result)
            if result["upload_to_result_s"] is not None:
                metrics.UPLOAD_TO_RESULT.observe(result["upload_to_result_s"])
                if result["urgent"]:
                    metrics.record_urgent_flagged(result["upload_to_result_s"])
            flagged.append(result)

        explanation = model(data, "application/dicom" if dicom else None, explain=EXPLAIN_METHOD,
                            request_id=obj.request_id, on_prediction=flag)  # fmt: skip
    except UserError as exc:
        return _store_error(storage, model, obj, exc, uploaded_at, now)
    t3 = time.perf_counter()
    result = flagged[0]
    if explanation.overlay_png is None:  # not assessable: there is no finding to point at
        result["heatmap"] = {"status": "none", "reason": "not_assessable"}
    else:
        storage.put_bytes(RESULT_BUCKET, heatmap_key(obj.key), explanation.overlay_png, "image/png")
        result["heatmap"] = {"status": "ready", "bucket": RESULT_BUCKET, "key": heatmap_key(obj.key),
                             "method": EXPLAIN_METHOD, "completed_at": utc_iso(now())}  # fmt: skip
        explain_ms = round(explanation.prediction.timings_ms["explain"], 3)
        result["timings_ms"] = {**result["timings_ms"], "explain": explain_ms, "heatmap_write": _ms_since(t3)}
    event = prediction_created_event(result)
    if publisher is not None:
        publisher.publish(event)  # before the commit mark: a failure here redoes the work, never skips the event
    storage.put_json(RESULT_BUCKET, result_key(obj.key), result)
    log.info("ingested %s/%s (%s) in %.1f ms", obj.bucket, obj.request_id, result["label"], _ms_since(t0))
    return IngestOutcome("created", obj, result, None if publisher is not None else event)


def _heatmap_pending(result: dict[str, Any]) -> bool:
    """A result written as the flag whose heatmap (and commit) never followed: the work is to be redone."""
    heatmap = result.get("heatmap")
    return result.get("status") == "ok" and isinstance(heatmap, dict) and heatmap.get("status") == "pending"


def _result(
    model: TriageModel,
    obj: ObjectVersion,
    answer: Prediction,
    size: int,
    timings: dict[str, float],
    uploaded_at: datetime | None,
    completed: datetime,
) -> dict[str, Any]:
    """The result JSON of docs/contracts.md with the heatmap pending (storage_write is filled in before writing)."""
    prediction = answer.to_json()
    upload_to_result = max(0.0, (completed - uploaded_at).total_seconds()) if uploaded_at else None
    return {
        **prediction,
        "status": "ok",
        "bucket": obj.bucket,
        "key": obj.key,
        "etag": obj.etag,
        "size": obj.size if obj.size is not None else size,
        "revision": getattr(model.settings, "revision", None),
        "heatmap": {"status": "pending", "method": EXPLAIN_METHOD},
        # What the monitor's input-drift statistic needs (never the pixels themselves).
        "input": {"mean_intensity": round(answer.mean_intensity, 4)},
        "timings_ms": {**prediction["timings_ms"], **timings, "storage_write": 0.0},
        "uploaded_at": utc_iso(uploaded_at) if uploaded_at else None,
        "completed_at": utc_iso(completed),
        "upload_to_result_s": round(upload_to_result, 4) if upload_to_result is not None else None,
    }


def _store_error(
    storage: Storage,
    model: TriageModel,
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
