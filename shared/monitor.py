"""Monitoring of the served model: live accuracy on radiologists' labels, and drift of its predictions.

What the `monitor` function keeps in S3 (bucket `inference-results`, prefix `_monitor/`):
- `state.json`: a rolling summary of `triage.prediction.created` events in hourly buckets over the last
  `window_days`, per model version (probability histogram, positives, urgent), the ids of the events counted
  (the same event twice counts once) and each version's first-window reference (its first `reference_size`
  predictions). Per version, because a new champion or a canary split legitimately changes the predictions.
- `labels.json`: the join of `feedback/<request_id>.json` with the stored prediction
  `inference-results/requests/<request_id>.json`, one entry per request (a changed label replaces the old one),
  kept for labels of the last `window_days`, at most the latest `window_labels`.
- `report.json`: written on each PingSource tick: live accuracy per model version, the window's prediction
  summary, drift statistics against the reference, and `drift: true|false`.
The two state objects are replaced only by conditional writes (If-Match on the ETag), so concurrent events
never lose one another's update.

Drift statistics (well known, on the 10-bin probability histogram): the population stability index
PSI = sum((a - e) * ln(a / e)) over bin proportions (< 0.1 stable, 0.1-0.25 moderate, > 0.25 major shift) and the
Kolmogorov-Smirnov distance between the binned CDFs; PSI also on the predicted-positive rate (2 bins). The
reference is the model card's validation split when it carries one (`metrics.val.probability_histogram` /
`positive_rate`, or the positive rate derived from val accuracy, sensitivity and specificity), else the first
window of the same model version. Input drift: the same PSI / KS on a 10-bin histogram of each input's mean
intensity (ingest stores `input.mean_intensity`, the model input's brightness in [0, 1], never pixels), against the
card's `metrics.val.intensity_histogram` or else the first window — a change of modality, exposure, windowing or
MONOCHROME1 handling shows here before it shows in accuracy.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Gauge

from shared import metrics
from shared.config import MonitorConfig
from shared.errors import NotFound, TriageError
from shared.events import FEEDBACK_RECEIVED, PREDICTION_CREATED, BadEvent, CloudEvent, event_data
from shared.modelcard import CARD_FILE, ModelCard, ModelCardError
from shared.storage import Storage, StorageUnavailable, split_s3_uri
from shared.timestamps import parse_utc, utc_iso

__all__ = [
    "INTENSITY_BINS",
    "LABELS_KEY",
    "PING",
    "REPORT_KEY",
    "STATE_KEY",
    "Monitor",
    "MonitorConfig",
    "MonitorStateConflict",
    "card_reference",
    "drift_summary",
    "export_gauges",
    "histogram",
    "histogram_bin",
    "ks_distance",
    "live_accuracy",
    "load_card",
    "psi",
    "record_label",
    "record_prediction",
    "sync_labels",
    "write_report",
]

log = logging.getLogger(__name__)

RESULT_BUCKET = "inference-results"
FEEDBACK_BUCKET = "feedback"
FEEDBACK_STATE_PREFIX = "_state/"  # retrain's state, not labels
STATE_KEY = "_monitor/state.json"
LABELS_KEY = "_monitor/labels.json"
REPORT_KEY = "_monitor/report.json"
PING = "dev.knative.sources.ping"
LABELS = ("normal", "pneumonia")
POSITIVE = "pneumonia"
UNVERSIONED = "unversioned"  # as shared.metrics.MODEL_INFO names a model without a registry version
MAX_CAS_ATTEMPTS = 8
INTENSITY_BINS = 10  # equal-width bins of mean input intensity over [0, 1]; training writes the card's with it
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# --- Prometheus metrics (set on each tick; events are counted in shared.metrics.EVENTS_PROCESSED) --------------
LIVE_ACCURACY = Gauge(
    "triage_monitor_live_accuracy", "Accuracy on radiologists' labels in the window, by model version.", ["version"]
)
LIVE_SENSITIVITY = Gauge(
    "triage_monitor_live_sensitivity", "Sensitivity (pneumonia recall) on labels in the window.", ["version"]
)
LIVE_SPECIFICITY = Gauge("triage_monitor_live_specificity", "Specificity on labels in the window.", ["version"])
LIVE_AGREEMENT = Gauge(
    "triage_monitor_live_agreement", "Cohen's kappa between model and radiologists in the window.", ["version"]
)
LABELLED = Gauge("triage_monitor_labelled", "Labelled predictions in the window, by model version.", ["version"])
WINDOW_PREDICTIONS = Gauge("triage_monitor_window_predictions", "Predictions summarised in the drift window.")
POSITIVE_RATE = Gauge("triage_monitor_positive_rate", "Share of predictions labelled pneumonia in the window.")
URGENT_RATE = Gauge("triage_monitor_urgent_rate", "Share of predictions flagged urgent in the window.")
DRIFT_PSI = Gauge(
    "triage_monitor_psi",
    "Population stability index against the reference, by model version.",
    ["version", "statistic"],
)
DRIFT_KS = Gauge(
    "triage_monitor_ks", "Kolmogorov-Smirnov distance of the probabilities to the reference, by version.", ["version"]
)
DRIFT_KS_INTENSITY = Gauge(
    "triage_monitor_ks_intensity",
    "Kolmogorov-Smirnov distance of the inputs' mean intensity to the reference, by version.",
    ["version"],
)
DRIFT = Gauge("triage_monitor_drift", "1 when the predictions of any model version drifted, else 0.")
LAST_REPORT = Gauge("triage_monitor_last_report_timestamp_seconds", "When the last monitor report was written.")


class MonitorStateConflict(TriageError):
    """The monitor state kept changing under us (many concurrent writers): 503, the event is retried."""

    status = 503
    code = "monitor_state_conflict"


# --- settings ----------------------------------------------------------------------------------------------------
# --- statistics --------------------------------------------------------------------------------------------------
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


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _confusion_metrics(tp: int, tn: int, fp: int, fn: int) -> dict[str, Any]:
    n = tp + tn + fp + fn
    accuracy = _ratio(tp + tn, n)
    agreement = None
    if n:
        chance = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n)
        agreement = 1.0 if chance >= 1.0 else ((tp + tn) / n - chance) / (1.0 - chance)
    return {
        "n": n,
        "accuracy": accuracy,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
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


# --- conditional JSON state --------------------------------------------------------------------------------------
def _read_state(storage: Storage, key: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        value, etag = storage.get_json_versioned(RESULT_BUCKET, key)
    except ValueError:
        log.warning("s3://%s/%s is not JSON; starting it afresh", RESULT_BUCKET, key)
        head = storage.head(RESULT_BUCKET, key)  # replaced only if still that same broken object
        return None, f'"{head["etag"]}"' if head else None
    return (value if isinstance(value, dict) else None), etag


def _update_state(
    storage: Storage, key: str, mutate: Callable[[dict[str, Any] | None], tuple[Any, dict | None]]
) -> Any:
    """Read, `mutate` (→ (result, new state or None for no write)), write If-Match; re-read when someone won."""
    for _attempt in range(MAX_CAS_ATTEMPTS):
        state, etag = _read_state(storage, key)
        result, new_state = mutate(state)
        if new_state is None:
            return result
        if storage.put_json_if(RESULT_BUCKET, key, new_state, etag):
            return result
    raise MonitorStateConflict(f"s3://{RESULT_BUCKET}/{key} kept changing; retry later")


# --- prediction drift --------------------------------------------------------------------------------------------




def _hour(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H")


@dataclass(frozen=True)
class PredictionFields:
    """What the monitor counts of one `triage.prediction.created` event."""

    probability: float
    positive: bool
    urgent: bool
    version: str
    intensity: float | None  # the input's mean intensity in [0, 1]; None from an ingest that sent none


def _empty_summary(bins: int) -> dict[str, Any]:
    return {"histogram": [0] * bins, "n": 0, "positive": 0, "urgent": 0,
            "intensity": [0] * INTENSITY_BINS, "intensity_n": 0}


def _add(summary: dict[str, Any], observed: PredictionFields, bins: int) -> None:
    summary["histogram"][histogram_bin(observed.probability, bins)] += 1
    summary["n"] += 1
    summary["positive"] += int(observed.positive)
    summary["urgent"] += int(observed.urgent)
    if observed.intensity is not None:  # events of an older ingest carry none
        summary["intensity"][histogram_bin(observed.intensity, INTENSITY_BINS)] += 1
        summary["intensity_n"] += 1


def _fresh_state(config: MonitorConfig) -> dict[str, Any]:
    return {"bins": config.bins, "intensity_bins": INTENSITY_BINS, "hours": {}, "seen": {}, "references": {},
            "events_counted": 0}


def _prune(state: dict[str, Any], cutoff_hour: str) -> None:
    """Drop hourly summaries older than the window, and the ids of the events counted in them."""
    state["hours"] = {hour: s for hour, s in state["hours"].items() if hour >= cutoff_hour}
    state["seen"] = {event_id: hour for event_id, hour in state["seen"].items() if hour >= cutoff_hour}


def _usable_state(state: dict[str, Any] | None, config: MonitorConfig) -> dict[str, Any]:
    if (state is None or state.get("bins") != config.bins or state.get("intensity_bins") != INTENSITY_BINS
            or not isinstance(state.get("references"), dict)):
        if state is not None:
            log.warning("monitor state has other bins or no summary; starting it afresh")
        return _fresh_state(config)
    return state


def _unit_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 <= value <= 1.0


def _prediction_fields(data: Mapping[str, Any]) -> PredictionFields:
    probability = data.get("probability")
    if not _unit_number(probability):
        raise BadEvent(f"event {PREDICTION_CREATED} data field 'probability' must be a number in [0, 1]")
    if data.get("label") not in LABELS:
        raise BadEvent(f"event {PREDICTION_CREATED} data field 'label' must be one of {', '.join(LABELS)}")
    urgent = data.get("urgent", False)
    if not isinstance(urgent, bool):
        raise BadEvent(f"event {PREDICTION_CREATED} data field 'urgent' must be true or false")
    model = data.get("model")
    version = (model.get("version") if isinstance(model, dict) else None) or UNVERSIONED
    source = data.get("input")
    intensity = source.get("mean_intensity") if isinstance(source, dict) else None
    if intensity is not None and not _unit_number(intensity):
        raise BadEvent(f"event {PREDICTION_CREATED} data field 'input.mean_intensity' must be a number in [0, 1]")
    return PredictionFields(float(probability), data["label"] == POSITIVE, urgent, str(version),
                            None if intensity is None else float(intensity))


def record_prediction(
    storage: Storage, config: MonitorConfig, event_id: str, data: Mapping[str, Any], *, now: datetime
) -> str:
    """Count one prediction event in the rolling summary: `counted`, `duplicate` (id seen) or `too_old`."""
    observed = _prediction_fields(data)  # 400 before anything is read or written
    when = parse_utc(data.get("completed_at")) or now
    cutoff = _hour(now - timedelta(days=config.window_days))

    def mutate(stored: dict[str, Any] | None) -> tuple[str, dict | None]:
        state = _usable_state(stored, config)
        _prune(state, cutoff)
        if event_id in state["seen"]:
            return "duplicate", None
        hour = _hour(when)
        if hour < cutoff:
            return "too_old", None
        summary = state["hours"].setdefault(hour, {}).setdefault(observed.version, _empty_summary(config.bins))
        _add(summary, observed, config.bins)
        state["seen"][event_id] = hour
        state["events_counted"] = int(state.get("events_counted", 0)) + 1
        reference = state["references"].setdefault(observed.version,
                                                   {**_empty_summary(config.bins), "complete": False})
        if reference["n"] < config.reference_size:  # the first window fills once, then stays fixed
            _add(reference, observed, config.bins)
            reference["complete"] = reference["n"] >= config.reference_size
        return "counted", state

    return _update_state(storage, STATE_KEY, mutate)


def _merge(total: dict[str, Any], summary: Mapping[str, Any]) -> None:
    for name in ("histogram", "intensity"):
        total[name] = [a + b for a, b in zip(total[name], summary[name], strict=True)]
    for name in ("n", "positive", "urgent", "intensity_n"):
        total[name] += summary[name]


def _with_rates(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        **summary,
        "positive_rate": _ratio(summary["positive"], summary["n"]),
        "urgent_rate": _ratio(summary["urgent"], summary["n"]),
    }


def _window_summary(state: dict[str, Any], config: MonitorConfig, cutoff_hour: str) -> dict[str, Any]:
    """The window's summary over all versions, plus `by_version`."""
    total, by_version = _empty_summary(config.bins), {}
    for hour, versions in state["hours"].items():
        if hour >= cutoff_hour:
            for version, summary in versions.items():
                _merge(total, summary)
                _merge(by_version.setdefault(version, _empty_summary(config.bins)), summary)
    return {
        **_with_rates(total),
        "bins": config.bins,
        "by_version": {version: _with_rates(summary) for version, summary in sorted(by_version.items())},
    }


# --- the validation reference from the model card ----------------------------------------------------------------
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


# --- live accuracy -----------------------------------------------------------------------------------------------
def _get_json_or_none(storage: Storage, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        value = storage.get_json(bucket, key)
    except (NotFound, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _joined_label(storage: Storage, request_id: str) -> tuple[str, dict[str, Any] | None] | None:
    """(etag, joined entry or None when it cannot be scored) of `feedback/<request_id>.json`; None when absent."""
    try:
        response = storage.client.get_object(Bucket=FEEDBACK_BUCKET, Key=f"{request_id}.json")
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    etag = str(response["ETag"]).strip('"')
    try:
        record = json.loads(response["Body"].read())
    except ValueError:
        record = None
    prediction = _get_json_or_none(storage, RESULT_BUCKET, f"requests/{request_id}.json") or {}
    if not isinstance(record, dict):
        return etag, None
    # The stored prediction is the truth; the label record's copy of it serves when the index is gone.
    predicted = prediction.get("label") or record.get("predicted_label")
    model = prediction.get("model") or record.get("model") or {}
    if record.get("label") not in LABELS or predicted not in LABELS:
        return etag, None
    return etag, {
        "etag": etag,
        "label": record["label"],
        "predicted": predicted,
        "probability": prediction.get("probability"),
        "model_version": (model.get("version") if isinstance(model, dict) else None) or UNVERSIONED,
        "time": record.get("time"),
    }


def _prune_labels(labels: dict[str, Any], config: MonitorConfig, now: datetime) -> dict[str, Any]:
    cutoff = utc_iso(now - timedelta(days=config.window_days))
    recent = [(rid, e) for rid, e in labels.items() if e.get("time") is None or _iso_or_none(e["time"]) >= cutoff]
    recent.sort(key=lambda item: _iso_or_none(item[1].get("time")), reverse=True)
    return dict(recent[: config.window_labels])


def _iso_or_none(value: Any) -> str:
    parsed = parse_utc(value)
    return utc_iso(parsed) if parsed else ""


def record_label(storage: Storage, config: MonitorConfig, request_id: str, *, now: datetime) -> str:
    """Join one label with its prediction into labels.json: `updated`, `unchanged`, `missing` or `unscorable`."""
    if not _REQUEST_ID.match(request_id):
        raise BadEvent(f"event {FEEDBACK_RECEIVED} data field 'request_id' is not a request id")
    joined = _joined_label(storage, request_id)
    if joined is None:
        return "missing"  # deleted since: final, the broker must not retry
    etag, entry = joined

    def mutate(stored: dict[str, Any] | None) -> tuple[str, dict | None]:
        labels = dict((stored or {}).get("labels") or {})
        if entry is None:
            return "unscorable", None
        if labels.get(request_id, {}).get("etag") == etag:
            return "unchanged", None
        labels[request_id] = entry
        return "updated", {"labels": _prune_labels(labels, config, now)}

    return _update_state(storage, LABELS_KEY, mutate)


def sync_labels(storage: Storage, config: MonitorConfig, *, now: datetime) -> dict[str, Any]:
    """Bring labels.json up to date with the feedback bucket (labels whose events were missed or changed)."""
    cutoff = now - timedelta(days=config.window_days)
    listed: list[tuple[datetime, str, str]] = []
    for page in storage.client.get_paginator("list_objects_v2").paginate(Bucket=FEEDBACK_BUCKET):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.startswith(FEEDBACK_STATE_PREFIX) or not key.endswith(".json") or item["LastModified"] < cutoff:
                continue
            listed.append((item["LastModified"], key[: -len(".json")], str(item["ETag"]).strip('"')))
    listed.sort(reverse=True)
    stored, _etag = _read_state(storage, LABELS_KEY)
    known = (stored or {}).get("labels") or {}
    fresh: dict[str, dict[str, Any]] = {}
    for _modified, request_id, etag in listed[: config.window_labels]:
        if _REQUEST_ID.match(request_id) and known.get(request_id, {}).get("etag") != etag:
            joined = _joined_label(storage, request_id)
            if joined is not None and joined[1] is not None:
                fresh[request_id] = joined[1]

    def mutate(current: dict[str, Any] | None) -> tuple[dict[str, Any], dict | None]:
        labels = dict((current or {}).get("labels") or {})
        for request_id, entry in fresh.items():
            if labels.get(request_id, {}).get("etag") != entry["etag"]:  # an event may have brought it meanwhile
                labels[request_id] = entry
        labels = _prune_labels(labels, config, now)
        return labels, {"labels": labels}

    return _update_state(storage, LABELS_KEY, mutate)


# --- report ------------------------------------------------------------------------------------------------------
def write_report(storage: Storage, config: MonitorConfig, *, now: datetime, card: ModelCard | None) -> dict[str, Any]:
    """Recompute live accuracy and drift, write `_monitor/report.json`, set the gauges; returns the report."""
    labels = sync_labels(storage, config, now=now)
    stored, _etag = _read_state(storage, STATE_KEY)
    state = _usable_state(stored, config)
    cutoff = _hour(now - timedelta(days=config.window_days))
    window = _window_summary(state, config, cutoff)
    from_card = card_reference(card, config.bins)
    drift = {
        version: drift_summary(
            summary,
            state["references"].get(version),
            from_card if version == from_card["model_version"] else NO_CARD_REFERENCE,
            config,
        )
        for version, summary in window["by_version"].items()
    }
    report = {
        "generated_at": utc_iso(now),
        "window": {
            "days": config.window_days,
            "labels": config.window_labels,
            "since": utc_iso(now - timedelta(days=config.window_days)),
        },
        "live_accuracy": live_accuracy(labels.values()),
        "predictions": window,
        "events_counted": int(state.get("events_counted", 0)),
        "drift": any(detail["drift"] for detail in drift.values()),
        "drift_by_version": drift,
        "input_drift_statistic": f"mean intensity of each model input, {INTENSITY_BINS} bins over [0, 1]",
    }
    storage.put_json(RESULT_BUCKET, REPORT_KEY, report)
    export_gauges(report, now)
    return report


def export_gauges(report: Mapping[str, Any], now: datetime) -> None:
    """Set the monitor's gauges from a report (a version that left the window loses its series)."""
    per_version = {
        LIVE_ACCURACY: "accuracy",
        LIVE_SENSITIVITY: "sensitivity",
        LIVE_SPECIFICITY: "specificity",
        LIVE_AGREEMENT: "agreement",
        LABELLED: "n",
    }
    for gauge, field_name in per_version.items():
        gauge.clear()
        for version, row in report["live_accuracy"]["by_version"].items():
            if row[field_name] is not None:
                gauge.labels(version=version).set(row[field_name])
    window = report["predictions"]
    WINDOW_PREDICTIONS.set(window["n"])
    POSITIVE_RATE.set(window["positive_rate"] if window["positive_rate"] is not None else math.nan)
    URGENT_RATE.set(window["urgent_rate"] if window["urgent_rate"] is not None else math.nan)
    for gauge in (DRIFT_PSI, DRIFT_KS, DRIFT_KS_INTENSITY):
        gauge.clear()
    for version, detail in report["drift_by_version"].items():
        for statistic in ("probability", "positive_rate", "intensity"):
            if detail[f"psi_{statistic}"] is not None:
                DRIFT_PSI.labels(version=version, statistic=statistic).set(detail[f"psi_{statistic}"])
        for gauge, name in ((DRIFT_KS, "ks_probability"), (DRIFT_KS_INTENSITY, "ks_intensity")):
            if detail[name] is not None:
                gauge.labels(version=version).set(detail[name])
    DRIFT.set(1 if report["drift"] else 0)
    LAST_REPORT.set(now.timestamp())


# --- the function's one entry point ------------------------------------------------------------------------------
class Monitor:
    """Turns the monitor's three kinds of events into state updates and reports (one per process)."""

    def __init__(
        self,
        storage: Storage,
        config: MonitorConfig,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        card_loader: Callable[[], ModelCard | None] | None = None,
    ) -> None:
        self.storage = storage
        self.config = config
        self.now = now
        self._card_loader = card_loader or (lambda: load_card(config.model_uri, storage))
        self._card: tuple[ModelCard | None] | None = None
        self._lock = threading.Lock()

    def card(self) -> ModelCard | None:
        """The model card, read once per process (the served model changes with a new revision, i.e. process)."""
        with self._lock:
            if self._card is None:
                self._card = (self._card_loader(),)
            return self._card[0]

    def handle(self, event: CloudEvent) -> dict[str, Any]:
        """Dispatch on the event type; unknown types are a 400 `bad_event`. S3 failures are 503 (retried)."""
        kind = event["type"]
        try:
            if kind == PREDICTION_CREATED:
                data = event_data(event, "probability", "label")
                body = {"status": record_prediction(self.storage, self.config, event["id"], data, now=self.now())}
            elif kind == FEEDBACK_RECEIVED:
                request_id = str(event_data(event, "request_id")["request_id"])
                body = {"status": record_label(self.storage, self.config, request_id, now=self.now())}
            elif kind == PING:
                report = write_report(self.storage, self.config, now=self.now(), card=self.card())
                body = {"status": "reported", "drift": report["drift"], "report": f"s3://{RESULT_BUCKET}/{REPORT_KEY}"}
            else:
                raise BadEvent(
                    f"monitor does not handle events of type {kind!r} "
                    f"(expects {PREDICTION_CREATED}, {FEEDBACK_RECEIVED} or {PING})"
                )
        except (BotoCoreError, ClientError) as exc:
            # Class name only: boto messages can quote keys, and keys are named by the hospital.
            raise StorageUnavailable(
                f"S3 failed in the monitor ({type(exc).__name__}); the event will come again"
            ) from exc
        metrics.EVENTS_PROCESSED.labels(function="monitor", type=kind, outcome=body["status"]).inc()
        return body
