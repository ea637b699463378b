"""Evaluation metrics on tiny cases with known answers, and `triage evaluate` on a real ONNX model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training_jobs.evaluate import compute_metrics, expected_calibration_error

torch.set_num_threads(1)
LABELS = np.array([0, 0, 1, 1])
PROBS = np.array([0.1, 0.6, 0.4, 0.9])


def test_metrics_at_threshold_half():
    m = compute_metrics(LABELS, PROBS, threshold=0.5)
    assert m["confusion"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    assert m["accuracy"] == m["sensitivity"] == m["specificity"] == m["f1"] == m["precision"] == 0.5
    assert m["auc"] == pytest.approx(0.75)  # 3 of the 4 (normal, pneumonia) pairs are ranked right
    assert m["n"] == 4 and m["threshold"] == 0.5


def test_lower_threshold_trades_specificity_for_sensitivity():
    m = compute_metrics(LABELS, PROBS, threshold=0.3)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.5
    assert m["per_class"]["pneumonia"] == {"precision": pytest.approx(2 / 3), "recall": 1.0,
                                           "f1": pytest.approx(0.8), "support": 2}
    assert m["per_class"]["normal"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}


def test_expected_calibration_error_known_answer():
    # Confidences 0.9 (both right) and 0.6 (both wrong): 0.5 * |1 - 0.9| + 0.5 * |0 - 0.6| = 0.35.
    assert expected_calibration_error(LABELS, PROBS) == pytest.approx(0.35)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == pytest.approx(0.0)


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="3 labels vs 4"):
        compute_metrics(np.array([0, 1, 1]), PROBS, 0.5)


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    from training_jobs.export import export_model_dir
    from training_jobs.phantom import write_phantom_npz
    from training_jobs.vit import ViT, ViTConfig

    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    export_model_dir(ViT(ViTConfig(image_size=28, patch=7, dim=32, depth=2, heads=2)), root / "model",
                     threshold=0.5)
    data = write_phantom_npz(root / "phantom.npz", n_train=8, n_val=8, n_test=12, size=28)
    return root / "model" / "model.onnx", data


def test_cli_prints_json_last_and_writes_plots(model_and_data, tmp_path, capsys):
    from triage.cli import main

    model, data = model_and_data
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "test", "--json",
                 "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert {"auc", "accuracy", "sensitivity", "specificity", "f1", "ece", "threshold", "n"} <= set(result)
    assert result["n"] == 12 and result["threshold"] == 0.5
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "calibration.png", "confusion.png", "pr.png", "roc.png"]
    assert (tmp_path / "plots" / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_name_the_file(model_and_data, tmp_path, capsys):
    from triage.cli import main

    model, data = model_and_data
    assert main(["evaluate", "--model", str(tmp_path / "none.onnx"), "--data", str(data)]) == 2
    assert "none.onnx" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err


def test_cli_logs_to_an_active_mlflow_run(model_and_data, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from triage.cli import main

    model, data = model_and_data
    monkeypatch.chdir(tmp_path)
    # set_tracking_uri is process-global: have monkeypatch restore it so later tests see their own store.
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("eval", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        assert main(["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "p")]) == 0
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.metrics["test_n"] == 12 and "test_auc" in logged.data.metrics
    assert (tmp_path / "artifacts" / run.info.run_id / "artifacts" / "plots" / "test" / "roc.png").is_file()
