"""Drift in the tick's report: against the first window or the model card, of predictions and of inputs."""

from __future__ import annotations

import pytest

from shared.monitor.drift import card_reference, load_card
from shared.monitor.report import write_report
from shared.names import MONITOR_REPORT_KEY
from tests.shared.monitor.streams import CONFIG, NOW, card_with_val, send_predictions, spread


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
    assert storage.get_json("triage-state", MONITOR_REPORT_KEY) == report


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


def test_the_card_is_read_from_a_local_dir_or_an_s3_prefix_and_never_from_the_registry(storage, tmp_path):
    card = card_with_val(accuracy=0.84, sensitivity=0.9, specificity=0.8)
    card.save(tmp_path)
    storage.put_bytes("processed", "models/v3/model_card.json", card.to_json().encode())
    assert load_card(str(tmp_path), storage) == card
    assert load_card(str(tmp_path / "model.onnx"), storage) == card
    assert load_card("s3://processed/models/v3/", storage) == card
    assert load_card("models:/xray-vit@champion", storage) is None  # would mean downloading the model
    assert load_card("s3://processed/nothing-here/", storage) is None  # unreadable: the first window serves
    assert load_card(None, storage) is None
