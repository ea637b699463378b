"""The upload clean-up of the preprocess function: validation and DICOM de-identification before storing."""

from __future__ import annotations

from shared.uploads import clean_upload
from tests.functions.tiny_model import dicom_bytes, png_bytes


def test_clean_upload_strips_dicom_identifiers() -> None:
    upload = clean_upload(dicom_bytes(patient_name="DOE^JANE"), "application/dicom", max_pixels=10_000)
    assert upload.deidentified and upload.format == "dicom"
    assert b"DOE^JANE" not in upload.data and b"PID-12345" not in upload.data
    assert upload.image.shape == (28, 28)
    png = clean_upload(png_bytes(), "image/png", max_pixels=10_000)
    assert not png.deidentified and png.to_json()["shape"] == [28, 28]
