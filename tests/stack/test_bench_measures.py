"""Issue 12's measurements without the stack: the cold-start floor, a burst's flag and heatmap times, the report."""

from __future__ import annotations

import threading
import time

import boto3
import numpy as np
import pytest

from load_tests.bench import TARGETS, cold_start_floor, upload_burst
from load_tests.images import LoadImage
from load_tests.report import burst_lines, cold_floor, targets
from shared.names import INPUT_BUCKET, RESULT_BUCKET, heatmap_key, result_key
from tests.functions.tiny_model import build_tiny_model_dir, png_bytes


def test_the_cold_start_floor_times_a_bare_process_opening_the_model(tmp_path):
    model_dir = build_tiny_model_dir(tmp_path / "model")
    floor = cold_start_floor(model_dir / "model.onnx", 28, runs=1)
    assert len(floor["samples_s"]) == 1 and 0.0 < floor["median_s"] < 30.0


def test_a_burst_times_each_flag_and_heatmap_from_its_upload(storage, s3_server):
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    stop = threading.Event()

    def fake_ingest() -> None:
        """Writes each result at once and its heatmap 0.3 s later, as ingest now does."""
        seen: dict[str, float] = {}
        while not stop.is_set():
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=INPUT_BUCKET):
                for item in page.get("Contents", []):
                    if item["Key"] not in seen:
                        seen[item["Key"]] = time.monotonic()
                        s3.put_object(Bucket=RESULT_BUCKET, Key=result_key(item["Key"]), Body=b"{}")
            for key, at in seen.items():
                if time.monotonic() - at > 0.3:
                    s3.put_object(Bucket=RESULT_BUCKET, Key=heatmap_key(key), Body=b"png")
            time.sleep(0.01)

    worker = threading.Thread(target=fake_ingest, daemon=True)
    worker.start()
    try:
        image = LoadImage("a.png", png_bytes(), "image/png", np.zeros((2, 2), np.uint8))
        burst = upload_burst(s3, [image], count=5, timeout_s=30)
    finally:
        stop.set()
        worker.join(5)
    assert burst["n"] == 5 and burst["heatmaps"] == 5
    assert 0.0 < burst["flag_p50_s"] <= burst["flag_p95_s"] <= burst["flag_max_s"]
    assert burst["heatmap_p95_s"] >= 0.3 > burst["flag_p50_s"]  # the flag comes before the picture


def test_the_report_shows_the_floor_the_burst_and_their_targets():
    cold = {"median_s": 0.45, "samples_s": [0.45], "floor": {"median_s": 0.27, "samples_s": [0.27]}}
    assert "function adds 0.18 s" in cold_floor(cold) and cold_floor({"median_s": 1.0}) == ""
    burst = {"n": 40, "flag_p50_s": 0.4, "flag_p95_s": 1.2, "flag_max_s": 1.5, "heatmap_p95_s": 3.0, "heatmaps": 40}
    assert "p95 1.2 s" in burst_lines(burst)[0] and burst_lines(None) == []
    report = {"warm": {name: {"p50_ms": 4.0, "p99_ms": 9.0} for name in ("function_c1", "gateway_c1")},
              "cold_start": cold, "upload_to_result": {"p95_s": 0.5}, "upload_burst": burst}
    table = targets(report)
    assert table["burst_flag_p95_s"] == (TARGETS["burst_flag_p95_s"], 1.2)
    assert table["cold_start_s"] == (pytest.approx(0.3), 0.45)
