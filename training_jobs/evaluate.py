"""Evaluate an exported ONNX model on a data split: metrics at the stored threshold, ECE, 95 % intervals, plots.

`compute_metrics` is the pure metric math (numpy + sklearn), used by `triage evaluate` and by training;
`bootstrap_intervals` the stratified bootstrap of AUC, sensitivity and specificity that `triage evaluate` reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import UserError
from shared.modelcard import ModelCard, ModelCardError, calibrated_probability

SPLITS = ("train", "val", "test", "final_eval", "all")
BOOTSTRAP_RESAMPLES = 1000


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE: confidence max(p, 1-p) in n_bins equal-width bins, |accuracy - confidence| weighted by size."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    predicted = (probs >= 0.5).astype(np.int64)
    confidence = np.where(predicted == 1, probs, 1.0 - probs)
    correct = (predicted == labels).astype(np.float64)
    # Confidence lies in [0.5, 1]; bins over [0.5, 1] so none is empty by construction of the range.
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def compute_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float, n_bins: int = 10) -> dict[str, Any]:
    """Metrics of P(pneumonia) `probs` against `labels` (0/1) when `probs >= threshold` means pneumonia."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if len(labels) != len(probs) or len(labels) == 0:
        raise ValueError(f"compute_metrics: {len(labels)} labels vs {len(probs)} probabilities")
    predicted = (probs >= threshold).astype(np.int64)
    tp = int(((predicted == 1) & (labels == 1)).sum())
    tn = int(((predicted == 0) & (labels == 0)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())

    def ratio(a: int, b: int) -> float:
        return float(a / b) if b else 0.0

    per_class = {}
    for name, (hit, false_pos, miss) in {"normal": (tn, fn, fp), "pneumonia": (tp, fp, fn)}.items():
        precision, recall = ratio(hit, hit + false_pos), ratio(hit, hit + miss)
        f1 = ratio(2 * hit, 2 * hit + false_pos + miss)
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": hit + miss}
    both = len(np.unique(labels)) == 2
    return {
        "n": int(len(labels)),
        "threshold": float(threshold),
        "auc": float(roc_auc_score(labels, probs)) if both else float("nan"),
        "accuracy": ratio(tp + tn, len(labels)),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": per_class["pneumonia"]["precision"],
        "f1": per_class["pneumonia"]["f1"],
        "ece": expected_calibration_error(labels, probs, n_bins),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "per_class": per_class,
    }


def rank_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half): the same number as sklearn's, fast enough to
    bootstrap. NaN without both classes."""
    labels = np.asarray(labels).astype(bool).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.asarray(probs, dtype=np.float64).ravel())
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_intervals(labels: np.ndarray, probs: np.ndarray, threshold: float, *,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, list[float]]:
    """95 % percentile intervals of AUC, sensitivity and specificity over stratified bootstrap resamples
    (each class resampled within itself, so every resample has both): `{"auc_ci95": [lo, hi], ...}`."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if not len(positives) or not len(negatives):
        nan = [float("nan"), float("nan")]
        return {"auc_ci95": nan, "sensitivity_ci95": list(nan), "specificity_ci95": list(nan)}
    rng = np.random.default_rng(seed)
    draws = {"auc": [], "sensitivity": [], "specificity": []}
    said = probs >= threshold
    for _ in range(resamples):
        pos = rng.choice(positives, len(positives))
        neg = rng.choice(negatives, len(negatives))
        both = np.concatenate([pos, neg])
        draws["auc"].append(rank_auc(labels[both], probs[both]))
        draws["sensitivity"].append(float(said[pos].mean()))
        draws["specificity"].append(float((~said[neg]).mean()))
    return {f"{name}_ci95": [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
            for name, values in draws.items()}


def drift_reference(probs: np.ndarray, x: np.ndarray) -> dict[str, list[int]]:
    """What the monitor compares live traffic with: this split's probability and input-intensity histograms."""
    from shared.imaging import mean_intensity
    from shared.monitor import INTENSITY_BINS, MonitorConfig, histogram

    return {
        "probability_histogram": histogram(np.asarray(probs).ravel(), MonitorConfig.bins),
        "intensity_histogram": histogram(mean_intensity(x), INTENSITY_BINS),
    }


def flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The scalar metrics (for MLflow and the model card)."""
    keys = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "ece", "threshold", "n")
    return {f"{prefix}{k}": float(metrics[k]) for k in keys}


def predict_probabilities(model_path: Path, x: np.ndarray, temperature: float) -> np.ndarray:
    from training_jobs.export import onnx_session, run_onnx

    logits, _ = run_onnx(onnx_session(model_path), np.ascontiguousarray(x, dtype=np.float32))
    return calibrated_probability(logits, temperature)


def evaluate_model(model_path: Path, x: np.ndarray, y: np.ndarray, *, card: ModelCard | None = None,
                   out_dir: Path | None = None, split: str = "test") -> dict[str, Any]:
    """Metrics (and, with out_dir, plots) of the ONNX model at `model_path` with its card's calibration."""
    card = card or ModelCard.load(model_path.parent)
    probs = predict_probabilities(model_path, x, card.temperature)
    metrics = compute_metrics(y, probs, card.threshold)
    metrics.update(bootstrap_intervals(y, probs, card.threshold))
    metrics.update(drift_reference(probs, x))
    if out_dir is not None:
        from training_jobs import plots

        metrics["plots"] = [str(p) for p in plots.evaluation_plots(y, probs, card.threshold, out_dir, title=split)]
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# CLI: triage evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path,
                        help="model.onnx or model.int8.onnx (model_card.json beside it)")
    parser.add_argument("--data", required=True,
                        help="data set holding the split: .npz (that split's keys are enough, e.g. a test-only file), "
                             "a folder [split/]NORMAL|PNEUMONIA/ of PNG, JPEG or DICOM files, or s3://bucket/prefix")
    parser.add_argument("--split", default="test", choices=SPLITS,
                        help="split to evaluate (default: test); 'all' takes every image of the data set")
    parser.add_argument("--out", type=Path, help="folder for the ROC / PR / confusion / calibration PNGs")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")


def run(args: argparse.Namespace) -> int:
    model_path: Path = args.model
    if model_path.is_dir():
        model_path = model_path / "model.onnx"
    if not model_path.is_file():
        raise UserError(f"{model_path}: model file not found")
    try:
        card = ModelCard.load(model_path.parent)
    except ModelCardError as exc:
        raise UserError(exc.message) from exc
    from training_jobs.data import load_eval_split

    split = load_eval_split(args.data, args.split, image_size=card.image_size)
    metrics = evaluate_model(model_path, split.x, split.y, card=card, out_dir=args.out, split=args.split)
    _log_to_active_mlflow_run(metrics, args.split, args.out)
    print(f"{model_path} on {args.split} ({metrics['n']} images, threshold {metrics['threshold']:.3f}):")
    print(f"  AUC {metrics['auc']:.4f}  accuracy {metrics['accuracy']:.4f}  sensitivity {metrics['sensitivity']:.4f}  "
          f"specificity {metrics['specificity']:.4f}  F1 {metrics['f1']:.4f}  ECE {metrics['ece']:.4f}")
    print("  95 % bootstrap intervals: " + "  ".join(
        f"{name} [{metrics[f'{name}_ci95'][0]:.4f}, {metrics[f'{name}_ci95'][1]:.4f}]"
        for name in ("auc", "sensitivity", "specificity")))
    for name, row in metrics["per_class"].items():
        print(f"  {name:<10} precision {row['precision']:.4f}  recall {row['recall']:.4f}  F1 {row['f1']:.4f}  "
              f"n {row['support']}")
    if args.out:
        print(f"  plots in {args.out}")
    if args.json:
        print(json.dumps({"model": str(model_path), "split": args.split, **metrics}))
    return 0


def _log_to_active_mlflow_run(metrics: dict[str, Any], split: str, out_dir: Path | None) -> None:
    import mlflow

    if mlflow.active_run() is None:
        return
    mlflow.log_metrics(flat_metrics(metrics, prefix=f"{split}_"))
    if out_dir is not None:
        mlflow.log_artifacts(str(out_dir), artifact_path=f"plots/{split}")
