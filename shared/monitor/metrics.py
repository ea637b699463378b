"""The monitor's Prometheus gauges, set from each report (events are counted in shared.metrics.EVENTS_PROCESSED)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from prometheus_client import Gauge

__all__ = ["export_gauges"]

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
NOT_ASSESSABLE = Gauge("triage_monitor_not_assessable", "Answers in the window the gate refused (not assessable).")
NOT_ASSESSABLE_RATE = Gauge(
    "triage_monitor_not_assessable_rate", "Share of the window's answers that were not assessable."
)
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
    NOT_ASSESSABLE.set(window.get("not_assessable", 0))
    rate = window.get("not_assessable_rate")
    NOT_ASSESSABLE_RATE.set(rate if rate is not None else math.nan)
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
