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


def test_rank_auc_is_sklearns_auc_with_ties():
    from sklearn.metrics import roc_auc_score

    from training_jobs.evaluate import rank_auc

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    probs = np.round(rng.random(300) * 0.5 + labels * 0.3, 2)  # rounded: many ties
    assert rank_auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert np.isnan(rank_auc(np.ones(4), PROBS))


def test_bootstrap_intervals_bracket_the_estimate_and_narrow_with_more_data():
    from training_jobs.evaluate import bootstrap_intervals

    rng = np.random.default_rng(0)

    def sample(n):
        labels = rng.integers(0, 2, n)
        return labels, np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)

    labels, probs = sample(200)
    point = compute_metrics(labels, probs, 0.5)
    small = bootstrap_intervals(labels, probs, 0.5, resamples=400)
    for name in ("auc", "sensitivity", "specificity"):
        lo, hi = small[f"{name}_ci95"]
        assert lo < point[name] < hi
    assert bootstrap_intervals(labels, probs, 0.5, resamples=400) == small  # seeded: the same intervals again
    big_labels, big_probs = sample(3000)
    big = bootstrap_intervals(big_labels, big_probs, 0.5, resamples=400)
    width = {name: v[1] - v[0] for name, v in small.items()}
    assert all(big[name][1] - big[name][0] < width[name] / 2 for name in width)


def _evaluate_json(capsys, model, data, split):
    from triage.cli import main

    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", split, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_takes_a_test_only_npz_and_reports_intervals(model_and_data, tmp_path, capsys):
    model, data = model_and_data
    with np.load(data) as full:
        np.savez(tmp_path / "test_only.npz", test_images=full["test_images"], test_labels=full["test_labels"])
    result = _evaluate_json(capsys, model, tmp_path / "test_only.npz", "test")
    assert result["n"] == 12
    for name in ("auc", "sensitivity", "specificity"):
        lo, hi = result[f"{name}_ci95"]
        assert 0.0 <= lo <= hi <= 1.0
    from triage.cli import main

    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "test_only.npz"), "--split", "val"]) == 2
    assert "no split 'val'" in capsys.readouterr().err


@pytest.mark.parametrize("file_format", ["jpeg", "dicom"])
def test_cli_takes_a_kaggle_style_folder_of_jpegs_or_dicoms(model_and_data, tmp_path, capsys, file_format):
    from training_jobs.phantom import write_phantom_folder

    model, _ = model_and_data
    root = write_phantom_folder(tmp_path / "kaggle", patients={"train": 2, "val": 1, "test": 2}, size=28,
                                file_format=file_format)
    suffix = ".dcm" if file_format == "dicom" else ".jpeg"
    on_disk = {split: len(list((root / split).rglob(f"*{suffix}"))) for split in ("train", "val", "test")}
    assert _evaluate_json(capsys, model, root, "test")["n"] == on_disk["test"]  # the test folder as it is
    assert _evaluate_json(capsys, model, root, "all")["n"] == sum(on_disk.values())
