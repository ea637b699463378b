"""The label join (`triage-state/monitor/labels.json`): radiologists' labels with the predictions they judge.

One entry per request: `feedback/<request_id>.json` joined with the stored prediction
`triage-state/requests/<request_id>.json` (a changed label replaces the old one), kept for labels of the last
`window_days`, at most the latest `window_labels`. Events bring labels one by one (`record_label`); each tick
catches up on the ones whose events were missed or changed (`sync_labels`).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from shared.config import MonitorConfig
from shared.errors import NotFound
from shared.events import BadEvent
from shared.monitor.state import MonitorStateConflict, as_object
from shared.monitor.statistics import LABELS, UNVERSIONED
from shared.names import (
    FEEDBACK_BUCKET,
    FEEDBACK_RECEIVED,
    MONITOR_LABELS_KEY,
    REQUEST_ID,
    STATE_BUCKET,
    feedback_key,
    feedback_request_id,
)
from shared.request_records import load_request_record
from shared.storage import Storage
from shared.timestamps import parse_utc, utc_iso

__all__ = ["record_label", "sync_labels"]


def _joined_label(storage: Storage, request_id: str) -> tuple[str, dict[str, Any] | None] | None:
    """(etag, joined entry or None when it cannot be scored) of `feedback/<request_id>.json`; None when absent."""
    try:
        stored = storage.get_object(FEEDBACK_BUCKET, feedback_key(request_id))
    except NotFound:
        return None
    etag = stored.etag
    try:
        record = json.loads(stored.data)
    except ValueError:
        record = None
    prediction = load_request_record(storage, request_id) or {}
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


def _stored_labels(stored: Any) -> dict[str, Any]:
    return dict((as_object(stored) or {}).get("labels") or {})


def record_label(storage: Storage, config: MonitorConfig, request_id: str, *, now: datetime) -> str:
    """Join one label with its prediction into labels.json: `updated`, `unchanged`, `missing` or `unscorable`."""
    if not REQUEST_ID.match(request_id):
        raise BadEvent(f"event {FEEDBACK_RECEIVED} data field 'request_id' is not a request id")
    joined = _joined_label(storage, request_id)
    if joined is None:
        return "missing"  # deleted since: final, the broker must not retry
    etag, entry = joined

    def mutate(stored: Any) -> tuple[str, dict | None]:
        labels = _stored_labels(stored)
        if entry is None:
            return "unscorable", None
        if labels.get(request_id, {}).get("etag") == etag:
            return "unchanged", None
        labels[request_id] = entry
        return "updated", {"labels": _prune_labels(labels, config, now)}

    return storage.update_json(STATE_BUCKET, MONITOR_LABELS_KEY, mutate, conflict=MonitorStateConflict)


def _listed_labels(storage: Storage, cutoff: datetime) -> list[tuple[datetime, str, str]]:
    """(last modified, request id, etag) of the label objects modified since `cutoff` (any other object is no label)."""
    return [
        (item.last_modified, request_id, item.etag)
        for item in storage.iter_objects(FEEDBACK_BUCKET)
        if (request_id := feedback_request_id(item.key)) is not None and item.last_modified >= cutoff
    ]


def sync_labels(storage: Storage, config: MonitorConfig, *, now: datetime) -> dict[str, Any]:
    """Bring labels.json up to date with the feedback bucket (labels whose events were missed or changed)."""
    listed = sorted(_listed_labels(storage, now - timedelta(days=config.window_days)), reverse=True)
    known = (storage.get_json_object(STATE_BUCKET, MONITOR_LABELS_KEY) or {}).get("labels") or {}
    fresh: dict[str, dict[str, Any]] = {}
    for _modified, request_id, etag in listed[: config.window_labels]:
        if REQUEST_ID.match(request_id) and known.get(request_id, {}).get("etag") != etag:
            joined = _joined_label(storage, request_id)
            if joined is not None and joined[1] is not None:
                fresh[request_id] = joined[1]

    def mutate(current: Any) -> tuple[dict[str, Any], dict | None]:
        labels = _stored_labels(current)
        for request_id, entry in fresh.items():
            if labels.get(request_id, {}).get("etag") != entry["etag"]:  # an event may have brought it meanwhile
                labels[request_id] = entry
        labels = _prune_labels(labels, config, now)
        return labels, {"labels": labels}

    return storage.update_json(STATE_BUCKET, MONITOR_LABELS_KEY, mutate, conflict=MonitorStateConflict)
