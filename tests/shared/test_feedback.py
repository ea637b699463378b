"""Radiologist feedback against a real local S3 server: validation, auth, storage, idempotent events."""

from __future__ import annotations

import json

import pytest

from shared.errors import Forbidden, InvalidField, NotFound, Unauthorized, UserError
from shared.events import FEEDBACK_RECEIVED, EventDeliveryError
from shared.feedback import RequestRecorder, parse_feedback, record_request, submit_feedback
from shared.names import request_record_key
from shared.storage import Storage
from tests.functions.event_sink import RecordingSink

TOKENS = "ann:tok-ann,bob:tok-bob"





def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def answered(storage: Storage, request_id: str = "req-1", label: str = "normal") -> None:
    record_request(
        storage,
        {
            "request_id": request_id,
            "label": label,
            "probability": 0.2,
            "urgent": False,
            "model": {"name": "xray-vit", "version": "3"},
        },
        source="predict",
    )


def test_label_is_stored_with_the_prediction_it_corrects_and_announced(storage):
    answered(storage)
    sink = RecordingSink()
    request = parse_feedback(body(request_id="req-1", label="pneumonia", reviewer="ann"), "Bearer tok-ann", TOKENS)

    outcome = submit_feedback(storage, request, sink.publisher())

    assert outcome.status == "stored"
    stored = storage.get_json("feedback", "req-1.json")
    assert stored["label"] == "pneumonia" and stored["reviewer"] == "ann" and stored["time"]
    assert stored["predicted_label"] == "normal" and stored["model"]["version"] == "3"
    assert stored["notified"] is True and stored["authenticated_as"] == "ann"
    [event] = sink.events
    assert event["type"] == FEEDBACK_RECEIVED and event["source"] == "triage/feedback"
    assert event.get_data()["key"] == "feedback/req-1.json"


def test_same_label_again_is_200_without_a_new_event_and_a_changed_label_emits_one(storage):
    answered(storage)
    sink = RecordingSink()
    first = parse_feedback(body(request_id="req-1", label="normal"), "Bearer tok-bob", TOKENS)
    submit_feedback(storage, first, sink.publisher())

    assert submit_feedback(storage, first, sink.publisher()).status == "unchanged"
    assert len(sink.events) == 1

    changed = parse_feedback(body(request_id="req-1", label="pneumonia"), "Bearer tok-bob", TOKENS)
    assert submit_feedback(storage, changed, sink.publisher()).status == "updated"
    assert storage.get_json("feedback", "req-1.json")["label"] == "pneumonia"
    assert storage.get_json("feedback", "req-1.json")["previous_label"] == "normal"
    assert [e.get_data()["label"] for e in sink.events] == ["normal", "pneumonia"]
    assert sink.events[0]["id"] != sink.events[1]["id"]


def test_sink_failure_keeps_the_label_and_a_resend_delivers_the_same_event_once(storage):
    answered(storage)
    sink = RecordingSink()
    sink.status = 503
    request = parse_feedback(body(request_id="req-1", label="normal"), "Bearer tok-ann", TOKENS)
    with pytest.raises(EventDeliveryError):
        submit_feedback(storage, request, sink.publisher())
    assert storage.get_json("feedback", "req-1.json")["notified"] is False

    sink.status = 202
    assert submit_feedback(storage, request, sink.publisher()).status == "stored"
    assert submit_feedback(storage, request, sink.publisher()).status == "unchanged"
    assert len(sink.events) == 1


def test_unknown_request_id_is_404_and_stores_nothing(storage):
    request = parse_feedback(body(request_id="never-seen", label="normal"), "Bearer tok-ann", TOKENS)
    with pytest.raises(NotFound) as excinfo:
        submit_feedback(storage, request, RecordingSink().publisher())
    assert excinfo.value.status == 404
    assert storage.list_keys("feedback") == []


@pytest.mark.parametrize(
    "payload, field",
    [
        (body(request_id="req-1", label="maybe"), "label"),
        (body(request_id="req-1"), "label"),
        (body(request_id="../../etc", label="normal"), "request_id"),
        (body(request_id=7, label="normal"), "request_id"),
        (body(request_id="req-1", label="normal", reviewer=["ann"]), "reviewer"),
        (b"[]", "body"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(payload, field):
    with pytest.raises(InvalidField, match=field) as excinfo:
        parse_feedback(payload, "Bearer tok-ann", TOKENS)
    assert excinfo.value.status == 422


def test_invalid_json_is_400():
    with pytest.raises(UserError) as excinfo:
        parse_feedback(b"{oops", "Bearer tok-ann", TOKENS)
    assert (excinfo.value.status, excinfo.value.code) == (400, "invalid_json")


def test_tokens_missing_wrong_or_unconfigured_are_refused():
    ok = body(request_id="req-1", label="normal", reviewer="ann")
    with pytest.raises(Unauthorized):
        parse_feedback(ok, None, TOKENS)
    with pytest.raises(Unauthorized):
        parse_feedback(ok, "Bearer not-a-token", TOKENS)
    with pytest.raises(Forbidden):  # nothing configured: nobody gets in
        parse_feedback(ok, "Bearer tok-ann", None)


def test_the_reviewer_named_in_the_body_is_kept_beside_the_token_name():
    shared_token = parse_feedback(body(request_id="req-1", label="normal", reviewer="dr.lee"), "Bearer tok-bob", TOKENS)
    assert (shared_token.reviewer, shared_token.authenticated_as) == ("dr.lee", "bob")
    unnamed = parse_feedback(body(request_id="req-1", label="normal"), "Bearer tok-bob", TOKENS)
    assert unnamed.reviewer == "bob"


def test_record_request_indexes_a_prediction_under_its_request_id(storage):
    answered(storage, "abc", "pneumonia")
    record = storage.get_json("triage-state", request_record_key("abc"))
    assert record["label"] == "pneumonia" and record["source"] == "predict"
    with pytest.raises(ValueError):
        record_request(storage, {"request_id": "../x"}, source="predict")


def test_request_recorder_indexes_predictions_in_the_background_so_they_accept_feedback(storage):
    recorder = RequestRecorder(storage, source="predict")
    model = {"name": "xray-vit", "version": "1"}
    first = recorder.record({"request_id": "sync-1", "label": "pneumonia", "model": model})
    recorder.record({"request_id": "../bad"})  # not a safe key: answered unrecorded; the writer keeps going
    recorder.record({"request_id": "sync-2", "label": "normal"})
    recorder.flush()

    [batch] = storage.list_keys("triage-state", "requests/")  # both records in one batch object, one write
    assert batch.startswith("requests/batches/")
    assert sorted(r["label"] for r in storage.get_json("triage-state", batch)["records"].values()) == [
        "normal", "pneumonia"]
    request = parse_feedback(body(request_id=first["request_id"], label="normal"), "Bearer tok-ann", TOKENS)
    outcome = submit_feedback(storage, request, RecordingSink().publisher())
    assert outcome.status == "stored" and outcome.record["predicted_label"] == "pneumonia"


def test_a_label_sent_right_after_its_answer_waits_for_the_lingering_record_instead_of_a_404(storage):
    recorder = RequestRecorder(storage, source="predict", linger_s=0.3)
    answer = recorder.record({"request_id": "a" * 32, "label": "pneumonia"})
    request = parse_feedback(body(request_id=answer["request_id"], label="normal"), "Bearer tok-ann", TOKENS)
    outcome = submit_feedback(storage, request, RecordingSink().publisher())  # before the batch is written
    assert outcome.status == "stored" and outcome.record["predicted_label"] == "pneumonia"
