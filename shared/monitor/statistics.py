"""The monitor's statistics, pure: histograms, drift distances between histograms, and accuracy on labels.

Drift statistics (well known, on the 10-bin probability histogram): the population stability index
PSI = sum((a - e) * ln(a / e)) over bin proportions (< 0.1 stable, 0.1-0.25 moderate, > 0.25 major shift) and the
Kolmogorov-Smirnov distance between the binned CDFs; PSI also on the predicted-positive rate (2 bins).
Live accuracy: accuracy, sensitivity, specificity and Cohen's kappa of the model against radiologists' labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shared.names import CLASS_NAMES, POSITIVE

__all__ = [
    "INTENSITY_BINS",
    "LABELS",
    "POSITIVE",
    "UNVERSIONED",
    "histogram",
    "histogram_bin",
    "ks_distance",
    "live_accuracy",
    "psi",
    "ratio",
]

LABELS = CLASS_NAMES
UNVERSIONED = "unversioned"  # as shared.metrics.MODEL_INFO names a model without a registry version
INTENSITY_BINS = 10  # equal-width bins of mean input intensity over [0, 1]; training writes the card's with it


def histogram_bin(probability: float, bins: int) -> int:
    """Index of the equal-width bin of [0, 1] holding `probability` (1.0 falls in the last bin)."""
    return min(int(probability * bins), bins - 1)


def histogram(values: Iterable[float], bins: int) -> list[int]:
    """Counts of `values` (each in [0, 1]) per equal-width bin; training builds the card's references with it."""
    counts = [0] * bins
    for value in values:
        counts[histogram_bin(float(value), bins)] += 1
    return counts


def _proportions(counts: Sequence[float], eps: float) -> list[float]:
    total = float(sum(counts))
    if total <= 0:
        raise ValueError("a histogram with no counts has no distribution")
    # An empty bin would make ln(a / e) infinite; the usual fix is a small floor on each proportion.
    return [max(c / total, eps) for c in counts]


def psi(expected: Sequence[float], actual: Sequence[float], *, eps: float = 1e-4) -> float:
    """Population stability index of `actual` against `expected` (two histograms over the same bins)."""
    if len(expected) != len(actual):
        raise ValueError(f"psi: {len(expected)} reference bins vs {len(actual)} bins")
    e, a = _proportions(expected, eps), _proportions(actual, eps)
    return float(sum((ai - ei) * math.log(ai / ei) for ei, ai in zip(e, a, strict=True)))


def ks_distance(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Largest gap between the cumulative distributions of two histograms over the same bins."""
    if len(expected) != len(actual):
        raise ValueError(f"ks_distance: {len(expected)} reference bins vs {len(actual)} bins")
    e, a = _proportions(expected, 0.0), _proportions(actual, 0.0)
    gap = ce = ca = 0.0
    for ei, ai in zip(e, a, strict=True):
        ce, ca = ce + ei, ca + ai
        gap = max(gap, abs(ce - ca))
    return gap


def ratio(a: int, b: int) -> float | None:
    """a / b, None when b is 0 (a rate of nothing is unknown, not zero)."""
    return a / b if b else None


def _confusion_metrics(tp: int, tn: int, fp: int, fn: int) -> dict[str, Any]:
    n = tp + tn + fp + fn
    accuracy = ratio(tp + tn, n)
    agreement = None
    if n:
        chance = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n)
        agreement = 1.0 if chance >= 1.0 else ((tp + tn) / n - chance) / (1.0 - chance)
    return {
        "n": n,
        "accuracy": accuracy,
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "agreement": agreement,  # Cohen's kappa: agreement beyond what the label frequencies give by chance
        "confusion": {"tp": tp, "tn": tn, "fp": fp, "fn": fn},
    }


def live_accuracy(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity and agreement (kappa) per model version and overall.

    Each entry: `label` (the radiologist's), `predicted` (the model's) and `model_version`.
    """
    counts: dict[str, list[int]] = {}
    for entry in entries:
        cell = counts.setdefault(str(entry.get("model_version") or UNVERSIONED), [0, 0, 0, 0])
        truth, said = entry["label"] == POSITIVE, entry["predicted"] == POSITIVE
        cell[(0 if said else 1) if truth else (2 if said else 3)] += 1  # tp, fn, fp, tn
    by_version = {v: _confusion_metrics(tp=c[0], fn=c[1], fp=c[2], tn=c[3]) for v, c in sorted(counts.items())}
    total = [sum(c[i] for c in counts.values()) for i in range(4)]
    return {"by_version": by_version, "overall": _confusion_metrics(tp=total[0], fn=total[1], fp=total[2], tn=total[3])}
