"""feedback over HTTP against the local S3 server and a real local event sink."""

from __future__ import annotations

import httpx
import pytest

from shared.config import Settings
from shared.events import FEEDBACK_RECEIVED
from shared.feedback import record_request
from shared.storage import Storage

TOKENS = "ann:tok-ann,bob:tok-bob"



@pytest.fixture
def storage(s3_server: str) -> Storage:
    httpx.post(f"{s3_server}/moto-api/reset")
    store = Storage.from_settings(Settings(s3_endpoint_url=s3_server))
    store.ensure_buckets()
    record_request(
        store,
        {"request_id": "req-1", "label": "normal", "model": {"name": "xray-vit", "version": "2"}},
        source="predict",
    )
    return store


@pytest.fixture
def client(client_for, sink, storage, s3_server):
    return client_for("feedback", S3_ENDPOINT_URL=s3_server, K_SINK=sink.url, REVIEWER_TOKENS=TOKENS)


def post(client, payload, token: str | None = "tok-ann"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/", json=payload, headers=headers)


def test_a_label_is_stored_and_announced_once(client, sink, storage):
    response = post(client, {"request_id": "req-1", "label": "pneumonia", "reviewer": "ann"})

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "stored"
    assert storage.get_json("feedback", "req-1.json")["label"] == "pneumonia"
    assert [e["type"] for e in sink.events] == [FEEDBACK_RECEIVED]

    again = post(client, {"request_id": "req-1", "label": "pneumonia", "reviewer": "ann"})
    assert (again.status_code, again.get_json()["status"]) == (200, "unchanged")
    assert len(sink.events) == 1

    changed = post(client, {"request_id": "req-1", "label": "normal"})
    assert changed.get_json()["status"] == "updated"
    assert len(sink.events) == 2


@pytest.mark.parametrize(
    "payload, token, status, code",
    [
        ({"request_id": "nope", "label": "normal"}, "tok-ann", 404, "not_found"),
        ({"request_id": "req-1", "label": "cat"}, "tok-ann", 422, "invalid_field"),
        ({"request_id": "req-1", "label": "normal"}, None, 401, "unauthorized"),
        ({"request_id": "req-1", "label": "normal"}, "tok-eve", 401, "unauthorized"),
        ({"request_id": "req-1", "label": "normal", "reviewer": "a b"}, "tok-ann", 422, "invalid_field"),
    ],
)
def test_bad_requests_get_the_design_error_and_store_nothing(client, sink, storage, payload, token, status, code):
    response = post(client, payload, token)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    assert storage.list_keys("feedback") == []
    assert sink.events == []


def test_without_configured_tokens_everyone_is_forbidden(client_for, sink, storage, s3_server):
    client = client_for("feedback", S3_ENDPOINT_URL=s3_server, K_SINK=sink.url, REVIEWER_TOKENS="")
    response = post(client, {"request_id": "req-1", "label": "normal"})
    assert (response.status_code, response.get_json()["error"]["code"]) == (403, "forbidden")


def test_invalid_json_is_400(client):
    response = client.post(
        "/", data=b"{oops", headers={"Authorization": "Bearer tok-ann"}, content_type="application/json"
    )
    assert (response.status_code, response.get_json()["error"]["code"]) == (400, "invalid_json")


def test_sink_down_is_502_and_the_label_is_kept(client, sink, storage):
    sink.status = 503
    response = post(client, {"request_id": "req-1", "label": "normal"})
    assert response.status_code == 502
    assert storage.get_json("feedback", "req-1.json")["label"] == "normal"


def test_healthz_and_metrics(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
