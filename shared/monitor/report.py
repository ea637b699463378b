"""The PingSource tick's report (`triage-state/monitor/report.json`) and the gauges set from it.

Live accuracy per model version, the window's prediction summary, drift statistics against the reference and
`drift: true|false`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from shared.config import MonitorConfig
from shared.modelcard import ModelCard
from shared.monitor.drift import NO_CARD_REFERENCE, card_reference, drift_summary
from shared.monitor.labels import sync_labels
from shared.monitor.metrics import export_gauges
from shared.monitor.predictions import read_summary, window_summary
from shared.monitor.statistics import INTENSITY_BINS, live_accuracy
from shared.names import MONITOR_REPORT_KEY, STATE_BUCKET
from shared.storage import Storage
from shared.timestamps import utc_iso

__all__ = ["write_report"]


def write_report(storage: Storage, config: MonitorConfig, *, now: datetime, card: ModelCard | None) -> dict[str, Any]:
    """Recompute live accuracy and drift, write `monitor/report.json`, set the gauges; returns the report."""
    labels = sync_labels(storage, config, now=now)
    state = read_summary(storage, config)
    window = window_summary(state, config, now=now)
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
    storage.put_json(STATE_BUCKET, MONITOR_REPORT_KEY, report)
    export_gauges(report, now)
    return report
