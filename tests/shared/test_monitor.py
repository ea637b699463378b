"""The monitor's logic against the local S3 server: live accuracy joins, idempotent drift summary, PSI / KS, report."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from shared.errors import UserError
from shared.events import BadEvent, NullPublisher, make_event, prediction_created_event
from shared.feedback import FeedbackRequest, record_request, submit_feedback
from shared.modelcard import ModelCard
from shared.monitor import (
    LABELS_KEY,
    PING,
    REPORT_KEY,
    STATE_KEY,
    Monitor,
    MonitorConfig,
    card_reference,
    ks_distance,
    live_accuracy,
    psi,
    record_label,
    record_prediction,
    sync_labels,
    write_report,
)
from shared.storage import Storage

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CONFIG = MonitorConfig(reference_size=20, min_predictions=20)


def prediction(n: int, probability: float, *, version: str = "3", urgent: bool = False, when: datetime = NOW,
               intensity: float | None = None) -> dict:
    """An ingest result as `triage.prediction.created` carries it (`intensity`: its input's mean intensity)."""
    return {
        **({"input": {"mean_intensity": intensity}} if intensity is not None else {}),
        "request_id": f"req{n}",
        "bucket": "inference-inputs",
        "key": f"scan{n}.png",
        "etag": f"etag{n}",
        "status": "ok",
        "label": "pneumonia" if probability >= 0.5 else "normal",
        "probability": probability,
        "threshold": 0.5,
        "urgent": urgent,
        "model": {"name": "xray-vit", "version": version},
        "completed_at": when.isoformat().replace("+00:00", "Z"),
    }


def send_predictions(storage: Storage, probabilities: list[float], *, start: int = 0, version: str = "3",
                     intensities: list[float] | None = None) -> list[str]:
    outcomes = []
    for offset, p in enumerate(probabilities):
        intensity = intensities[offset] if intensities else None
        event = prediction_created_event(prediction(start + offset, p, version=version, intensity=intensity))
        outcomes.append(record_prediction(storage, CONFIG, event["id"], event.get_data(), now=NOW))
    return outcomes


def label(storage: Storage, request_id: str, predicted: str, truth: str, *, version: str = "3") -> None:
    """A prediction indexed as ingest does it, then a radiologist's label stored as the feedback function does."""
    record_request(
        storage,
        {
            "request_id": request_id,
            "label": predicted,
            "probability": 0.7,
            "model": {"name": "xray-vit", "version": version},
        },
        source="ingest",
    )
    submit_feedback(storage, FeedbackRequest(request_id, truth, "ann", "ann"), NullPublisher())


def test_live_accuracy_of_a_small_known_case():
    pairs = [("pneumonia", "pneumonia"), ("pneumonia", "normal"), ("normal", "normal"), ("normal", "pneumonia")]
    pairs += [("pneumonia", "pneumonia")]
    entries = [{"label": truth, "predicted": said, "model_version": "3"} for truth, said in pairs]
    entries.append({"label": "normal", "predicted": "normal", "model_version": None})
    result = live_accuracy(entries)
    v3 = result["by_version"]["3"]
    assert v3["n"] == 5 and v3["confusion"] == {"tp": 2, "tn": 1, "fp": 1, "fn": 1}
    assert v3["accuracy"] == pytest.approx(3 / 5)
    assert v3["sensitivity"] == pytest.approx(2 / 3)
    assert v3["specificity"] == pytest.approx(1 / 2)
    assert v3["agreement"] == pytest.approx((0.6 - 13 / 25) / (1 - 13 / 25))  # Cohen's kappa
    unversioned = result["by_version"]["unversioned"]
    assert (unversioned["n"], unversioned["accuracy"], unversioned["sensitivity"]) == (1, 1.0, None)
    assert result["overall"]["n"] == 6 and result["overall"]["accuracy"] == pytest.approx(4 / 6)


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
    assert set(storage.get_json("inference-results", LABELS_KEY)["labels"]) == {"r1", "r2", "r3"}


def test_a_changed_label_replaces_the_old_one_and_missed_events_are_caught_up_on_tick(storage):
    label(storage, "r1", "pneumonia", "normal")
    label(storage, "r2", "normal", "normal")  # no event ever reaches the monitor for these two
    assert live_accuracy(sync_labels(storage, CONFIG, now=NOW).values())["overall"]["accuracy"] == 0.5

    submit_feedback(storage, FeedbackRequest("r1", "pneumonia", "bob", "bob"), NullPublisher())  # corrected
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


def test_the_same_prediction_event_twice_counts_once(storage):
    assert send_predictions(storage, [0.9, 0.2]) == ["counted", "counted"]
    assert send_predictions(storage, [0.9]) == ["duplicate"]  # the broker redelivers event 0
    state = storage.get_json("inference-results", STATE_KEY)
    assert state["events_counted"] == 2 and sum(state["hours"]["2026-11-26T12"]["3"]["histogram"]) == 2


def test_a_corrupt_state_object_is_started_afresh_not_fatal(storage):
    storage.put_bytes("inference-results", STATE_KEY, b"{not json", "application/json")
    assert send_predictions(storage, [0.9]) == ["counted"]
    assert storage.get_json("inference-results", STATE_KEY)["events_counted"] == 1


def test_predictions_older_than_the_window_are_not_counted(storage):
    old = prediction(1, 0.4, when=NOW - timedelta(days=8))
    assert record_prediction(storage, CONFIG, "old-event", old, now=NOW) == "too_old"
    assert not storage.exists("inference-results", STATE_KEY)


@pytest.mark.parametrize(
    ("field", "value"), [("probability", 1.5), ("probability", "high"), ("label", "maybe"), ("urgent", "yes")]
)
def test_a_malformed_prediction_is_refused_naming_the_field_and_nothing_is_written(storage, field, value):
    data = {**prediction(1, 0.7), field: value}
    with pytest.raises(BadEvent, match=f"'{field}'"):
        record_prediction(storage, CONFIG, "e1", data, now=NOW)
    assert not storage.exists("inference-results", STATE_KEY)


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
    assert storage.get_json("inference-results", STATE_KEY)["events_counted"] == 4


def test_psi_and_ks_are_zero_for_identical_distributions_and_large_for_a_shift():
    reference = [5, 10, 20, 30, 20, 10, 5, 0, 0, 0]
    assert psi(reference, [2 * c for c in reference]) == pytest.approx(0.0, abs=1e-12)
    assert ks_distance(reference, reference) == 0.0
    shifted = [0, 0, 0, 5, 10, 20, 30, 20, 10, 5]
    assert psi(reference, shifted) > 1.0 and ks_distance(reference, shifted) > 0.5
    with pytest.raises(ValueError, match="bins"):
        psi(reference, shifted[:5])


def spread(n: int, low: float, high: float) -> list[float]:
    """n probabilities evenly over [low, high], every other one first (so any first half spans the range)."""
    return [low + (high - low) * (i + 0.5) / n for i in sorted(range(n), key=lambda i: (i % 2, i))]


def test_no_drift_while_predictions_look_like_the_first_window(storage):
    send_predictions(storage, spread(20, 0.0, 1.0))  # the first window: the reference
    send_predictions(storage, spread(20, 0.0, 1.0), start=100)
    report = write_report(storage, CONFIG, now=NOW, card=None)
    detail = report["drift_by_version"]["3"]
    assert report["drift"] is False and detail["status"] == "stable"
    assert detail["psi_probability"] == pytest.approx(0.0, abs=1e-9)
    assert detail["reference"]["histogram_source"] == "first_window"
    assert detail["psi_intensity"] is None  # these events carry no input intensity: not judged, not an error
    assert report["predictions"]["n"] == 40 and report["predictions"]["positive_rate"] == 0.5
    assert storage.get_json("inference-results", REPORT_KEY) == report


def test_a_shift_of_the_probabilities_is_flagged_as_drift(storage):
    send_predictions(storage, spread(20, 0.0, 0.5))  # the reference: mostly normal
    send_predictions(storage, spread(60, 0.6, 1.0), start=100)  # then mostly pneumonia
    report = write_report(storage, CONFIG, now=NOW, card=None)
    detail = report["drift_by_version"]["3"]
    assert report["drift"] is True and detail["psi_probability"] > CONFIG.psi_threshold
    assert detail["ks_probability"] > CONFIG.ks_threshold
    assert any(reason.startswith("psi_probability") for reason in detail["reasons"])


def test_a_new_model_version_is_compared_with_its_own_first_window_not_with_the_old_models(storage):
    send_predictions(storage, spread(40, 0.0, 0.5), version="3")
    send_predictions(storage, spread(40, 0.5, 1.0), start=100, version="4")  # the new champion says pneumonia more
    report = write_report(storage, CONFIG, now=NOW, card=None)
    assert report["drift"] is False and set(report["drift_by_version"]) == {"3", "4"}
    assert report["predictions"]["n"] == 80 and report["predictions"]["by_version"]["4"]["positive_rate"] == 1.0


def test_no_verdict_before_enough_predictions(storage):
    send_predictions(storage, [0.9] * 5)
    report = write_report(storage, CONFIG, now=NOW, card=None)
    assert report["drift"] is False and report["drift_by_version"]["3"]["status"] == "insufficient_data"


def test_brighter_inputs_are_input_drift_even_while_the_predictions_look_the_same(storage):
    probabilities = spread(20, 0.0, 1.0)
    send_predictions(storage, probabilities, intensities=spread(20, 0.40, 0.60))  # the first window
    send_predictions(storage, probabilities, start=100, intensities=spread(20, 0.42, 0.58))
    detail = write_report(storage, CONFIG, now=NOW, card=None)["drift_by_version"]["3"]
    assert detail["status"] == "stable" and detail["psi_intensity"] < CONFIG.psi_threshold
    assert detail["reference"]["intensity_source"] == "first_window"
    # A new exposure setting (or a MONOCHROME1 image shown inverted): the same answers, brighter inputs.
    send_predictions(storage, probabilities * 2, start=200, intensities=spread(40, 0.75, 0.95))
    detail = write_report(storage, CONFIG, now=NOW, card=None)["drift_by_version"]["3"]
    assert detail["drift"] is True and detail["psi_probability"] == pytest.approx(0.0, abs=1e-9)
    assert detail["psi_intensity"] > CONFIG.psi_threshold and detail["ks_intensity"] > CONFIG.ks_threshold
    assert [reason.split()[0] for reason in detail["reasons"]] == ["psi_intensity", "ks_intensity"]


def test_the_model_cards_val_intensities_are_the_input_reference(storage):
    reference = [0] * 10
    reference[4] = reference[5] = 50  # val inputs: mean intensity 0.4-0.6
    card = card_with_val(accuracy=0.9, sensitivity=0.9, specificity=0.9, intensity_histogram=reference)
    assert card_reference(card, 10)["intensity_histogram"] == reference
    assert card_reference(card_with_val(intensity_histogram=[1, 2]), 10)["intensity_histogram"] is None  # bins
    send_predictions(storage, [0.9, 0.1] * 15, intensities=spread(30, 0.41, 0.59))
    detail = write_report(storage, CONFIG, now=NOW, card=card)["drift_by_version"]["3"]
    assert detail["reference"]["intensity_source"] == "model_card" and detail["psi_intensity"] < 0.1
    send_predictions(storage, [0.9, 0.1] * 30, start=100, intensities=spread(60, 0.15, 0.3))  # darker
    detail = write_report(storage, CONFIG, now=NOW, card=card)["drift_by_version"]["3"]
    assert detail["drift"] is True and detail["psi_intensity"] > CONFIG.psi_threshold


def test_an_intensity_outside_the_unit_range_is_a_bad_event(storage):
    for bad in (1.5, -0.1, "0.5", True):
        event = prediction_created_event(prediction(1, 0.7))
        data = {**event.get_data(), "input": {"mean_intensity": bad}}
        with pytest.raises(BadEvent, match="mean_intensity"):
            record_prediction(storage, CONFIG, event["id"], data, now=NOW)
    assert storage.get_json_versioned("inference-results", STATE_KEY)[0] is None


def card_with_val(**val: float) -> ModelCard:
    return ModelCard(
        version="3",
        input={"name": "image", "shape": [1, 1, 28, 28], "image_size": 28, "mean": 0.5, "std": 0.5},
        grid=4,
        temperature=1.0,
        threshold=0.5,
        config={},
        sha256={},
        metrics={"val": dict(val)},
    )


def test_the_model_cards_val_split_is_the_positive_rate_reference(storage):
    # 100 val images, 40 pneumonia: tp 36, fn 4, tn 48, fp 12 → 48 % predicted positive.
    card = card_with_val(accuracy=0.84, sensitivity=0.9, specificity=0.8)
    assert card_reference(card, 10)["positive_rate"] == pytest.approx(0.48)
    send_predictions(storage, [0.9, 0.1] * 15)  # 50 % positive: close to val
    assert write_report(storage, CONFIG, now=NOW, card=card)["drift"] is False
    send_predictions(storage, [0.95] * 60, start=100)  # 83 % positive
    detail = write_report(storage, CONFIG, now=NOW, card=card)["drift_by_version"]["3"]
    assert detail["reference"]["positive_rate_source"] == "model_card" and detail["drift"] is True
    assert detail["psi_positive_rate"] > CONFIG.psi_threshold


def test_settings_come_from_the_environment_and_bad_values_name_the_variable():
    from shared.config import Settings

    config = MonitorConfig.from_env(Settings(model_uri="/m"), {"MONITOR_WINDOW_DAYS": "3", "MONITOR_BINS": "20"})
    assert (config.window_days, config.bins, config.model_uri) == (3.0, 20, "/m")
    for env in ({"MONITOR_BINS": "1"}, {"MONITOR_PSI_THRESHOLD": "x"}, {"MONITOR_WINDOW_LABELS": "2.5"}):
        with pytest.raises(UserError, match=next(iter(env))):
            MonitorConfig.from_env(Settings(), env)


def test_the_monitor_dispatches_on_the_event_type(storage):
    monitor = Monitor(storage, CONFIG, now=lambda: NOW, card_loader=lambda: None)
    event = prediction_created_event(prediction(1, 0.8))
    assert monitor.handle(event) == {"status": "counted"}
    tick = make_event(PING, "/apis/v1/namespaces/triage/pingsources/monitor-tick", {"check": "monitor"})
    assert monitor.handle(tick)["status"] == "reported"
    with pytest.raises(BadEvent, match="io.minio.object.created"):
        monitor.handle(make_event("io.minio.object.created", "minio:raw-data", {"key": "a"}))


def test_the_card_is_read_from_a_local_dir_or_an_s3_prefix_and_never_from_the_registry(storage, tmp_path):
    from shared.monitor import load_card

    card = card_with_val(accuracy=0.84, sensitivity=0.9, specificity=0.8)
    card.save(tmp_path)
    storage.put_bytes("processed", "models/v3/model_card.json", card.to_json().encode())
    assert load_card(str(tmp_path), storage) == card
    assert load_card(str(tmp_path / "model.onnx"), storage) == card
    assert load_card("s3://processed/models/v3/", storage) == card
    assert load_card("models:/xray-vit@champion", storage) is None  # would mean downloading the model
    assert load_card("s3://processed/nothing-here/", storage) is None  # unreadable: the first window serves
    assert load_card(None, storage) is None
