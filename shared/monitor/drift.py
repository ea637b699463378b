"""Drift of the predictions and of the inputs against a reference: the model card's val split, else the first window.

The reference is the model card's validation split when it carries one (`metrics.val.probability_histogram` /
`positive_rate`, or the positive rate derived from val accuracy, sensitivity and specificity), else the first
window of the same model version. Input drift: the same PSI / KS on a 10-bin histogram of each input's mean
intensity (ingest stores `input.mean_intensity`, the model input's brightness in [0, 1], never pixels), against the
card's `metrics.val.intensity_histogram` or else the first window — a change of modality, exposure, windowing or
MONOCHROME1 handling shows here before it shows in accuracy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared.config import MonitorConfig
from shared.errors import NotFound
from shared.modelcard import CARD_FILE, ModelCard, ModelCardError
from shared.monitor.statistics import INTENSITY_BINS, UNVERSIONED, ks_distance, psi
from shared.storage import Storage, split_s3_uri

__all__ = ["NO_CARD_REFERENCE", "card_reference", "drift_summary", "load_card"]

log = logging.getLogger(__name__)


def load_card(model_uri: str | None, storage: Storage) -> ModelCard | None:
    """The model card at MODEL_URI (a local dir / file or `s3://` prefix); None for `models:/` or when unreadable.

    Only the card is read: the monitor never loads the model itself.
    """
    if not model_uri:
        return None
    try:
        if model_uri.startswith("s3://"):
            bucket, key = split_s3_uri(model_uri)
            prefix = key.rsplit("/", 1)[0] if key.endswith(".onnx") else key.rstrip("/")
            card_key = f"{prefix}/{CARD_FILE}" if prefix else CARD_FILE
            return ModelCard.from_json(storage.get_bytes(bucket, card_key).decode("utf-8"), f"s3://{bucket}/{card_key}")
        if "://" in model_uri or model_uri.startswith("models:/"):
            return None  # a registry URI: reading its card means downloading the model; the first window serves
        path = Path(model_uri)
        return ModelCard.load(path.parent if path.suffix == ".onnx" else path)
    except (ModelCardError, NotFound, UnicodeDecodeError, ValueError, BotoCoreError, ClientError) as exc:
        log.warning("no drift reference from the model card (%s); the first window serves", type(exc).__name__)
        return None


def _val_positive_rate(val: Mapping[str, Any]) -> float | None:
    """Predicted-positive rate on val, from accuracy, sensitivity and specificity (the card stores no counts).

    accuracy = sens * prevalence + spec * (1 - prevalence) gives the prevalence, and then
    positive rate = sens * prevalence + (1 - spec) * (1 - prevalence).
    """
    try:
        acc, sens, spec = (float(val[k]) for k in ("accuracy", "sensitivity", "specificity"))
    except (KeyError, TypeError, ValueError):
        return None
    if abs(sens - spec) < 1e-6:
        return None  # the prevalence cannot be told apart
    prevalence = (acc - spec) / (sens - spec)
    if not 0.0 <= prevalence <= 1.0:
        return None
    return sens * prevalence + (1.0 - spec) * (1.0 - prevalence)


def _histogram_or_none(value: Any, bins: int) -> list[float] | None:
    ok = (
        isinstance(value, list)
        and len(value) == bins
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in value)
        and sum(value) > 0
    )
    return value if ok else None


def card_reference(card: ModelCard | None, bins: int) -> dict[str, Any]:
    """`{"histogram", "positive_rate", "intensity_histogram"}` of the card's val split (None where it lacks one)."""
    val = (card.metrics.get("val") if card else None) or {}
    histogram = _histogram_or_none(val.get("probability_histogram"), bins)
    rate = val.get("positive_rate")
    if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        rate = _val_positive_rate(val)
    # A card without a registry version describes the model whose predictions say "unversioned".
    return {
        "histogram": histogram,
        "positive_rate": rate,
        "intensity_histogram": _histogram_or_none(val.get("intensity_histogram"), INTENSITY_BINS),
        "model_version": (card.version or UNVERSIONED) if card else None,
    }


NO_CARD_REFERENCE: dict[str, Any] = {
    "histogram": None, "positive_rate": None, "intensity_histogram": None, "model_version": None,
}


def drift_summary(
    window: Mapping[str, Any],
    first_window: Mapping[str, Any] | None,
    card_ref: Mapping[str, Any],
    config: MonitorConfig,
) -> dict[str, Any]:
    """PSI / KS of the window against the reference (card first, else the completed first window) → verdict."""
    thresholds = {"psi": config.psi_threshold, "ks": config.ks_threshold, "min_predictions": config.min_predictions}
    result: dict[str, Any] = {
        "drift": False,
        "reasons": [],
        "thresholds": thresholds,
        "psi_probability": None,
        "ks_probability": None,
        "psi_positive_rate": None,
        "psi_intensity": None,
        "ks_intensity": None,
    }
    ready = first_window is not None and first_window.get("complete")
    ref_hist, hist_source = card_ref.get("histogram"), "model_card"
    if ref_hist is None and ready:
        ref_hist, hist_source = first_window["histogram"], "first_window"
    ref_rate, rate_source = card_ref.get("positive_rate"), "model_card"
    if ref_rate is None and ready:
        ref_rate, rate_source = first_window["positive"] / first_window["n"], "first_window"
    ref_intensity, intensity_source = card_ref.get("intensity_histogram"), "model_card"
    if ref_intensity is None and ready and first_window.get("intensity_n"):
        ref_intensity, intensity_source = first_window["intensity"], "first_window"
    result["reference"] = {
        "histogram": ref_hist,
        "histogram_source": hist_source if ref_hist is not None else None,
        "positive_rate": ref_rate,
        "positive_rate_source": rate_source if ref_rate is not None else None,
        "intensity_histogram": ref_intensity,
        "intensity_source": intensity_source if ref_intensity is not None else None,
        "first_window_n": first_window["n"] if first_window else 0,
    }
    if window["n"] < config.min_predictions:
        result["status"] = "insufficient_data"
        return result
    if ref_hist is None and ref_rate is None and ref_intensity is None:
        result["status"] = "no_reference"
        return result
    if ref_hist is not None:
        result["psi_probability"] = psi(ref_hist, window["histogram"])
        result["ks_probability"] = ks_distance(ref_hist, window["histogram"])
    if ref_rate is not None:
        rate = window["positive_rate"]
        result["psi_positive_rate"] = psi([1.0 - ref_rate, ref_rate], [1.0 - rate, rate])
    if ref_intensity is not None and window.get("intensity_n", 0) >= config.min_predictions:
        result["psi_intensity"] = psi(ref_intensity, window["intensity"])
        result["ks_intensity"] = ks_distance(ref_intensity, window["intensity"])
    for name, threshold in (
        ("psi_probability", config.psi_threshold),
        ("ks_probability", config.ks_threshold),
        ("psi_positive_rate", config.psi_threshold),
        ("psi_intensity", config.psi_threshold),
        ("ks_intensity", config.ks_threshold),
    ):
        if result[name] is not None and result[name] > threshold:
            result["reasons"].append(f"{name} {result[name]:.3f} > {threshold}")
    result["drift"] = bool(result["reasons"])
    result["status"] = "drift" if result["drift"] else "stable"
    return result
