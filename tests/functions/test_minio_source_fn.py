"""minio_source over HTTP: MinIO webhook bodies and SNS envelopes in, CloudEvents out to a real local sink."""

from __future__ import annotations

import base64
import json
import threading
import time

import boto3
import httpx
import pytest
from werkzeug.serving import make_server

from shared.events import OBJECT_CREATED

TOKEN = "hook-secret"



@pytest.fixture
def client(client_for, sink):
    return client_for("minio_source", WEBHOOK_TOKEN=TOKEN, K_SINK=sink.url)


def record(bucket: str, key: str, etag: str = "abc123", name: str = "s3:ObjectCreated:Put") -> dict:
    return {
        "eventName": name,
        "eventTime": "2026-11-26T10:00:00Z",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 10, "eTag": etag}},
    }


def minio_body(*records: dict) -> str:
    return json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": "k", "Records": list(records)})


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_minio_webhook_posts_one_cloudevent_per_created_object(client, sink):
    body = minio_body(
        record("inference-inputs", "a+b.png"),
        record("inference-inputs", "c.png", "e2"),
        record("inference-inputs", "old.png", name="s3:ObjectRemoved:Delete"),
    )
    response = client.post("/", data=body, headers=bearer(), content_type="application/json")

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"status": "forwarded", "events": 2, "skipped": 1}
    assert [e.get_data()["key"] for e in sink.events] == ["a b.png", "c.png"]
    event = sink.events[0]
    assert (event["type"], event["source"], event["bucket"]) == (
        OBJECT_CREATED,
        "minio:inference-inputs",
        "inference-inputs",
    )


def test_sns_envelope_with_basic_credentials_is_accepted(client, sink):
    envelope = {
        "Type": "Notification",
        "MessageId": "m",
        "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Message": json.dumps({"Records": [record("raw-data", "set.npz", name="ObjectCreated:Put")]}),
    }
    basic = "Basic " + base64.b64encode(f"webhook:{TOKEN}".encode()).decode()
    response = client.post(
        "/", data=json.dumps(envelope), headers={"Authorization": basic}, content_type="text/plain; charset=UTF-8"
    )
    assert response.status_code == 200
    assert [(e["bucket"], e.get_data()["key"]) for e in sink.events] == [("raw-data", "set.npz")]


@pytest.mark.parametrize("headers, status", [({}, 401), (bearer("wrong"), 401), ({"Authorization": "Token x"}, 401)])
def test_missing_or_wrong_token_is_refused_and_nothing_is_published(client, sink, headers, status):
    response = client.post("/", data=minio_body(record("inference-inputs", "a.png")), headers=headers)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert sink.events == []


def test_without_a_configured_token_every_call_is_forbidden(client_for, sink):
    client = client_for("minio_source", K_SINK=sink.url, WEBHOOK_TOKEN="")
    assert client.post("/", data=minio_body(), headers=bearer()).status_code == 403


def test_sink_refusing_gives_502_so_minio_retries(client, sink):
    sink.status = 500
    response = client.post("/", data=minio_body(record("inference-inputs", "a.png")), headers=bearer())
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "event_delivery_failed"


def test_without_k_sink_the_notification_is_refused_not_dropped(client_for):
    client = client_for("minio_source", WEBHOOK_TOKEN=TOKEN, K_SINK="")
    response = client.post("/", data=minio_body(record("inference-inputs", "a.png")), headers=bearer())
    assert response.status_code == 503


@pytest.mark.parametrize("body", ["not json", json.dumps({"Records": [{"eventName": "s3:ObjectCreated:Put"}]})])
def test_malformed_bodies_are_400(client, body):
    response = client.post("/", data=body, headers=bearer())
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_notification"


def test_healthz_and_metrics(client):
    assert client.get("/healthz").status_code == 200
    assert b"triage_request_duration_seconds" in client.get("/metrics").data


def test_a_real_s3_to_sns_notification_from_the_local_server_reaches_the_sink(client, sink, s3_server):
    """moto's S3 publishes to an SNS topic whose HTTP subscription is this adapter (the local stack's path)."""
    server = make_server("127.0.0.1", 0, client.application, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        options = {"endpoint_url": s3_server, "region_name": "us-east-1"}
        s3, sns = boto3.client("s3", **options), boto3.client("sns", **options)
        s3.create_bucket(Bucket="sns-path-inputs")
        topic = sns.create_topic(Name="uploads")["TopicArn"]
        sns.subscribe(
            TopicArn=topic, Protocol="http", Endpoint=f"http://webhook:{TOKEN}@127.0.0.1:{server.server_port}/"
        )
        s3.put_bucket_notification_configuration(
            Bucket="sns-path-inputs",
            NotificationConfiguration={"TopicConfigurations": [{"TopicArn": topic, "Events": ["s3:ObjectCreated:*"]}]},
        )
        put = s3.put_object(Bucket="sns-path-inputs", Key="ward 1/x.png", Body=b"img")

        deadline = time.monotonic() + 10
        while not sink.events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sink.events) == 1
        data = sink.events[0].get_data()
        assert (data["bucket"], data["key"], data["etag"]) == (
            "sns-path-inputs",
            "ward 1/x.png",
            put["ETag"].strip('"'),
        )
    finally:
        server.shutdown()
        httpx.post(f"{s3_server}/moto-api/reset")  # drop the topic and the notification that point at this server


@pytest.mark.parametrize(
    ("where", "value"),
    [("key", {"a": 1}), ("key", 7), ("bucket", ["inference-inputs"]), ("size", "10"), ("eTag", {"x": 1}),
     ("s3.object", "a.png"), ("s3.bucket", "inference-inputs")],
)
def test_a_notification_field_of_the_wrong_type_is_a_422_and_nothing_is_published(client, sink, where, value):
    item = record("inference-inputs", "a.png")
    if where == "bucket":
        item["s3"]["bucket"]["name"] = value
    elif where.startswith("s3."):
        item["s3"][where[3:]] = value
    else:
        item["s3"]["object"][where] = value

    response = client.post("/", data=minio_body(item), headers=bearer(), content_type="application/json")

    assert response.status_code == 422, response.data
    assert response.get_json()["error"]["code"] == "invalid_field"
    assert sink.events == []
