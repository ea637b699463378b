"""predict over HTTP (functions-framework test client): every input form, every bad input, health and metrics."""

from __future__ import annotations

import gzip
import io
import json
import time

import pytest

from shared.security import parse_networks
from tests.functions.bad_requests import (
    BODY_LIMIT,
    assert_every_bad_request_is_a_json_4xx,
)
from tests.functions.tiny_model import dicom_bytes, jpeg_bytes, png_bytes
from tests.local_http import LocalServer

PREDICTION_KEYS = {"request_id", "assessable", "label", "probability", "threshold", "urgent", "model", "timings_ms"}


@pytest.fixture
def client(client_for):
    return client_for("predict", MAX_BODY_BYTES=str(BODY_LIMIT))


def assert_prediction(response, case: str) -> dict:
    assert response.status_code == 200, f"{case}: {response.get_data()[:300]!r}"
    body = response.get_json()
    assert set(body) == PREDICTION_KEYS, case
    assert body["label"] in ("normal", "pneumonia") and 0.0 <= body["probability"] <= 1.0, case
    assert body["model"]["name"] == "xray-vit", case
    assert body["timings_ms"]["total"] >= body["timings_ms"]["inference"] > 0, case
    return body


def test_each_input_form_gets_a_prediction(client, server: LocalServer, monkeypatch) -> None:
    png = png_bytes()
    probabilities = {}
    for case, kwargs in [
        ("raw png", {"data": png, "content_type": "image/png"}),
        ("raw 16-bit png", {"data": png_bytes(bits=16), "content_type": "image/png"}),
        ("raw jpeg", {"data": jpeg_bytes(), "content_type": "image/jpeg"}),
        ("raw dicom", {"data": dicom_bytes(), "content_type": "application/dicom"}),
        (
            "multipart",
            {"data": {"file": (io.BytesIO(png), "x.png", "image/png")}, "content_type": "multipart/form-data"},
        ),
    ]:
        probabilities[case] = assert_prediction(client.post("/", **kwargs), case)["probability"]
    monkeypatch.setattr(client.module, "URL_ALLOW_NETWORKS", parse_networks("127.0.0.1/32"))
    probabilities["url"] = assert_prediction(client.post("/", json={"url": server.url + "/image.png"}), "url")[
        "probability"
    ]
    # the same image through every envelope is the same prediction
    assert probabilities["raw png"] == probabilities["multipart"] == probabilities["url"]


def test_a_gzip_or_deflate_body_gets_the_prediction_of_the_body_itself(client) -> None:
    import zlib

    png = png_bytes()
    plain = assert_prediction(client.post("/", data=png, content_type="image/png"), "plain")["probability"]
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for coding, body in [("gzip", gzip.compress(png)), ("x-gzip", gzip.compress(png)),
                         ("deflate", zlib.compress(png)),  # RFC 9110's deflate: the zlib format
                         ("deflate", raw_deflate.compress(png) + raw_deflate.flush()),  # what some clients send
                         ("Identity", png)]:
        response = client.post("/", data=body, content_type="image/png", headers={"Content-Encoding": coding})
        assert assert_prediction(response, coding)["probability"] == plain, coding
    refused = client.post("/", data=png, content_type="image/png", headers={"Content-Encoding": "br"})
    assert refused.status_code == 415 and "'br' is not accepted" in refused.get_json()["error"]["message"]
    bomb = gzip.compress(b"\x89PNG" + b"\0" * 50 * BODY_LIMIT)  # ~2.5 MB decoded from a few kB sent
    response = client.post("/", data=bomb, content_type="image/png", headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413 and "decodes (gzip) to over the limit" in response.get_json()["error"]["message"]


def test_the_callers_request_id_is_only_a_correlation_field(client, storage) -> None:
    # Contract change (issue 8): request ids are the service's own; X-Request-Id comes back as `correlation_id`.
    from shared.feedback import record_request
    from shared.names import request_batch_of, request_record_key
    from shared.request_records import load_request_record

    record_request(storage, {"request_id": "ingest-1", "label": "normal"}, source="ingest")  # another's record
    answers = [
        client.post("/", data=png_bytes(), content_type="image/png", headers={"X-Request-Id": caller_id}).get_json()
        for caller_id in ("study-42", "study-42", "ingest-1")
    ]
    client.module.REQUESTS.flush()
    assert [a["correlation_id"] for a in answers] == ["study-42", "study-42", "ingest-1"]
    ids = [a["request_id"] for a in answers]
    assert len(set(ids)) == 3 and not {"study-42", "ingest-1"} & set(ids)
    # `<batch>.<uuid4 hex>`: the batch its record is written in, and 128 random bits nobody can guess from another id
    batch, _, own = ids[0].partition(".")
    assert request_batch_of(ids[0]) == batch and len(own) == 32 and int(own, 16) >= 0
    records = [load_request_record(storage, i) for i in ids]  # two requests, two records
    assert [(r["source"], r["correlation_id"]) for r in records] == [("predict", "study-42")] * 2 + [
        ("predict", "ingest-1")]
    assert storage.get_json("triage-state", request_record_key("ingest-1"))["source"] == "ingest"  # untouched
    assert not storage.exists("triage-state", request_record_key("study-42"))


def test_every_bad_input_is_a_4xx_json_error_and_the_process_keeps_serving(
    client, server: LocalServer, monkeypatch
) -> None:
    assert_every_bad_request_is_a_json_4xx(client, server.url, monkeypatch)
    assert_prediction(client.post("/", data=png_bytes(), content_type="image/png"), "after the bad inputs")


def test_other_methods_and_paths_are_json_errors(client) -> None:
    assert client.get("/").status_code == 405
    assert (
        client.post("/nowhere", data=png_bytes(), content_type="image/png").get_json()["error"]["code"] == "not_found"
    )


def test_healthz_is_not_ready_until_the_model_is_loaded(client) -> None:
    first = client.get("/healthz")
    assert first.status_code == 503 and first.get_json()["error"]["code"] == "not_ready"
    deadline = time.monotonic() + 30
    while client.get("/healthz").status_code != 200:
        assert time.monotonic() < deadline, "the model never became ready"
        time.sleep(0.05)


def test_a_model_that_cannot_load_is_a_503_and_health_stays_unready(client_for, tmp_path) -> None:
    broken = client_for("predict", MODEL_URI=str(tmp_path / "no-model"))
    response = broken.post("/", data=png_bytes(), content_type="image/png")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "model_unavailable"
    assert "no such file" in response.get_json()["error"]["message"]
    assert broken.get("/healthz").status_code == 503


def test_metrics_has_latency_predictions_model_cold_start_and_upload_to_result(client) -> None:
    assert_prediction(client.post("/", data=png_bytes(), content_type="image/png"), "png")
    client.post("/", data=b"", content_type="image/png")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert 'triage_request_duration_seconds_bucket{function="predict",le="0.5",route="/",status="200"}' in text
    assert 'triage_request_duration_seconds_count{function="predict",route="/",status="400"}' in text
    assert "triage_predictions_total{label=" in text
    assert 'triage_model_info{name="xray-vit",revision="champion",version="unversioned"} 1.0' in text
    cold_start = next(line for line in text.splitlines() if line.startswith("triage_cold_start_seconds "))
    assert float(cold_start.split()[1]) > 0
    assert "# TYPE triage_upload_to_result_seconds histogram" in text


def test_a_real_functions_framework_process_loads_after_the_fork_and_serves(tiny_model_dir, tmp_path,
                                                                            api_tokens) -> None:
    """gunicorn builds the app in its master and forks a worker: the session must be created in the worker."""
    import urllib.request

    from tests.functions.function_process import function_process

    env = {"MODEL_URI": str(tiny_model_dir), "MODEL_CACHE_DIR": str(tmp_path),
           "API_TOKENS_URI": str(api_tokens[0].path)}
    with function_process("predict", env, server="functions_framework") as base:
        headers = {"Content-Type": "image/png", "Authorization": f"Bearer {api_tokens[1]}"}
        request = urllib.request.Request(f"{base}/", data=png_bytes(), headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            assert set(json.loads(response.read())) == PREDICTION_KEYS


def test_each_prediction_is_indexed_so_feedback_can_find_it(client, s3_server: str) -> None:
    from shared.config import Settings
    from shared.request_records import load_request_record
    from shared.storage import Storage

    storage = Storage.from_settings(Settings.from_env({"S3_ENDPOINT_URL": s3_server}))
    storage.ensure_buckets()
    request_id = assert_prediction(client.post("/", data=png_bytes(), content_type="image/png"), "png")["request_id"]
    client.module.REQUESTS.flush()
    assert load_request_record(storage, request_id)["source"] == "predict"


def test_importing_predict_and_loading_its_model_imports_neither_mlflow_nor_boto3(tiny_model_dir, tmp_path) -> None:
    """Cold start: what the first answer does not need is not imported (S3 only with the first request record;
    heatmaps, the micro-batcher, the stand-ins' HTTP and gunicorn's asyncio control server not at all), and ONNX
    Runtime's telemetry uploader is off."""
    import subprocess
    import sys

    from shared.config import PROJECT_ROOT

    script = (
        "import os, sys, functions_framework, triage.stack.function_server\n"
        "app = functions_framework.create_app('predict', 'functions/predict/main.py')\n"
        "from shared.model import get_model\n"
        "from shared.config import Settings\n"
        "get_model(Settings.from_env()).ensure_loaded()\n"
        "lazy = {'shared.explain', 'shared.batching', 'triage.stack.httpd', 'h11', 'asyncio'} & set(sys.modules)\n"
        "print(os.environ.get('ORT_DISABLE_TELEMETRY'))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'boto3', 'botocore', 's3transfer'} | lazy))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "MODEL_URI": str(tiny_model_dir), "MODEL_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-2:] == ["1", "[]"]


@pytest.mark.parametrize(("body", "said"), [
    ({}, 'expected a JSON object {"url"'), ([1], 'expected a JSON object {"url"'),
    ({"url": 5}, "must be a non-empty string (got a JSON int)"), ({"url": None}, "(got null)"),
    ({"url": "  "}, "(got an empty string)"), ({"url": ["https://x"]}, "(got a JSON list)"),
])
def test_a_url_body_that_is_no_url_is_a_422_saying_what_came(client, body, said: str) -> None:
    response = client.post("/", json=body)
    assert response.status_code == 422 and said in response.get_json()["error"]["message"]
