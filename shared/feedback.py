"""Radiologists' labels: validate, store `feedback/<request_id>.json`, emit `triage.feedback.received`.

A label is accepted only for a request the system answered: every prediction has a request record in
`triage-state` (`shared.request_records.load_request_record` finds it): ingest writes one per upload under
`requests/<request_id>.json`, predict / explain theirs in batch objects named in the request id
(`RequestRecorder`, off the request path, with back-pressure rather than drops) so that those can get feedback too.
Request ids are the service's own (generated, or derived from bucket/key/etag by ingest); a caller's
`X-Request-Id` is kept only as the record's `correlation_id`.

Resending the same label is a no-op (200, no event); a different label by the same reviewer replaces the stored
one and emits a new event; a different label by another reviewer is kept beside it as a second opinion
(`second_opinions`, status `second_opinion`, no event: the first label stands until someone adjudicates).
The label is stored before the event is published, with `notified: false` until the sink accepted it, so a sink
failure never loses the label and a resend after it publishes the same event (same id) once more.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.errors import InvalidField, NotFound
from shared.events import Publisher, feedback_received_event
from shared.names import CLASS_NAMES, FEEDBACK_BUCKET, REQUEST_ID, feedback_key
from shared.payloads import parse_json_object
from shared.request_records import (  # the writer lives there (no S3 import)
    RequestRecorder,
    load_request_record,
    record_request,
)
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


# How long a label waits for its answer's record when that record's batch is not written yet (predict / explain
# write a batch `request_records.LINGER_S` (250 ms) after its first answer): a label sent right after its answer
# is not a 404.
RECORD_WAIT_S = 2.0

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
    answered = load_request_record(storage, request.request_id, wait_s=RECORD_WAIT_S)
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
