"""No object key in any log line of the functions (issue 8, item 9): hospitals name files after patients.

Every request and event path a key travels through — ingest (result, error result, stale, gone), monitor, feedback,
retrain, dead-letter, predict and explain with a multipart file name — runs with a patient-named key under caplog.
The results themselves keep the key (they live in the hospital's storage); only log records are checked here.
"""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest

from shared.events import event_to_binary_http, object_created_event, prediction_created_event
from shared.retrain import LocalLauncher
from shared.storage import Storage
from tests.functions.tiny_model import png_bytes

PATIENT = "Doe^John_1970-01-01"
KEY = f"ward3/{PATIENT}.png"


def deliver(client, event):
    headers, body = event_to_binary_http(event)
    return client.post("/", data=body, headers=headers)


def uploaded(storage: Storage, key: str, data: bytes):
    etag = storage.put_bytes("inference-inputs", key, data)
    return object_created_event("inference-inputs", key, etag, len(data))


def auth(client) -> dict[str, str]:
    token = getattr(client, "api_token", None)
    return {"Authorization": f"Bearer {token}"} if token else {}


def assert_no_key_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "nothing was logged: the paths did not run"
    leaked = [f"{r.name}: {r.getMessage()}" for r in caplog.records if PATIENT in r.getMessage() or "Doe" in (
        r.exc_text or "")]
    assert not leaked and PATIENT not in caplog.text


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO)  # what a function logs in production (library DEBUG lines are not enabled there)
    return caplog


def test_the_event_paths_never_log_a_key(client_for, storage: Storage, s3_server: str, caplog_info) -> None:
    ingest = client_for("ingest", S3_ENDPOINT_URL=s3_server, K_SINK="")
    event = uploaded(storage, KEY, png_bytes(28))
    assert deliver(ingest, event).status_code == 200
    result = storage.get_json("inference-results", f"{KEY}.json")
    assert result["key"] == KEY  # the result keeps it
    bad = uploaded(storage, f"ward3/{PATIENT}-2.png", b"not an image")
    assert deliver(ingest, bad).get_json()["status"] == "error"
    stale = object_created_event("inference-inputs", KEY, "0" * 32, 10)
    assert deliver(ingest, stale).get_json()["status"] == "stale"
    gone = object_created_event("inference-inputs", f"ward3/{PATIENT}-gone.png", "1" * 32, 10)
    assert deliver(ingest, gone).get_json()["status"] == "error"

    monitor = client_for("monitor", S3_ENDPOINT_URL=s3_server)
    assert deliver(monitor, prediction_created_event(result)).status_code == 200

    feedback = client_for("feedback", S3_ENDPOINT_URL=s3_server, K_SINK="", REVIEWER_TOKENS="ann:tok-ann")
    labelled = feedback.post("/", json={"request_id": result["request_id"], "label": "normal"},
                             headers={"Authorization": "Bearer tok-ann"})
    assert labelled.status_code in (200, 502)  # 502: no sink here; the label is stored either way

    retrain = client_for("retrain", S3_ENDPOINT_URL=s3_server, RETRAIN_MIN_LABELS="1", RETRAIN_BACKEND="local")
    retrain.module.LAUNCHER = LocalLauncher(retrain.module.CONFIG, runner=lambda command, env: "pid:1")
    storage.put_bytes("raw-data", f"{PATIENT}.npz", b"npz")
    raw = object_created_event("raw-data", f"{PATIENT}.npz", "2" * 32, 3)
    assert deliver(retrain, raw).get_json()["status"] == "launched"

    dead_letter = client_for("dead_letter", S3_ENDPOINT_URL=s3_server)
    event["knativeerrordest"] = "http://ingest.xray-triage.svc.cluster.local/"
    event["knativeerrorcode"] = "500"
    event["knativeerrordata"] = base64.b64encode(f"no such key {KEY}".encode()).decode()
    assert deliver(dead_letter, event).status_code == 200

    assert_no_key_logged(caplog_info)


def test_the_minio_source_adapter_never_logs_a_key_even_when_the_sink_fails(client_for, caplog_info) -> None:
    client = client_for("minio_source", WEBHOOK_TOKEN="hook", K_SINK="http://127.0.0.1:9/")  # nothing listens
    record = {"eventName": "s3:ObjectCreated:Put", "eventTime": "2026-11-26T10:00:00Z",
              "s3": {"bucket": {"name": "inference-inputs"}, "object": {"key": KEY, "size": 10, "eTag": "e1"}}}
    body = json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": f"inference-inputs/{KEY}", "Records": [record]})
    response = client.post("/", data=body, headers={"Authorization": "Bearer hook"}, content_type="application/json")
    assert response.status_code == 502  # MinIO sends it again
    assert_no_key_logged(caplog_info)


@pytest.mark.parametrize("name", ["predict", "explain"])
def test_a_multipart_file_named_after_the_patient_is_never_logged(client_for, name: str, caplog_info) -> None:
    client = client_for(name)
    for data in (png_bytes(28), b"not an image"):
        form = {"file": (io.BytesIO(data), f"{PATIENT}.png", "image/png")}
        response = client.post("/", data=form, content_type="multipart/form-data", headers=auth(client))
        assert response.status_code in (200, 400), response.get_data()[:200]
    client.module.REQUESTS.flush()
    assert_no_key_logged(caplog_info)
