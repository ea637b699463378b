"""A reviewer's label through the feedback path: stored, announced, and a second opinion never overwrites."""

from __future__ import annotations

import json

import pytest

from shared.errors import InvalidField, NotFound, TriageError, UserError
from shared.feedback import FeedbackRequest, submit_feedback
from shared.names import FEEDBACK_BUCKET, FEEDBACK_RECEIVED, feedback_key
from shared.review.labels import LabelRequest, parse_label, submit_label
from tests.functions.event_sink import RecordingSink
from tests.shared.review.cases import put_case


def test_a_label_is_stored_as_feedback_with_the_signed_in_reviewer_and_announced(store, storage):
    body = put_case(storage, "one.png", label="normal")
    sink = RecordingSink()
    answer = submit_label(store, sink.publisher(), LabelRequest("one.png", "pneumonia"), reviewer="ann")
    assert answer["status"] == "stored" and answer["message"] == "Saved: pneumonia"
    stored = storage.get_json(FEEDBACK_BUCKET, feedback_key(body["request_id"]))
    assert (stored["label"], stored["reviewer"], stored["authenticated_as"], stored["predicted_label"]) == (
        "pneumonia", "ann", "ann", "normal")
    assert [e["type"] for e in sink.events] == [FEEDBACK_RECEIVED]
    assert store.case("one.png").review.reviewer == "ann"


def test_another_reviewers_different_label_is_kept_as_a_second_opinion_not_overwritten(store, storage):
    body = put_case(storage, "one.png", label="normal")
    sink = RecordingSink()
    submit_label(store, sink.publisher(), LabelRequest("one.png", "normal"), reviewer="ann")
    answer = submit_label(store, sink.publisher(), LabelRequest("one.png", "pneumonia"), reviewer="bob")
    assert answer["status"] == "second_opinion"
    assert "second opinion" in answer["message"] and "ann" in answer["message"]
    stored = storage.get_json(FEEDBACK_BUCKET, feedback_key(body["request_id"]))
    assert (stored["label"], stored["reviewer"]) == ("normal", "ann")
    assert [(o["label"], o["reviewer"]) for o in stored["second_opinions"]] == [("pneumonia", "bob")]
    assert len(sink.events) == 1  # the label that counts did not change
    again = submit_label(store, sink.publisher(), LabelRequest("one.png", "pneumonia"), reviewer="bob")
    assert again["status"] == "second_opinion"
    assert len(storage.get_json(FEEDBACK_BUCKET, feedback_key(body["request_id"]))["second_opinions"]) == 1
    # The first reviewer changing their own mind is an update, and the second opinion stays.
    changed = submit_label(store, sink.publisher(), LabelRequest("one.png", "pneumonia"), reviewer="ann")
    assert changed["status"] == "updated" and len(sink.events) == 2
    stored = storage.get_json(FEEDBACK_BUCKET, feedback_key(body["request_id"]))
    assert stored["label"] == "pneumonia" and stored["second_opinions"][0]["reviewer"] == "bob"
    assert [o["reviewer"] for o in store.case("one.png").review.second_opinions] == ["bob"]


def test_the_feedback_function_path_keeps_second_opinions_too(storage):
    body = put_case(storage, "one.png")
    sink = RecordingSink()
    submit_feedback(storage, FeedbackRequest(body["request_id"], "normal", "ann", "ann"), sink.publisher())
    outcome = submit_feedback(storage, FeedbackRequest(body["request_id"], "pneumonia", "bob", "ward"),
                              sink.publisher())
    assert outcome.status == "second_opinion" and outcome.record["label"] == "normal"


def test_unknown_and_failed_cases_store_nothing(store, storage):
    put_case(storage, "bad.png", status="error")
    sink = RecordingSink()
    with pytest.raises(NotFound):
        submit_label(store, sink.publisher(), LabelRequest("missing.png", "normal"), reviewer="ann")
    with pytest.raises(TriageError) as raised:
        submit_label(store, sink.publisher(), LabelRequest("bad.png", "normal"), reviewer="ann")
    assert raised.value.status == 409
    assert list(storage.iter_keys(FEEDBACK_BUCKET)) == [] and sink.events == []


@pytest.mark.parametrize(
    ("body", "error"),
    [(b"{", UserError), (b"[]", InvalidField), (json.dumps({"key": "a.png", "label": "maybe"}).encode(), InvalidField),
     (json.dumps({"label": "normal"}).encode(), InvalidField)],
)
def test_parse_label_refuses_bad_bodies(body, error):
    with pytest.raises(error):
        parse_label(body)
