"""The rolling prediction summary against the local S3 server: idempotent, concurrent, strict on bad events."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from shared.events import BadEvent, prediction_created_event
from shared.monitor.predictions import record_prediction
from shared.names import MONITOR_STATE_KEY
from tests.shared.monitor.streams import CONFIG, NOW, prediction, send_predictions


def test_the_same_prediction_event_twice_counts_once(storage):
    assert send_predictions(storage, [0.9, 0.2]) == ["counted", "counted"]
    assert send_predictions(storage, [0.9]) == ["duplicate"]  # the broker redelivers event 0
    state = storage.get_json("triage-state", MONITOR_STATE_KEY)
    assert state["events_counted"] == 2 and sum(state["hours"]["2026-11-26T12"]["3"]["histogram"]) == 2


def test_a_corrupt_state_object_is_started_afresh_not_fatal(storage):
    storage.put_bytes("triage-state", MONITOR_STATE_KEY, b"{not json", "application/json")
    assert send_predictions(storage, [0.9]) == ["counted"]
    assert storage.get_json("triage-state", MONITOR_STATE_KEY)["events_counted"] == 1


def test_predictions_older_than_the_window_are_not_counted(storage):
    old = prediction(1, 0.4, when=NOW - timedelta(days=8))
    assert record_prediction(storage, CONFIG, "old-event", old, now=NOW) == "too_old"
    assert not storage.exists("triage-state", MONITOR_STATE_KEY)


@pytest.mark.parametrize(
    ("field", "value"), [("probability", 1.5), ("probability", "high"), ("label", "maybe"), ("urgent", "yes")]
)
def test_a_malformed_prediction_is_refused_naming_the_field_and_nothing_is_written(storage, field, value):
    data = {**prediction(1, 0.7), field: value}
    with pytest.raises(BadEvent, match=f"'{field}'"):
        record_prediction(storage, CONFIG, "e1", data, now=NOW)
    assert not storage.exists("triage-state", MONITOR_STATE_KEY)


def test_concurrent_events_are_all_counted(storage):
    outcomes: list[str] = []
    threads = [
        threading.Thread(target=lambda n=n: outcomes.extend(send_predictions(storage, [0.3], start=n)))
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == ["counted"] * 4
    assert storage.get_json("triage-state", MONITOR_STATE_KEY)["events_counted"] == 4


def test_an_intensity_outside_the_unit_range_is_a_bad_event(storage):
    for bad in (1.5, -0.1, "0.5", True):
        event = prediction_created_event(prediction(1, 0.7))
        data = {**event.get_data(), "input": {"mean_intensity": bad}}
        with pytest.raises(BadEvent, match="mean_intensity"):
            record_prediction(storage, CONFIG, event["id"], data, now=NOW)
    assert storage.get_json_versioned("triage-state", MONITOR_STATE_KEY)[0] is None


def _not_assessable(n: int) -> dict:
    """A not-assessable ingest result as its event carries it: no label, no probability, never urgent."""
    return {**prediction(n, 0.5), "assessable": False, "label": None, "probability": None, "urgent": False,
            "reason": {"code": "out_of_distribution", "message": "not a chest film"}}


def test_not_assessable_answers_are_counted_apart_and_kept_out_of_the_probabilities_and_the_reference(storage):
    from shared.monitor.predictions import read_summary, window_summary

    assert send_predictions(storage, [0.9, 0.2, 0.7]) == ["counted"] * 3
    for n in (10, 11):
        event = prediction_created_event(_not_assessable(n))
        assert record_prediction(storage, CONFIG, event["id"], event.get_data(), now=NOW) == "counted"
    state = read_summary(storage, CONFIG)
    window = window_summary(state, CONFIG, now=NOW)
    assert (window["n"], window["not_assessable"], sum(window["histogram"])) == (3, 2, 3)
    assert window["not_assessable_rate"] == pytest.approx(2 / 5)
    assert window["positive_rate"] == pytest.approx(2 / 3)  # of the assessable answers only
    assert window["by_version"]["3"]["not_assessable"] == 2
    assert state["references"]["3"]["n"] == 3 and state["references"]["3"]["not_assessable"] == 0


def test_a_state_written_before_not_assessable_was_counted_still_summarises(storage):
    from shared.monitor.predictions import read_summary, window_summary

    assert send_predictions(storage, [0.9]) == ["counted"]
    state = storage.get_json("triage-state", MONITOR_STATE_KEY)
    for versions in state["hours"].values():
        for summary in versions.values():
            del summary["not_assessable"]
    storage.put_json("triage-state", MONITOR_STATE_KEY, state)
    event = prediction_created_event(_not_assessable(5))
    assert record_prediction(storage, CONFIG, event["id"], event.get_data(), now=NOW) == "counted"
    window = window_summary(read_summary(storage, CONFIG), CONFIG, now=NOW)
    assert (window["n"], window["not_assessable"]) == (1, 1)
