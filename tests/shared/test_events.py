"""CloudEvents of design §4: ids, attributes, HTTP encodings both ways, and the publisher against a local sink."""

from __future__ import annotations

import json

import httpx
import pytest

from shared.config import Settings
from shared.errors import UserError
from shared.events import (
    MODEL_REGISTERED,
    OBJECT_CREATED,
    EventDeliveryError,
    EventPublisher,
    NullPublisher,
    event_from_http,
    event_to_binary_http,
    event_to_structured_http,
    feedback_received_event,
    model_registered_event,
    object_created_event,
    publisher_from_settings,
    reply_response,
)


def test_object_created_event_has_design_attributes_and_a_deterministic_id():
    first = object_created_event("inference-inputs", "scans/a b.png", '"abc123"', 42, "2026-01-02T03:04:05Z")
    again = object_created_event("inference-inputs", "scans/a b.png", "abc123", 42, "2026-01-02T03:04:05Z")
    other_version = object_created_event("inference-inputs", "scans/a b.png", "def456", 42)

    assert first["type"] == OBJECT_CREATED
    assert first["source"] == "minio:inference-inputs"
    assert first["bucket"] == "inference-inputs"
    assert first["specversion"] == "1.0"
    assert first.get_data() == {
        "bucket": "inference-inputs",
        "key": "scans/a b.png",
        "etag": "abc123",
        "size": 42,
        "event_time": "2026-01-02T03:04:05Z",
    }
    assert first["id"] == again["id"]  # quoted and bare ETags are the same object version
    assert first["id"] != other_version["id"]


@pytest.mark.parametrize("encode", [event_to_binary_http, event_to_structured_http])
def test_events_survive_both_http_encodings(encode):
    event = object_created_event("raw-data", "x.npz", "e1", 7, "2026-01-02T03:04:05Z")
    headers, body = encode(event)

    parsed = event_from_http(headers, body)

    assert parsed["id"] == event["id"]
    assert parsed["type"] == OBJECT_CREATED
    assert parsed["bucket"] == "raw-data"
    assert parsed.get_data()["key"] == "x.npz"


def test_binary_encoding_puts_attributes_in_ce_headers():
    headers, body = event_to_binary_http(model_registered_event(3, "run-1"))
    assert headers["ce-type"] == MODEL_REGISTERED
    assert headers["ce-source"] == "triage/retrain"
    assert json.loads(body) == {"name": "xray-vit", "version": "3", "run_id": "run-1"}


def test_feedback_event_id_changes_with_the_label_and_not_with_a_resend():
    record = {"request_id": "r1", "label": "normal", "reviewer": "ann", "time": "2026-01-01T00:00:00Z"}
    assert feedback_received_event(record)["id"] == feedback_received_event(dict(record))["id"]
    assert feedback_received_event(record)["id"] != feedback_received_event({**record, "label": "pneumonia"})["id"]


@pytest.mark.parametrize(
    "headers, body",
    [
        ({}, b"not json"),
        ({"content-type": "application/json"}, b'{"hello": "world"}'),
        ({"content-type": "application/cloudevents+json"}, b'{"specversion": "0.1", "type": "x"}'),
        ({"ce-specversion": "1.0", "ce-type": "x"}, b"{}"),  # no id / source
    ],
)
def test_a_request_that_is_not_a_cloudevent_is_a_400(headers, body):
    with pytest.raises(UserError) as excinfo:
        event_from_http(headers, body)
    assert excinfo.value.status == 400
    assert excinfo.value.code == "bad_event"


def test_reply_response_is_a_binary_event_a_broker_can_parse():
    event = model_registered_event("5", None)
    body, status, headers = reply_response(event)
    assert status == 200
    assert event_from_http(headers, body)["id"] == event["id"]


def test_publisher_posts_binary_events_to_the_sink():
    received = []

    def sink(request: httpx.Request) -> httpx.Response:
        received.append(event_from_http(dict(request.headers), request.content))
        return httpx.Response(202)

    publisher = EventPublisher("http://broker.local/", transport=httpx.MockTransport(sink))
    event = object_created_event("inference-inputs", "a.png", "e", 1)
    publisher.publish(event)

    assert [e["id"] for e in received] == [event["id"]]


@pytest.mark.parametrize("answer", [httpx.Response(500), httpx.Response(404)])
def test_publisher_raises_a_502_error_when_the_sink_refuses(answer):
    publisher = EventPublisher("http://broker.local/", transport=httpx.MockTransport(lambda request: answer))
    with pytest.raises(EventDeliveryError) as excinfo:
        publisher.publish(object_created_event("inference-inputs", "a.png", "e", 1))
    assert excinfo.value.status == 502


def test_publisher_raises_when_the_sink_is_unreachable():
    publisher = EventPublisher("http://127.0.0.1:9/", timeout_s=1.0)  # discard port: nothing listens
    with pytest.raises(EventDeliveryError, match="unreachable"):
        publisher.publish(object_created_event("inference-inputs", "a.png", "e", 1))


def test_publisher_from_settings_is_a_null_publisher_without_k_sink(caplog):
    publisher = publisher_from_settings(Settings())
    assert isinstance(publisher, NullPublisher)
    with caplog.at_level("INFO"):
        publisher.publish(
            feedback_received_event({"request_id": "r1", "label": "normal", "reviewer": "dr-secret-name", "time": "t"})
        )
    assert "triage.feedback.received" in caplog.text
    assert "dr-secret-name" not in caplog.text  # data is never logged
    assert isinstance(publisher_from_settings(Settings(k_sink="http://broker/")), EventPublisher)


def test_binary_encoding_names_json_data_even_without_a_datacontenttype():
    from cloudevents.http import CloudEvent

    headers, body = event_to_binary_http(CloudEvent({"type": "t", "source": "s"}, {"a": 1}))
    assert {k.lower(): v for k, v in headers.items()}["content-type"] == "application/json"
    assert json.loads(body) == {"a": 1}
    assert event_to_binary_http(CloudEvent({"type": "t", "source": "s"}, None))[1] == b""


# --- data types are checked at the edge: a 422 naming the field (issue 8) -----------------------------------------
@pytest.mark.parametrize(
    ("event_type", "data", "field"),
    [
        ("io.minio.object.created", {"bucket": "inference-inputs", "key": {"a": 1}, "etag": "e"}, "key"),
        ("io.minio.object.created", {"bucket": 3, "key": "k", "etag": "e"}, "bucket"),
        ("io.minio.object.created", {"bucket": "b", "key": "k", "etag": ["e"]}, "etag"),
        ("io.minio.object.created", {"bucket": "b", "key": "k", "etag": "e", "size": True}, "size"),
        ("io.minio.object.created", {"bucket": "b", "key": "k", "etag": "e", "size": -1}, "size"),
        ("triage.prediction.created", {"probability": "0.9", "label": "normal"}, "probability"),
        ("triage.prediction.created", {"probability": 0.9, "label": {"x": 1}}, "label"),
        ("triage.feedback.received", {"request_id": 12, "label": "normal"}, "request_id"),
        ("triage.model.registered", {"version": {"v": 1}}, "version"),
    ],
)
def test_event_data_of_the_wrong_type_is_a_422_naming_the_field(event_type: str, data: dict, field: str) -> None:
    from shared.events import InvalidEventData, event_data, make_event

    with pytest.raises(InvalidEventData) as caught:
        event_data(make_event(event_type, "test", data))
    assert caught.value.status == 422 and f"'{field}'" in caught.value.message


def test_event_data_of_the_right_types_passes() -> None:
    from shared.events import event_data, make_event, model_registered_event, object_created_event

    assert event_data(object_created_event("b", "k", "e", 3), "bucket", "key", "etag")["key"] == "k"
    assert event_data(model_registered_event(4, None), "version")["version"] == "4"
    assert event_data(make_event("triage.prediction.created", "t", {"probability": 1, "label": "normal"}))


@pytest.mark.parametrize("attribute", ["type", "id", "time", "source"])
def test_a_structured_event_with_an_attribute_that_is_an_object_is_a_422(attribute: str) -> None:
    import json

    from shared.events import InvalidEventData, event_from_http

    body = {"specversion": "1.0", "type": "t", "source": "s", "id": "1", "time": "2026-01-01T00:00:00Z", "data": {}}
    body[attribute] = {"a": 1}
    with pytest.raises(InvalidEventData):
        event_from_http({"content-type": "application/cloudevents+json"}, json.dumps(body))
