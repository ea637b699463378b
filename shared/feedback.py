"""Radiologists' labels: validate, store `feedback/<request_id>.json`, emit `triage.feedback.received`.

A label is accepted only for a request the system answered. Every prediction is indexed under
`triage-state/requests/<request_id>.json` (`record_request`; `names.STATE_BUCKET`, `names.request_record_key`):
ingest writes it for every upload, and predict / explain for synchronous requests (`RequestRecorder`, off the
request path) so that those can get feedback too. Request ids are the service's own (generated, or derived from
bucket/key/etag by ingest); a caller's `X-Request-Id` is kept only as the record's `correlation_id`.

Resending the same label is a no-op (200, no event); a different label by the same reviewer replaces the stored
one and emits a new event; a different label by another reviewer is kept beside it as a second opinion
(`second_opinions`, status `second_opinion`, no event: the first label stands until someone adjudicates).
The label is stored before the event is published, with `notified: false` until the sink accepted it, so a sink
failure never loses the label and a resend after it publishes the same event (same id) once more.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.errors import InvalidField, NotFound
from shared.events import Publisher, feedback_received_event
from shared.names import CLASS_NAMES, FEEDBACK_BUCKET, REQUEST_ID, STATE_BUCKET, feedback_key, request_record_key
from shared.payloads import parse_json_object
from shared.security import check_bearer
from shared.storage import Storage
from shared.timestamps import utc_iso

__all__ = [
    "LABELS",
    "MAX_BODY_BYTES",
    "FeedbackOutcome",
    "FeedbackRequest",
    "RequestRecorder",
    "parse_feedback",
    "record_request",
    "submit_feedback",
]

LABELS = CLASS_NAMES
log = logging.getLogger(__name__)
_REVIEWER = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MAX_BODY_BYTES = 16 * 1024  # the feedback function reads at most this (shared.security.read_body)


def record_request(
    storage: Storage, prediction: Mapping[str, Any], *, source: str, result_uri: str | None = None
) -> None:
    """Index an answered request (`prediction` = Prediction.to_json(), plus anything else) for feedback."""
    request_id = str(prediction["request_id"])
    if not REQUEST_ID.match(request_id):
        raise ValueError(f"request_id {request_id!r} is not a safe key")
    record = {
        "request_id": request_id,
        "correlation_id": prediction.get("correlation_id"),
        "source": source,
        "label": prediction.get("label"),
        "probability": prediction.get("probability"),
        "urgent": prediction.get("urgent"),
        "model": prediction.get("model"),
        "result": result_uri,
        "time": utc_iso(),
    }
    storage.put_json(STATE_BUCKET, request_record_key(request_id), record)


class RequestRecorder:
    """`record_request` on a background thread, so a synchronous predict does not wait for S3.

    The queue is bounded: when S3 is slow and it fills up, a record is dropped with a warning rather than
    holding the prediction back (that request then cannot get feedback). `flush()` waits for pending writes.
    """

    def __init__(self, storage: Storage | Callable[[], Storage], *, source: str, max_pending: int = 1000) -> None:
        # A factory defers the S3 client (botocore takes ~0.2 s to build one) to the writer thread, off cold start.
        self._storage = storage
        self.source = source
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def record(self, prediction: Mapping[str, Any]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # started lazily: after a fork, too
                self._thread = threading.Thread(target=self._run, name="request-recorder", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(dict(prediction))
        except queue.Full:
            log.warning("request index queue full; request %s will not accept feedback", prediction.get("request_id"))

    @property
    def storage(self) -> Storage:
        if not isinstance(self._storage, Storage):
            self._storage = self._storage()
        return self._storage

    def flush(self) -> None:
        self._queue.join()

    def _run(self) -> None:
        while True:
            prediction = self._queue.get()
            try:
                record_request(self.storage, prediction, source=self.source)
            except Exception as exc:  # a lost index record must not kill the writer thread
                log.warning("cannot index request %s: %s", prediction.get("request_id"), type(exc).__name__)
            finally:
                self._queue.task_done()


@dataclass(frozen=True)
class FeedbackRequest:
    """A validated label: which request, which class, by whom."""

    request_id: str
    label: str
    reviewer: str
    authenticated_as: str


@dataclass(frozen=True)
class FeedbackOutcome:
    """`stored` (new), `updated` (label changed), `unchanged` (same label again: no event) or `second_opinion`."""

    status: str
    record: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, **{k: self.record[k] for k in ("request_id", "label", "reviewer", "time")}}


def parse_feedback(body: bytes, authorization: str | None, reviewer_tokens: str | None) -> FeedbackRequest:
    """Authenticate (401 / 403) then validate the JSON body (400 invalid JSON, 422 a bad field).

    `reviewer` is who the body says read the film (the token's name when absent); the token's name is kept
    beside it as `authenticated_as`, because a ward may share one token among several radiologists.
    """
    token_reviewer = check_bearer(authorization, reviewer_tokens)
    payload = parse_json_object(body, '{"request_id", "label", "reviewer"}')
    request_id = payload.get("request_id")
    if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
        raise InvalidField("request_id: expected the request_id of a prediction (letters, digits, . _ -)")
    label = payload.get("label")
    if label not in LABELS:
        raise InvalidField(f"label: expected one of {', '.join(LABELS)}, got {label!r}")
    reviewer = payload.get("reviewer", token_reviewer)
    if not isinstance(reviewer, str) or not _REVIEWER.match(reviewer):
        raise InvalidField("reviewer: expected the reviewer's name (letters, digits, . _ @ -)")
    return FeedbackRequest(request_id=request_id, label=label, reviewer=reviewer, authenticated_as=token_reviewer)


def submit_feedback(
    storage: Storage,
    request: FeedbackRequest,
    publisher: Publisher,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> FeedbackOutcome:
    """Store the label (404 for an unknown request id) and publish its event; idempotent for a same label."""
    answered = storage.get_json_object(STATE_BUCKET, request_record_key(request.request_id))
    if answered is None:
        raise NotFound(f"request_id: no prediction {request.request_id} is known")
    key = feedback_key(request.request_id)
    existing = storage.get_json_object(FEEDBACK_BUCKET, key)
    if existing is not None and existing.get("label") != request.label and existing.get("reviewer") != request.reviewer:
        return _second_opinion(storage, key, existing, request, now())
    if existing is not None and existing.get("label") == request.label:
        if existing.get("notified"):
            return FeedbackOutcome("unchanged", existing)
        record, status = existing, "stored"  # stored earlier, but its event never reached the sink
    else:
        record = {
            "request_id": request.request_id,
            "label": request.label,
            "reviewer": request.reviewer,
            "authenticated_as": request.authenticated_as,
            "time": utc_iso(now()),
            "predicted_label": answered.get("label"),
            "model": answered.get("model"),
            "source": answered.get("source"),
            "previous_label": existing.get("label") if existing else None,
            "key": f"{FEEDBACK_BUCKET}/{key}",
            "notified": False,
        }
        if existing and existing.get("second_opinions"):
            record["second_opinions"] = existing["second_opinions"]  # the other reviewers' labels stay
        status = "updated" if existing else "stored"
        storage.put_json(FEEDBACK_BUCKET, key, record)
    event_record = {k: v for k, v in record.items() if k != "notified"}
    publisher.publish(feedback_received_event(event_record))  # EventDeliveryError (502): the label stays stored
    record = {**record, "notified": True}
    storage.put_json(FEEDBACK_BUCKET, key, record)
    return FeedbackOutcome(status, record)


def _second_opinion(
    storage: Storage, key: str, existing: dict[str, Any], request: FeedbackRequest, now: datetime
) -> FeedbackOutcome:
    """Another reviewer disagrees: keep their label beside the stored one (once per reviewer and label)."""
    opinions = [o for o in existing.get("second_opinions") or [] if isinstance(o, dict)]
    if not any((o.get("reviewer"), o.get("label")) == (request.reviewer, request.label) for o in opinions):
        opinions.append({"label": request.label, "reviewer": request.reviewer,
                         "authenticated_as": request.authenticated_as, "time": utc_iso(now)})
        existing = {**existing, "second_opinions": opinions}
        storage.put_json(FEEDBACK_BUCKET, key, existing)
    return FeedbackOutcome("second_opinion", existing)
