"""The rolling summary of `triage.prediction.created` events (`triage-state/monitor/state.json`).

Hourly buckets over the last `window_days`, per model version (probability histogram, positives, urgent, the
histogram of the inputs' mean intensity; and `not_assessable`, the answers the gate refused, which count in nothing
else: no probability, no drift, no reference), the ids of the events counted (the same event twice counts once) and
each version's first-window reference (its first `reference_size` predictions). Per version, because a new
champion or a canary split legitimately changes the predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.config import MonitorConfig
from shared.events import BadEvent
from shared.monitor.state import MonitorStateConflict, as_object
from shared.monitor.statistics import INTENSITY_BINS, LABELS, POSITIVE, UNVERSIONED, histogram_bin, ratio
from shared.names import MONITOR_STATE_KEY, PREDICTION_CREATED, STATE_BUCKET
from shared.storage import Storage
from shared.timestamps import parse_utc

__all__ = ["PredictionFields", "read_summary", "record_prediction", "window_summary"]

log = logging.getLogger(__name__)


def _hour(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H")


def _cutoff_hour(config: MonitorConfig, now: datetime) -> str:
    return _hour(now - timedelta(days=config.window_days))


@dataclass(frozen=True)
class PredictionFields:
    """What the monitor counts of one `triage.prediction.created` event."""

    probability: float | None  # None when not assessable
    positive: bool
    urgent: bool
    version: str
    intensity: float | None  # the input's mean intensity in [0, 1]; None from an ingest that sent none
    assessable: bool = True


def _empty_summary(bins: int) -> dict[str, Any]:
    return {"histogram": [0] * bins, "n": 0, "positive": 0, "urgent": 0,
            "intensity": [0] * INTENSITY_BINS, "intensity_n": 0, "not_assessable": 0}


def _add(summary: dict[str, Any], observed: PredictionFields, bins: int) -> None:
    if not observed.assessable or observed.probability is None:
        summary["not_assessable"] = summary.get("not_assessable", 0) + 1  # summaries of an older monitor have none
        return
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
    model = data.get("model")
    version = (model.get("version") if isinstance(model, dict) else None) or UNVERSIONED
    if data.get("assessable") is False:
        return PredictionFields(None, False, False, str(version), None, assessable=False)
    probability = data.get("probability")
    if not _unit_number(probability):
        raise BadEvent(f"event {PREDICTION_CREATED} data field 'probability' must be a number in [0, 1]")
    if data.get("label") not in LABELS:
        raise BadEvent(f"event {PREDICTION_CREATED} data field 'label' must be one of {', '.join(LABELS)}")
    urgent = data.get("urgent", False)
    if not isinstance(urgent, bool):
        raise BadEvent(f"event {PREDICTION_CREATED} data field 'urgent' must be true or false")
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
    cutoff = _cutoff_hour(config, now)

    def mutate(stored: Any) -> tuple[str, dict | None]:
        state = _usable_state(as_object(stored), config)
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
        if observed.assessable and reference["n"] < config.reference_size:  # fills once, then stays fixed
            _add(reference, observed, config.bins)
            reference["complete"] = reference["n"] >= config.reference_size
        return "counted", state

    return storage.update_json(STATE_BUCKET, MONITOR_STATE_KEY, mutate, conflict=MonitorStateConflict)


def read_summary(storage: Storage, config: MonitorConfig) -> dict[str, Any]:
    """The stored summary (`hours`, `references`, `events_counted`); a fresh one when absent or unusable."""
    return _usable_state(storage.get_json_object(STATE_BUCKET, MONITOR_STATE_KEY), config)


def _merge(total: dict[str, Any], summary: Mapping[str, Any]) -> None:
    for name in ("histogram", "intensity"):
        total[name] = [a + b for a, b in zip(total[name], summary[name], strict=True)]
    for name in ("n", "positive", "urgent", "intensity_n", "not_assessable"):
        total[name] += summary.get(name, 0)


def _with_rates(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        **summary,
        "positive_rate": ratio(summary["positive"], summary["n"]),
        "urgent_rate": ratio(summary["urgent"], summary["n"]),
        # Of all answers (assessable or not): the share the gate refused.
        "not_assessable_rate": ratio(summary["not_assessable"], summary["n"] + summary["not_assessable"]),
    }


def window_summary(state: dict[str, Any], config: MonitorConfig, *, now: datetime) -> dict[str, Any]:
    """The window's summary over all versions, plus `by_version`."""
    cutoff_hour = _cutoff_hour(config, now)
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
