"""Event-triggered inference: an object created in `inference-inputs` → a result in `inference-results`, in two
steps, each its own CloudEvent delivery, so the flags of a burst of uploads never wait behind occlusion maps.

The flag step (`io.minio.object.created`, `ingest_object`), per object version (bucket/key/etag):
1. a result `inference-results/<key>.json` (`names.result_key`) with the same etag: final (heatmap ready or none,
   or an error result) → `duplicate`, nothing written; heatmap still pending (the heatmap request may have been
   lost with the process) → `pending`: the heatmap request is sent again, nothing is predicted again;
2. read the bytes of exactly that version (If-Match on the etag; a newer version → `stale`, its own event
   will come; the object gone → an error result);
3. de-identify DICOM before anything derived from it exists;
4. predict, then at once (the flag before the picture) the request index and the result JSON with the label,
   probability and urgency and `heatmap: {"status": "pending", "method"}`: the worklist shows the case and its
   urgency while the heatmap is still to be computed;
5. hand the heatmap on: `triage.heatmap.requested` (bucket, key, etag, request_id; one id per version) is
   published to K_SINK (with a publisher) before the call returns, or is the outcome's event for a Knative
   reply; either way the object.created delivery is acknowledged only once the request is on its way.
An input the gate refuses (`assessable: false`, a `reason`, no label, no probability, not urgent) has no
heatmap: its result is final at once, `heatmap: {"status": "none", "reason": "not_assessable"}`, and its
`triage.prediction.created` is published (or replied) all the same (the monitor counts it; the PACS export sends
an SR saying it is not assessable).

The heatmap step (`triage.heatmap.requested`, `ingest_heatmap`):
1. the result of that version must be there with its heatmap pending: final → `duplicate`; none, or another
   version's → `stale` (the version that replaced it has its own events);
2. re-read exactly that version (a newer one → `stale`; the object gone → the result is made final with
   `heatmap: {"status": "none", "reason": "input_deleted"}` and its event published);
3. de-identify DICOM as the flag step did and compute the occlusion-sensitivity map (its occluded copies in one
   batched ONNX run) from the same pixels the flag was predicted from;
4. the heatmap PNG, then `triage.prediction.created` (published, or the outcome's event for a reply), then the
   result JSON again, last, with `heatmap: {"status": "ready", "bucket", "key", "method", "completed_at"}`:
   this final result is the commit mark. A redelivered request before it redoes the work (same keys, same event
   id); after it, it is a duplicate.
`completed_at` / `upload_to_result_s` time the flag (when the label became readable), not the picture.
A bad image is the uploader's fault and final: an error result is stored (so nothing is lost silently) and the
call succeeds, so the broker does not retry — a DICOM the decoders refuse (a window width of 0, an unknown VOI LUT
function, sequences nested 2,000 deep) and one whose pixels carry burned-in text under BURNED_IN_ANNOTATION=refuse
included. A storage, model or event sink failure raises: 5xx, and the broker retries; so does a missing
DEID_SECRET (503: the operator's to fix, and the event must not be lost meanwhile).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from shared import metrics
from shared.dicom import deidentify_bytes, is_dicom
from shared.errors import NotFound, PayloadTooLarge, TriageError, UserError
from shared.events import (
    BadEvent,
    CloudEvent,
    Publisher,
    deterministic_id,
    event_data,
    heatmap_requested_event,
    normalize_etag,
    prediction_created_event,
)
from shared.names import HEATMAP_REQUESTED, INPUT_BUCKET, OBJECT_CREATED, RESULT_BUCKET, heatmap_key, result_key
from shared.request_records import record_request
from shared.storage import Stale, Storage, StoredObject, unavailable_on_s3_failure
from shared.timestamps import parse_utc, utc_iso

if TYPE_CHECKING:
    from shared.model import Prediction, TriageModel

__all__ = [
    "EXPLAIN_METHOD",
    "HEATMAP_NICE",
    "IngestOutcome",
    "ObjectVersion",
    "heatmap_request_from_event",
    "ingest_event",
    "ingest_heatmap",
    "ingest_object",
    "object_from_event",
]

log = logging.getLogger(__name__)

# Occlusion, not rollout: measured by deletion / insertion AUC (`triage bench`), rollout through the conv stem is
# no more faithful than a random map, occlusion clearly is; it costs ~20 ms more per image, off the HTTP path.
EXPLAIN_METHOD = "occlusion"
_DICOM_SUFFIXES = (".dcm", ".dicom")  # DICOM written without the preamble has no magic to sniff
_EVENT_TYPES = (OBJECT_CREATED, HEATMAP_REQUESTED)
# The heatmap's CPU work (decode, the occluded copies through ONNX, the PNG) runs on threads of lower CPU priority
# (Linux: nice +10 over the process's): on a busy node the flags of new uploads, and the storage they wait on, get
# the cores first, and the occlusion maps take what is left. At most one such thread per core: more would only
# share the cores. Measured on a burst of 40 uploads (2 cores): flag p95 2.0 s at the same priority, 1.4-1.7 s niced.
HEATMAP_NICE = 10
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_T = TypeVar("_T")


@dataclass(frozen=True)
class ObjectVersion:
    """The object version an `io.minio.object.created` (or `triage.heatmap.requested`) event names."""

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
    """Flag step: `created`, `pending` (heatmap requested again), `duplicate`, `stale`, `error` (final, stored) or
    `ignored` (another bucket); heatmap step: `completed`, `duplicate`, `stale` or `ignored`."""

    status: str
    obj: ObjectVersion
    result: dict[str, Any] | None = None
    event: CloudEvent | None = None  # the heatmap request or the prediction event, when the caller is to reply

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.status,
            "bucket": self.obj.bucket,
            "key": self.obj.key,
            "etag": self.obj.etag,
        }
        if self.status in ("created", "pending", "completed", "error", "duplicate"):
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


def heatmap_request_from_event(event: CloudEvent) -> ObjectVersion:
    """The object version of a `triage.heatmap.requested` event (400 `bad_event` when fields are missing)."""
    if event["type"] != HEATMAP_REQUESTED:
        raise BadEvent(f"expected a {HEATMAP_REQUESTED} event, got {event['type']}")
    data = event_data(event, "bucket", "key", "etag")
    return ObjectVersion(bucket=str(data["bucket"]), key=str(data["key"]), etag=normalize_etag(str(data["etag"])))


def _utc_now() -> datetime:
    return datetime.now(UTC)


def ingest_event(storage: Storage, model: TriageModel, event: CloudEvent, *, publisher: Publisher | None = None,
                 now: Callable[[], datetime] = _utc_now) -> IngestOutcome:
    """The step `event`'s type names: object.created → the flag, heatmap.requested → the picture (else 400)."""
    if event["type"] == HEATMAP_REQUESTED:
        return ingest_heatmap(storage, model, heatmap_request_from_event(event), publisher=publisher, now=now)
    if event["type"] != OBJECT_CREATED:
        raise BadEvent(f"expected an event of type {' or '.join(_EVENT_TYPES)}, got {event['type']}")
    return ingest_object(storage, model, object_from_event(event), publisher=publisher, now=now)


def ingest_object(storage: Storage, model: TriageModel, obj: ObjectVersion, *, publisher: Publisher | None = None,
                  now: Callable[[], datetime] = _utc_now) -> IngestOutcome:
    """The flag step for one uploaded object version (see the module docstring for the order and the guarantees).

    `model` is a loaded-on-demand `shared.model.TriageModel`. With `publisher` the next event (the heatmap
    request, or the prediction of a not-assessable input) is published before this returns; without it the
    outcome carries it for a Knative reply.
    """
    return _step(OBJECT_CREATED, "while ingesting", _flag, storage, model, obj, publisher, now)


def ingest_heatmap(storage: Storage, model: TriageModel, obj: ObjectVersion, *, publisher: Publisher | None = None,
                   now: Callable[[], datetime] = _utc_now) -> IngestOutcome:
    """The heatmap step for one flagged object version (see the module docstring); `publisher` as above, for the
    `triage.prediction.created` event."""
    return _step(HEATMAP_REQUESTED, "while computing a heatmap", _picture, storage, model, obj, publisher, now)


def _step(event_type: str, during: str, step: Callable[..., IngestOutcome], storage: Storage, model: TriageModel,
          obj: ObjectVersion, publisher: Publisher | None, now: Callable[[], datetime]) -> IngestOutcome:
    """One step for an object of INPUT_BUCKET (others are ignored): S3 failures → 503, the outcome counted."""
    if obj.bucket != INPUT_BUCKET:
        return IngestOutcome("ignored", obj)
    with unavailable_on_s3_failure(during):
        outcome = step(storage, model, obj, publisher, now)
    metrics.EVENTS_PROCESSED.labels(function="ingest", type=event_type, outcome=outcome.status).inc()
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


def _pixels(model: TriageModel, obj: ObjectVersion, stored: StoredObject) -> tuple[bytes, str | None, bool]:
    """The bytes the model reads, their media type and whether they are marked as burned-in (the heatmap is then
    drawn alone): a DICOM screened and de-identified first (both steps)."""
    data = stored.data
    if not (is_dicom(data) or obj.key.lower().endswith(_DICOM_SUFFIXES)):
        return data, None, False
    # Before any derived object (heatmap, result) exists; a burned-in image refused here stores no pixels.
    marked = model.screen(data, "application/dicom")
    return deidentify_bytes(data, secret=model.settings.deid_secret), "application/dicom", marked


def _lower_priority() -> None:
    if sys.platform.startswith("linux"):  # a thread's own nice value (elsewhere it would be the whole process's)
        with contextlib.suppress(OSError):
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + HEATMAP_NICE))


def _in_background(work: Callable[[], _T]) -> _T:
    """`work()` on one of the process's low-priority heatmap threads (its exceptions are re-raised here)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="heatmap",
                                       initializer=_lower_priority)
    return _pool.submit(work).result()


def _send(publisher: Publisher | None, event: CloudEvent) -> CloudEvent | None:
    """Publish `event` (then None), or return it for the caller's Knative reply."""
    if publisher is None:
        return event
    publisher.publish(event)
    return None


def _flag(
    storage: Storage, model: TriageModel, obj: ObjectVersion, publisher: Publisher | None, now: Callable[[], datetime]
) -> IngestOutcome:
    existing = _existing_result(storage, obj.key)
    if existing is not None and normalize_etag(existing.get("etag")) == obj.etag:
        if _heatmap_pending(existing):  # flagged, but the heatmap request may have died with the process
            return IngestOutcome("pending", obj, existing, _send(publisher, heatmap_requested_event(existing)))
        return IngestOutcome("duplicate", obj, existing)
    model.ensure_loaded()  # NotReady / ModelLoadError (5xx) before anything is read: the event comes back
    t0 = time.perf_counter()
    uploaded_at = parse_utc(obj.event_time)
    try:  # exactly this version, and never more than MAX_INPUT_BYTES in memory
        stored = storage.get_object(obj.bucket, obj.key, if_match=obj.etag, max_bytes=model.settings.max_input_bytes)
    except Stale:
        return IngestOutcome("stale", obj)
    except NotFound:
        return _store_error(storage, model, obj, NotFound("the input object no longer exists"), uploaded_at, now)
    except PayloadTooLarge as exc:
        return _store_error(storage, model, obj, exc, uploaded_at, now)
    uploaded_at = uploaded_at or parse_utc(stored.last_modified)
    timings = {"storage_read": _ms_since(t0)}
    try:
        t1 = time.perf_counter()
        data, media_type, _ = _pixels(model, obj, stored)  # the model call screens what it reads itself
        timings["deidentify"] = _ms_since(t1)
        prediction = model(data, media_type, request_id=obj.request_id)
    except UserError as exc:
        return _store_error(storage, model, obj, exc, uploaded_at, now)
    t2 = time.perf_counter()
    result = _result(model, obj, prediction, len(data), timings, uploaded_at, now())
    record_request(storage, result, source="ingest", result_uri=f"s3://{RESULT_BUCKET}/{result_key(obj.key)}")
    result["timings_ms"]["storage_write"] = _ms_since(t2)
    if prediction.assessable:
        storage.put_json(RESULT_BUCKET, result_key(obj.key), result)  # the flag: readable from here on
        event = _send(publisher, heatmap_requested_event(result))  # before the delivery is acknowledged
    else:  # not assessable: there is no finding to point at, so the result is final at once
        result["heatmap"] = {"status": "none", "reason": "not_assessable"}
        event = _send(publisher, prediction_created_event(result))  # before the commit mark, as the heatmap step
        storage.put_json(RESULT_BUCKET, result_key(obj.key), result)
    if result["upload_to_result_s"] is not None:
        metrics.UPLOAD_TO_RESULT.observe(result["upload_to_result_s"])
        if result["urgent"]:
            metrics.record_urgent_flagged(result["upload_to_result_s"])
    log.info("flagged %s/%s (%s) in %.1f ms", obj.bucket, obj.request_id, result["label"], _ms_since(t0))
    return IngestOutcome("created", obj, result, event)


def _picture(
    storage: Storage, model: TriageModel, obj: ObjectVersion, publisher: Publisher | None, now: Callable[[], datetime]
) -> IngestOutcome:
    flagged = _existing_result(storage, obj.key)
    if flagged is None or normalize_etag(flagged.get("etag")) != obj.etag:
        return IngestOutcome("stale", obj)  # replaced by another version's result: that version has its own events
    if not _heatmap_pending(flagged):
        return IngestOutcome("duplicate", obj, flagged)
    model.ensure_loaded()
    t0 = time.perf_counter()
    try:
        stored = storage.get_object(obj.bucket, obj.key, if_match=obj.etag)  # the version the flag was made from
    except Stale:
        return IngestOutcome("stale", obj)
    except NotFound:  # deleted since the flag: no picture, but the prediction still counts
        return _commit(storage, obj, flagged, {"status": "none", "reason": "input_deleted"}, publisher)
    try:
        t1 = time.perf_counter()
        data, media_type, marked = _pixels(model, obj, stored)
        overlay = _in_background(lambda: _overlay(model, data, media_type, marked))
        explain_s = time.perf_counter() - t1
    except UserError as exc:  # the flag read these pixels, so only a changed installation gets here: final
        return _commit(storage, obj, flagged, {"status": "none", "reason": exc.code}, publisher)
    metrics.STEP_SECONDS.labels(step="explain").observe(explain_s)
    t2 = time.perf_counter()
    storage.put_bytes(RESULT_BUCKET, heatmap_key(obj.key), overlay, "image/png")
    # The model that drew the map: under a canary split its delivery may reach another revision than the flag's.
    heatmap = {"status": "ready", "bucket": RESULT_BUCKET, "key": heatmap_key(obj.key), "method": EXPLAIN_METHOD,
               "model": dict(model.model_ref), "completed_at": utc_iso(now())}
    timings = {"heatmap_read": round((t1 - t0) * 1000.0, 3), "explain": round(explain_s * 1000.0, 3),
               "heatmap_write": _ms_since(t2)}
    return _commit(storage, obj, {**flagged, "timings_ms": {**flagged.get("timings_ms", {}), **timings}}, heatmap,
                   publisher)


def _overlay(model: TriageModel, data: bytes, media_type: str | None, marked: bool) -> bytes:
    """The occlusion heatmap's overlay PNG of the model's input bytes (decoded as the flag's model call did); a
    `marked` (burned-in) image gets the map alone, none of its pixels."""
    image = model.decode(data, media_type)
    return model.explain(image, model.preprocess(image), EXPLAIN_METHOD, underlay=not marked)[1]


def _commit(storage: Storage, obj: ObjectVersion, flagged: dict[str, Any], heatmap: dict[str, Any],
            publisher: Publisher | None) -> IngestOutcome:
    """The prediction event, then the final result (the commit mark): a failure between redoes the step."""
    result = {**flagged, "heatmap": heatmap}
    event = _send(publisher, prediction_created_event(result))
    storage.put_json(RESULT_BUCKET, result_key(obj.key), result)
    log.info("heatmap of %s/%s: %s", obj.bucket, obj.request_id, heatmap.get("reason", heatmap["status"]))
    return IngestOutcome("completed", obj, result, event)


def _heatmap_pending(result: dict[str, Any]) -> bool:
    """A result written as the flag whose heatmap (and commit) has not followed yet."""
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
