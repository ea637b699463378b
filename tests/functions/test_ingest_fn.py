"""ingest over HTTP: a CloudEvent for an upload → result in S3, reply or published event, idempotent, 5xx on S3 down."""

from __future__ import annotations

import pytest

from shared.events import (
    HEATMAP_REQUESTED,
    PREDICTION_CREATED,
    event_from_http,
    event_to_binary_http,
    object_created_event,
)
from shared.storage import Storage
from tests.functions.tiny_model import j2k_bomb_dicom_bytes, jpeg_dicom_bytes, png_bytes


def uploaded(storage: Storage, key: str, data: bytes):
    etag = storage.put_bytes("inference-inputs", key, data)
    return object_created_event("inference-inputs", key, etag, len(data))


def deliver(client, event):
    headers, body = event_to_binary_http(event)
    return client.post("/", data=body, headers=headers)


def test_an_upload_event_gets_a_result_and_a_knative_reply_and_a_redelivery_changes_nothing(
    client_for, storage, s3_server
):
    client = client_for("ingest", DEID_SECRET="ingest-fn-secret", S3_ENDPOINT_URL=s3_server, K_SINK="")
    event = uploaded(storage, "p1.png", png_bytes(28))

    response = deliver(client, event)

    assert response.status_code == 200, response.data
    request = event_from_http(dict(response.headers), response.data)  # what the broker publishes next
    assert request["type"] == HEATMAP_REQUESTED and request["source"] == "triage/ingest"
    result = storage.get_json("inference-results", "p1.png.json")
    assert request.get_data()["request_id"] == result["request_id"] and result["heatmap"]["status"] == "pending"
    assert result["model"]["name"] == "xray-vit" and "version" in result["model"]

    picture = deliver(client, request)  # the heatmap step: its own delivery, its own reply
    assert picture.status_code == 200, picture.data
    reply = event_from_http(dict(picture.headers), picture.data)
    assert reply["type"] == PREDICTION_CREATED and reply.get_data()["heatmap"]["status"] == "ready"
    assert storage.get_json("inference-results", "p1.png.json")["heatmap"]["status"] == "ready"

    for redelivered in (event, request):
        again = deliver(client, redelivered)
        assert again.status_code == 200 and "ce-type" not in again.headers
        assert again.get_json()["status"] == "duplicate"
    assert b"triage_upload_to_result_seconds_count" in client.get("/metrics").data


def test_with_k_sink_the_prediction_event_is_published_once(client_for, storage, s3_server, sink):
    client = client_for("ingest", DEID_SECRET="ingest-fn-secret", S3_ENDPOINT_URL=s3_server, K_SINK=sink.url)
    event = uploaded(storage, "p2.png", png_bytes(28, seed=5))
    assert deliver(client, event).get_json()["status"] == "created"
    [request] = sink.events
    assert deliver(client, request).get_json()["status"] == "completed"
    assert deliver(client, event).get_json()["status"] == "duplicate"
    assert [e["type"] for e in sink.events] == [HEATMAP_REQUESTED, PREDICTION_CREATED]


@pytest.mark.parametrize("name, data", [("junk.png", b"not an image at all"),
                                        ("aborts-its-decoder.dcm", jpeg_dicom_bytes(hostile=True)),
                                        ("codestream-bomb.dcm", j2k_bomb_dicom_bytes())])
def test_a_bad_image_is_a_final_200_with_an_error_result(client_for, storage, s3_server, name, data):
    client = client_for("ingest", DEID_SECRET="ingest-fn-secret", S3_ENDPOINT_URL=s3_server, K_SINK="")
    response = deliver(client, uploaded(storage, name, data))
    assert response.status_code == 200
    assert response.get_json()["status"] == "error"
    assert storage.get_json("inference-results", f"{name}.json")["error"]["code"] == "bad_image"


def test_s3_down_is_a_5xx_so_the_broker_retries(client_for):
    client = client_for("ingest", DEID_SECRET="ingest-fn-secret", S3_ENDPOINT_URL="http://127.0.0.1:9", K_SINK="")
    response = deliver(client, object_created_event("inference-inputs", "a.png", "e", 1))
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "storage_unavailable"


def test_requests_that_are_not_object_events_are_400(client_for, s3_server):
    client = client_for("ingest", DEID_SECRET="ingest-fn-secret", S3_ENDPOINT_URL=s3_server, K_SINK="")
    assert client.post("/", data=b"hello", content_type="text/plain").status_code == 400
    wrong = event_to_binary_http(object_created_event("inference-inputs", "a.png", "e", 1))
    headers = {**wrong[0], "ce-type": "something.else"}
    assert client.post("/", data=wrong[1], headers=headers).get_json()["error"]["code"] == "bad_event"


def test_healthz_is_ready_once_the_model_is_loaded(client_for, s3_server):
    client = client_for("ingest", DEID_SECRET="ingest-fn-secret", S3_ENDPOINT_URL=s3_server, K_SINK="")
    client.module.MODEL.ensure_loaded()
    assert client.get("/healthz").status_code == 200


def test_an_event_whose_key_is_not_a_string_is_a_422_and_writes_nothing(client_for, storage, s3_server):
    import json

    client = client_for("ingest", DEID_SECRET="ingest-fn-secret", S3_ENDPOINT_URL=s3_server, K_SINK="")
    etag = storage.put_bytes("inference-inputs", "typed.png", png_bytes(28))
    before = set(storage.list_keys("inference-results"))
    for data in ({"bucket": "inference-inputs", "key": {"a": 1}, "etag": etag},
                 {"bucket": "inference-inputs", "key": "typed.png", "etag": etag, "size": "28"},
                 {"bucket": ["inference-inputs"], "key": "typed.png", "etag": etag}):
        headers = {"ce-specversion": "1.0", "ce-id": "typed", "ce-source": "minio:inference-inputs",
                   "ce-type": "io.minio.object.created", "content-type": "application/json"}

        response = client.post("/", data=json.dumps(data), headers=headers)

        assert response.status_code == 422, response.data
        assert response.get_json()["error"]["code"] == "invalid_field"
    assert set(storage.list_keys("inference-results")) == before  # no "{'a': 1}.json", nothing at all
