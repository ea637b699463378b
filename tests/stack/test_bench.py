"""Benchmark pieces that need no stack: the ONNX floor and the faithfulness AUCs on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from load_tests.bench import bare_onnx, faithfulness, parameter_count
from tests.functions.tiny_model import build_tiny_model_dir, gray_image, png_bytes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("bench") / "model")


def test_bare_onnx_floor_reports_percentiles(model_dir):
    floor = bare_onnx(model_dir / "model.onnx", png_bytes(), 28, runs=20)
    run = floor["session_run"]
    assert floor["runs"] == 20 and 0 < run["p50"] <= run["p99"] <= run["max"]
    assert parameter_count(model_dir / "model.onnx") > 10_000


def test_faithfulness_scores_rollout_occlusion_and_random(model_dir, tmp_path):
    images = [gray_image(28, seed) for seed in range(2)]
    report = faithfulness(str(model_dir), tmp_path / "cache", images, steps=8)
    assert report["images"] == 2 and set(report) >= {"rollout", "occlusion", "random"}
    for name in ("rollout", "occlusion", "random"):
        assert 0.0 <= report[name]["deletion_auc"] <= 1.0 and 0.0 <= report[name]["insertion_auc"] <= 1.0
    assert np.isfinite(report["rollout"]["insertion_auc"])
