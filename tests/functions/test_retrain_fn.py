"""retrain over HTTP: CloudEvents in, one training launch per batch (local backend, recording runner)."""

from __future__ import annotations

import pytest

from shared.events import event_to_binary_http, event_to_structured_http, feedback_received_event, object_created_event
from shared.retrain import LocalLauncher
from shared.storage import Storage


@pytest.fixture
def client_and_calls(client_for, storage, s3_server):
    client = client_for("retrain", S3_ENDPOINT_URL=s3_server, RETRAIN_MIN_LABELS="2", RETRAIN_BACKEND="local")
    calls: list[dict[str, str]] = []

    def runner(command, env) -> str:  # records the launch instead of training for a minute
        calls.append(dict(env))
        return f"pid:{len(calls)}"

    client.module.LAUNCHER = LocalLauncher(client.module.CONFIG, runner=runner)
    return client, calls


def label(storage: Storage, request_id: str) -> dict:
    record = {
        "request_id": request_id,
        "label": "pneumonia",
        "reviewer": "ann",
        "time": "2026-11-26T10:00:00Z",
        "key": f"feedback/{request_id}.json",
    }
    storage.put_json("feedback", f"{request_id}.json", record)
    return record


def send(client, event, structured: bool = False):
    headers, body = (event_to_structured_http if structured else event_to_binary_http)(event)
    return client.post("/", data=body, headers=headers)


def test_feedback_events_launch_training_once_at_the_threshold(client_and_calls, storage):
    client, calls = client_and_calls
    first = send(client, feedback_received_event(label(storage, "r1")))
    assert (first.status_code, first.get_json()["status"]) == (200, "waiting")

    event = feedback_received_event(label(storage, "r2"))
    launched = send(client, event, structured=True)
    assert launched.get_json()["status"] == "launched", launched.get_json()
    assert send(client, event).get_json()["status"] == "waiting"  # the broker redelivers the same event
    assert len(calls) == 1 and calls[0]["RETRAIN_BATCH_SIZE"] == "2"


def test_raw_data_uploads_count_and_inference_uploads_are_ignored(client_and_calls, storage):
    client, calls = client_and_calls
    ignored = send(client, object_created_event("inference-inputs", "a.png", "e", 1))
    assert ignored.get_json() == {"status": "ignored"}
    for key in ("set1.npz", "set2.npz"):
        storage.put_bytes("raw-data", key, b"x")
    assert send(client, object_created_event("raw-data", "set2.npz", "e", 1)).get_json()["status"] == "launched"
    assert len(calls) == 1


def test_a_body_that_is_not_a_cloudevent_is_400(client_and_calls):
    client, _ = client_and_calls
    response = client.post("/", data=b"{}", content_type="application/json")
    assert (response.status_code, response.get_json()["error"]["code"]) == (400, "bad_event")


def test_healthz_and_metrics(client_and_calls):
    client, _ = client_and_calls
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
