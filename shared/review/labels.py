"""A reviewer's label for a case, through the one feedback path (`shared.feedback.submit_feedback`).

The label is stored as `feedback/<request_id>.json` and announced as `triage.feedback.received`, exactly as the
feedback function does; the reviewer recorded is the signed-in one. A case another reviewer already labelled
differently keeps that label, and this one is kept beside it as a second opinion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.errors import InvalidField, TriageError
from shared.events import Publisher
from shared.feedback import LABELS, FeedbackRequest, submit_feedback
from shared.payloads import parse_json_object
from shared.review.store import CaseStore, check_case_key

__all__ = ["MAX_LABEL_BODY_BYTES", "LabelRequest", "parse_label", "submit_label"]

MAX_LABEL_BODY_BYTES = 8 * 1024


@dataclass(frozen=True)
class LabelRequest:
    key: str
    label: str


def parse_label(body: bytes) -> LabelRequest:
    """`{"key": <input key>, "label": "pneumonia"|"normal"}`; 400 for bad JSON, 422 for a bad field."""
    payload = parse_json_object(body, '{"key", "label"}')
    key = check_case_key(payload.get("key"))
    label = payload.get("label")
    if label not in LABELS:
        raise InvalidField(f"label: expected one of {', '.join(LABELS)}")
    return LabelRequest(key, label)


def submit_label(store: CaseStore, publisher: Publisher, request: LabelRequest, *, reviewer: str) -> dict[str, Any]:
    """Store and announce the label (404 unknown case, 409 a failed triage); the answer says what happened."""
    case = store.case(request.key)
    if case.result_status != "ok" or case.request_id is None:
        raise TriageError("key: this image could not be triaged, so there is no prediction to label",
                          code="not_labellable", status=409)
    outcome = submit_feedback(store.storage, FeedbackRequest(request_id=case.request_id, label=request.label,
                                                             reviewer=reviewer, authenticated_as=reviewer), publisher)
    record = outcome.record
    answer: dict[str, Any] = {"status": outcome.status, "key": case.key, "label": request.label,
                              "reviewer": reviewer, "request_id": case.request_id}
    if outcome.status == "second_opinion":
        answer["message"] = (f"Already labelled {record.get('label')} by {record.get('reviewer')}; your label "
                             f"{request.label} is kept as a second opinion, not overwritten.")
    else:
        answer["message"] = f"Saved: {request.label}"
    return answer
