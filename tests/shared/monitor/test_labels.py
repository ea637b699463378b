"""The label join against the local S3 server: per model version, replaced when changed, caught up on a tick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.config import MonitorConfig
from shared.events import NullPublisher
from shared.feedback import FeedbackRequest, submit_feedback
from shared.monitor.labels import record_label, sync_labels
from shared.monitor.report import write_report
from shared.monitor.statistics import live_accuracy
from shared.names import MONITOR_LABELS_KEY
from tests.shared.monitor.streams import CONFIG, NOW, label


def test_labels_are_joined_with_their_predictions_per_model_version(storage):
    label(storage, "r1", "pneumonia", "pneumonia", version="3")
    label(storage, "r2", "pneumonia", "normal", version="3")
    label(storage, "r3", "normal", "normal", version="4")
    storage.put_json("feedback", "_state/retrain.json", {"used": {}, "batches": {}})  # retrain's, not a label
    for request_id in ("r1", "r2", "r3"):
        assert record_label(storage, CONFIG, request_id, now=NOW) == "updated"
    assert record_label(storage, CONFIG, "r1", now=NOW) == "unchanged"  # the same event again
    assert record_label(storage, CONFIG, "gone", now=NOW) == "missing"

    report = write_report(storage, CONFIG, now=NOW, card=None)
    by_version = report["live_accuracy"]["by_version"]
    assert set(by_version) == {"3", "4"}
    assert (by_version["3"]["n"], by_version["3"]["accuracy"], by_version["3"]["sensitivity"]) == (2, 0.5, 1.0)
    assert by_version["3"]["specificity"] == 0.0
    assert (by_version["4"]["n"], by_version["4"]["accuracy"]) == (1, 1.0)
    assert set(storage.get_json("triage-state", MONITOR_LABELS_KEY)["labels"]) == {"r1", "r2", "r3"}


def test_a_changed_label_replaces_the_old_one_and_missed_events_are_caught_up_on_tick(storage):
    label(storage, "r1", "pneumonia", "normal")
    label(storage, "r2", "normal", "normal")  # no event ever reaches the monitor for these two
    assert live_accuracy(sync_labels(storage, CONFIG, now=NOW).values())["overall"]["accuracy"] == 0.5

    submit_feedback(storage, FeedbackRequest("r1", "pneumonia", "ann", "ann"), NullPublisher())  # corrected
    assert record_label(storage, CONFIG, "r1", now=NOW) == "updated"
    labels = sync_labels(storage, CONFIG, now=NOW)
    assert len(labels) == 2 and live_accuracy(labels.values())["overall"]["accuracy"] == 1.0


def test_live_accuracy_keeps_only_the_latest_labels_of_the_window(storage):
    for n in range(4):
        label(storage, f"r{n}", "normal", "normal")
    labels = sync_labels(storage, MonitorConfig(window_labels=3), now=datetime.now(UTC))
    assert len(labels) == 3
    later = datetime.now(UTC) + timedelta(days=8)  # every label is older than the 7-day window by then
    assert sync_labels(storage, MonitorConfig(), now=later) == {}
