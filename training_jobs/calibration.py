"""Temperature scaling and a bootstrap-robust choice of the operating threshold (design §8). Numpy + scipy only.

A threshold picked once on ~500 validation images moves a lot between runs; we calibrate first (one
temperature fitted on val by NLL), then pick, on each of many bootstrap resamples of val, the highest
threshold that keeps sensitivity >= the target, and store a low quantile of those thresholds: in (1 - q) of
the resamples the stored threshold still meets the target. The p5/p50/p95 of the resampled thresholds are
the spread we report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from shared.modelcard import calibrated_probability


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on (logits [N, 2], labels [N])."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"fit_temperature: need logits [N, C] and labels [N], got {logits.shape} and {labels.shape}")
    # Search log T so T stays positive; [0.05, 20] covers every sane network.
    result = minimize_scalar(lambda s: _nll(logits, labels, float(np.exp(s))), bounds=(np.log(0.05), np.log(20.0)),
                             method="bounded")
    return float(np.exp(result.x))


def fit_temperature_bias(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(T, c) minimising the NLL of sigmoid(margin / T + c), margin = logit1 - logit0 (Platt scaling).

    Temperature alone cannot undo a shifted decision boundary (class weights and label smoothing move it);
    the offset c can, and folds into the model as `head.bias[1] += c * T` (see `fold_bias`).
    """
    from scipy.optimize import minimize

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"fit_temperature_bias: need logits [N, 2] and labels [N], got {logits.shape}")
    margin = logits[:, 1] - logits[:, 0]
    sign = np.where(labels == 1, 1.0, -1.0)

    def nll(params: np.ndarray) -> float:
        z = margin * np.exp(-params[0]) + params[1]
        return float(np.logaddexp(0.0, -sign * z).mean())

    start = np.array([np.log(fit_temperature(logits, labels)), 0.0])
    result = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9})
    log_t = float(np.clip(result.x[0], np.log(0.05), np.log(20.0)))
    return float(np.exp(log_t)), float(result.x[1])


def threshold_for_sensitivity(probs: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The highest threshold t with sensitivity P(prob >= t | positive) >= target."""
    positives = np.sort(np.asarray(probs)[np.asarray(labels) == 1])
    if len(positives) == 0:
        raise ValueError("threshold_for_sensitivity: no positive cases")
    # Allow at most floor((1 - target) * n) misses: the threshold is the next positive's probability.
    misses = int(np.floor((1.0 - target) * len(positives) + 1e-9))
    return float(positives[misses])


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    spread: dict[str, float]  # p5 / p50 / p95 of the bootstrap thresholds
    target_sensitivity: float
    n_bootstrap: int


def choose_threshold(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    target_sensitivity: float = 0.95,
    n_bootstrap: int = 1000,
    quantile: float = 0.05,
    seed: int = 0,
) -> ThresholdChoice:
    """Bootstrap over (probs, labels): the `quantile` of per-resample thresholds, plus their p5/p50/p95."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(np.unique(labels)) < 2:
        raise ValueError("choose_threshold: validation data must contain both classes")
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels == 0)
    thresholds = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        # Stratified resampling keeps the class balance of val, so only the ranking noise varies.
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        thresholds[b] = threshold_for_sensitivity(probs[idx], labels[idx], target_sensitivity)
    p5, p50, p95 = np.quantile(thresholds, [0.05, 0.5, 0.95])
    chosen = float(np.quantile(thresholds, quantile))
    # Never above the full-sample threshold, so val itself meets the target.
    chosen = min(chosen, threshold_for_sensitivity(probs, labels, target_sensitivity))
    return ThresholdChoice(
        threshold=chosen,
        spread={"p5": float(p5), "p50": float(p50), "p95": float(p95)},
        target_sensitivity=target_sensitivity,
        n_bootstrap=n_bootstrap,
    )


def calibrate(logits: np.ndarray, labels: np.ndarray, **kwargs: float) -> tuple[float, ThresholdChoice]:
    """Fit the temperature on (logits, labels), then choose the threshold on the calibrated probabilities."""
    temperature = fit_temperature(logits, labels)
    probs = calibrated_probability(logits, temperature)
    return temperature, choose_threshold(probs, labels, **kwargs)
