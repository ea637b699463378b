"""dead_letter over HTTP: an undeliverable CloudEvent from Knative ends up in the dead-letter bucket, once."""

from __future__ import annotations

import base64

import pytest

from shared.dead_letter import subscriber_name
from shared.events import event_to_binary_http, object_created_event
from shared.storage import Storage


def failed_event():
    event = object_created_event("inference-inputs", "scan-1.png", "etag-1", 10)
    event["knativeerrordest"] = "http://ingest.xray-triage.svc.cluster.local/"
    event["knativeerrorcode"] = "503"
    event["knativeerrordata"] = base64.b64encode(b'{"error": {"code": "not_ready"}}').decode()
    return event


def test_an_undeliverable_event_is_stored_with_its_error(client_for, storage: Storage) -> None:
    client = client_for("dead_letter")
    event = failed_event()
    headers, body = event_to_binary_http(event)
    response = client.post("/", data=body, headers=headers)
    assert response.status_code == 200, response.get_data()
    key = response.get_json()["key"]
    assert key == f"ingest/{event['id']}.json"
    stored = storage.get_json("dead-letter", key)
    assert stored["event"]["type"] == "io.minio.object.created"
    assert stored["event"]["data"]["key"] == "scan-1.png"
    assert stored["error"] == {"status": "503", "message": '{"error": {"code": "not_ready"}}'}
    assert "knativeerrordest" not in stored["event"]
    # Knative may deliver to the sink twice: the same key is overwritten, not duplicated.
    assert client.post("/", data=body, headers=headers).status_code == 200
    assert [k for k in storage.list_keys("dead-letter", "ingest/") if event["id"] in k] == [key]


def test_a_body_that_is_no_cloudevent_is_a_400(client_for, storage: Storage) -> None:
    response = client_for("dead_letter").post("/", data=b"{}", content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_event"


@pytest.mark.parametrize(
    ("destination", "name"),
    [
        ("http://ingest.ns.svc.cluster.local/", "ingest"),
        ("http://127.0.0.1:8101/", "127.0.0.1-8101"),
        (None, "unknown"),
    ],
)
def test_subscriber_name_is_key_safe(destination: str | None, name: str) -> None:
    assert subscriber_name(destination) == name
