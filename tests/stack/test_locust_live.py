"""`triage loadtest` (Locust at a fixed rate) and `triage send-live` against one local stack.

One stack for the module (S3, relay, broker, predict, minio-source, ingest, gateway; a tiny random-weight model),
a token rate above the asked one (the default 10/s per token would answer 429: the client's limit).
"""

from __future__ import annotations

import csv
import json
import time

import pytest

from load_tests.loadtest import users_for
from shared.names import INPUT_BUCKET, RESULT_BUCKET, result_key
from tests.functions.tiny_model import build_tiny_model_dir, png_bytes
from triage.cli import main
from triage.stack import Stack, StackConfig, StackPorts

RATE = 4.0  # requests/s in all: 2 predict + 2 uploads a second, for 60 s
DURATION_S = 60


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("locust-stack")
    config = StackConfig(run_dir=root / "run", model_uri=str(build_tiny_model_dir(root / "model")),
                         functions=("predict", "minio_source", "ingest"), ports=StackPorts.free(), mlflow=False,
                         prometheus=False, extra_env={"THREADS": "4", "API_RATE_PER_S": "200", "API_RATE_BURST": "50"})
    with Stack(config, echo=None) as running:
        yield running


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for seed in range(6):
        (folder / f"case-{seed}.png").write_bytes(png_bytes(seed=seed))
    return folder


def _objects(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=INPUT_BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_a_fixed_rate_locust_run_has_no_errors_and_writes_its_report(stack, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack.env()["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack.env()["AWS_SECRET_ACCESS_KEY"])
    out = tmp_path / "report"
    code = main(["loadtest", "--url", stack.urls["gateway"], "--rates", f"{RATE:g}", "--duration", str(DURATION_S),
                 "--mix", "predict,upload", "--images", str(images), "--token", stack.api_token,
                 "--s3-url", stack.urls["s3"], "--key-prefix", "locust", "--out", str(out)])
    assert code == 0, (out / f"rate-{RATE:g}.log").read_text()[-2000:]
    for name in (f"rate-{RATE:g}_stats.csv", f"rate-{RATE:g}_failures.csv", f"rate-{RATE:g}_stats_history.csv",
                 "loadtest.json", "latency-vs-rate.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "latency-vs-rate.png").read_bytes().startswith(b"\x89PNG")
    report = json.loads((out / "loadtest.json").read_text())
    [line] = report["rates"]
    assert line["requests"] > 0 and line["failures"] == 0
    assert line["asked_rps"] == RATE and abs(line["achieved_rps"] - RATE) <= 0.15 * RATE
    predict, upload = line["by_request"]["/predict"], line["by_request"][f"PutObject {INPUT_BUCKET}"]
    assert min(predict["requests"], upload["requests"]) >= 0.8 * RATE / 2 * DURATION_S
    assert 0 < predict["p50_ms"] <= predict["p99_ms"]
    with (out / f"rate-{RATE:g}_stats.csv").open() as handle:
        assert {row["Name"] for row in csv.DictReader(handle)} >= {"/predict", "Aggregated"}
    # Every upload the report counts landed in the input bucket, under the asked prefix (plus at most one per
    # upload user that was in flight when the run stopped: landed, not yet counted).
    upload_users = users_for(RATE, 2)[0] // 2
    assert upload["requests"] <= len(_objects(stack.s3(), "locust/")) <= upload["requests"] + upload_users
    assert "report:" in capsys.readouterr().out


def test_send_live_lands_each_upload_and_its_result_appears(stack, images, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack.env()["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack.env()["AWS_SECRET_ACCESS_KEY"])
    started = time.monotonic()
    code = main(["send-live", "--rate", "2", "--duration", "3", "--images", str(images), "--s3-url",
                 stack.urls["s3"], "--prefix", "hospital-a", "--wait-results", "60", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["asked"] == summary["sent"] == 6 and summary["failed"] == 0
    assert summary["results"]["found"] == 6
    assert 2.0 <= summary["wall_s"] <= time.monotonic() - started  # paced: the 6th upload starts at 2.5 s
    s3 = stack.s3()
    keys = _objects(s3, "hospital-a/")
    assert len(keys) == 6 and all(key.endswith(".png") and "case-" not in key for key in keys)
    for key in keys:
        result = json.loads(s3.get_object(Bucket=RESULT_BUCKET, Key=result_key(key))["Body"].read())
        assert result["label"] in ("normal", "pneumonia")


def test_send_live_without_images_sends_synthetic_phantoms(stack, capsys, monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT_URL", stack.urls["s3"])  # the endpoint from the usual environment
    assert main(["send-live", "--rate", "4", "--duration", "1", "--prefix", "phantoms", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sent"] == 4
    s3 = stack.s3()
    keys = _objects(s3, "phantoms/")
    assert len(keys) == 4
    body = s3.get_object(Bucket=INPUT_BUCKET, Key=keys[0])["Body"].read()
    assert body.startswith(b"\x89PNG")
