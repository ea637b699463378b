"""The upload clean-up of the preprocess function: validation and DICOM de-identification before storing."""

from __future__ import annotations

from shared.uploads import clean_upload
from tests.functions.tiny_model import dicom_bytes, png_bytes


def test_clean_upload_strips_dicom_identifiers() -> None:
    upload = clean_upload(dicom_bytes(patient_name="DOE^JANE"), "application/dicom", max_pixels=10_000,
                          deid_secret="uploads-test-secret")
    assert upload.deidentified and upload.format == "dicom"
    assert b"DOE^JANE" not in upload.data and b"PID-12345" not in upload.data
    assert upload.image.shape == (28, 28)
    png = clean_upload(png_bytes(), "image/png", max_pixels=10_000)
    assert not png.deidentified and png.to_json()["shape"] == [28, 28]


def _burned_in() -> bytes:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes()))
    ds.BurnedInAnnotation = "YES"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_burned_in_dicom_is_refused_unless_the_operator_marks_it() -> None:
    import pytest

    from shared.dicom import BurnedInAnnotation

    with pytest.raises(BurnedInAnnotation):
        clean_upload(_burned_in(), "application/dicom", max_pixels=10_000, deid_secret="s")
    marked = clean_upload(_burned_in(), "application/dicom", max_pixels=10_000, deid_secret="s", burned_in="mark")
    assert marked.deidentified and marked.to_json()["burned_in_annotation"] is True


def test_without_a_secret_a_dicom_upload_is_refused_before_anything_is_stored() -> None:
    import pytest

    from shared.dicom import DeidentificationNotConfigured

    with pytest.raises(DeidentificationNotConfigured):
        clean_upload(dicom_bytes(), "application/dicom", max_pixels=10_000)
