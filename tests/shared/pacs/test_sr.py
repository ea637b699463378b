"""The SR and the Secondary Capture built from a generated DX: what a PACS viewer and highdicom read back."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from shared.imaging import encode_png
from shared.pacs.sr import (
    SC_SERIES_DESCRIPTION,
    SR_SERIES_DESCRIPTION,
    Finding,
    heatmap_secondary_capture,
    measurement_report,
    result_uid,
)
from tests.shared.pacs.generated_dx import ACCESSION, PATIENT_ID, PATIENT_NAME, generated_dx

FINDING = Finding(present=True, probability=0.8321, threshold=0.35, model_name="xray-vit", model_version="7")


@pytest.fixture
def source():
    return pydicom.dcmread(io.BytesIO(generated_dx()))


def _roundtrip(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _text_items(dataset) -> dict[str, set[str]]:
    """Every TEXT content item of the SR tree: concept name → its values."""
    found: dict[str, set[str]] = {}
    for item in dataset.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            found.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, set()).add(item.TextValue)
        for name, values in _text_items(item).items():
            found.setdefault(name, set()).update(values)
    return found


def test_sr_parses_with_highdicom_and_carries_the_finding_probability_model_and_unverified(source):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sr = hd.sr.srread(io.BytesIO(_roundtrip(measurement_report(source, FINDING, secret="k"))))
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.StudyInstanceUID == source.StudyInstanceUID  # the original study ...
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID  # ... in a new series
    assert sr.SeriesDescription == SR_SERIES_DESCRIPTION and "decision support" in sr.SeriesDescription
    # The patient as the PACS files it: copied from the original instance at export time.
    assert (str(sr.PatientName), sr.PatientID, sr.AccessionNumber) == (PATIENT_NAME, PATIENT_ID, ACCESSION)
    equipment = sr.ContributingEquipmentSequence[0]
    assert equipment.Manufacturer == "xray-triage" and equipment.SoftwareVersions == "7"

    (group,) = sr.content.get_image_measurement_groups()
    evaluations = group.get_qualitative_evaluations()
    (pneumonia,) = [e for e in evaluations if e.name.value == "233604007"]
    assert pneumonia.name.scheme_designator == "SCT" and pneumonia.value == codes.SCT.Present
    measurements = {m.name.meaning: m for m in group.get_measurements()}
    assert measurements[codes.DCM.Probability.meaning].value == pytest.approx(0.8321)
    assert measurements[codes.DCM.ThresholdValue.meaning].value == pytest.approx(0.35)
    texts = _text_items(sr)
    assert texts[codes.DCM.AlgorithmName.meaning] == {"xray-vit"}
    assert texts[codes.DCM.AlgorithmVersion.meaning] == {"7"}
    assert group.finding_type.value == "233604007"


def test_absent_when_the_label_is_normal(source):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    normal = Finding(present=False, probability=0.1, threshold=0.35, model_name="xray-vit", model_version="7")
    sr = hd.sr.srread(io.BytesIO(_roundtrip(measurement_report(source, normal, secret="k"))))
    (group,) = sr.content.get_image_measurement_groups()
    assert [e.value for e in group.get_qualitative_evaluations()] == [codes.SCT.Absent]


def test_uids_are_the_same_for_the_same_input_and_model_and_differ_otherwise(source):
    first = measurement_report(source, FINDING, secret="k")
    again = measurement_report(source, FINDING, secret="k")
    assert first.SOPInstanceUID == again.SOPInstanceUID and first.SeriesInstanceUID == again.SeriesInstanceUID
    assert first.SOPInstanceUID.startswith("2.25.") and len(first.SOPInstanceUID) <= 64
    assert pydicom.uid.UID(first.SOPInstanceUID).is_valid
    newer = Finding(**{**FINDING.__dict__, "model_version": "8"})
    assert measurement_report(source, newer, secret="k").SOPInstanceUID != first.SOPInstanceUID
    assert measurement_report(source, FINDING, secret="other").SOPInstanceUID != first.SOPInstanceUID
    assert result_uid("k", "1.2.3", "7", "sr") != result_uid("k", "1.2.3", "7", "sc")


def test_secondary_capture_is_in_the_study_with_its_notice_burned_in(source):
    overlay = encode_png(np.zeros((28, 28), np.uint8))
    sc = pydicom.dcmread(io.BytesIO(_roundtrip(heatmap_secondary_capture(source, overlay, FINDING, secret="k"))))
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.BurnedInAnnotation == "YES" and sc.SeriesDescription == SC_SERIES_DESCRIPTION
    pixels = sc.pixel_array
    assert pixels.shape[2] == 3 and min(pixels.shape[:2]) >= 512  # legible, not the 28 px working size
    # The overlay was black: the yellow text of the notice is what made pixels bright.
    band = pixels[: pixels.shape[0] - 512]
    assert (band[..., 0] > 200).sum() > 100 and (pixels[-512:] == 0).all()
    assert sc.SOPInstanceUID != measurement_report(source, FINDING, secret="k").SOPInstanceUID


def test_a_not_assessable_result_is_indeterminate_with_its_reason_and_no_probability(source):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from shared.gate import REASONS

    result = {"status": "ok", "assessable": False, "label": None, "probability": None, "threshold": 0.35,
              "reason": {"code": "not_grayscale", "message": REASONS["not_grayscale"]},
              "model": {"name": "xray-vit", "version": "7"}}
    refused = Finding.from_result(result)
    assert (refused.assessable, refused.probability, refused.threshold) == (False, None, None)
    sr = hd.sr.srread(io.BytesIO(_roundtrip(measurement_report(source, refused, secret="k"))))
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesDescription == SR_SERIES_DESCRIPTION
    (group,) = sr.content.get_image_measurement_groups()
    (pneumonia,) = group.get_qualitative_evaluations()
    assert pneumonia.name.value == "233604007" and pneumonia.value == codes.SCT.Indeterminate
    assert pneumonia.value.value == "82334004"
    assert group.get_measurements() == []  # no probability, no threshold
    texts = _text_items(sr)
    (comment,) = texts[codes.DCM.Comment.meaning]
    assert "not_grayscale" in comment and REASONS["not_grayscale"] in comment and "Not assessable" in comment
    assert texts[codes.DCM.AlgorithmName.meaning] == {"xray-vit"} and texts[codes.DCM.AlgorithmVersion.meaning] == {"7"}
    assert codes.DCM.Probability.meaning not in str(sr)
    # The same input and model: the same UIDs as before, so a redelivery replaces it in the PACS.
    assert measurement_report(source, refused, secret="k").SOPInstanceUID == sr.SOPInstanceUID
    with pytest.raises(ValueError, match="no heatmap"):
        heatmap_secondary_capture(source, encode_png(np.zeros((28, 28), np.uint8)), refused, secret="k")


def test_a_reason_without_a_message_takes_the_gates_text():
    from shared.gate import REASONS

    refused = Finding.from_result({"assessable": False, "reason": {"code": "flat_image"}, "model": {}})
    assert refused.reason_message == REASONS["flat_image"] and "flat_image" in (refused.reason_text or "")
    assert FINDING.reason_text is None and FINDING.assessable
