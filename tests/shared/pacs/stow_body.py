"""STOW-RS request bodies for the tests: `multipart/related` built by hand (as a client would send it) and
instances that the store must refuse (another SOP class, another study, a cut-off file)."""

from __future__ import annotations

import io

__all__ = ["BOUNDARY", "CONTENT_TYPE", "ct_image", "related_body", "uids", "with_study"]

BOUNDARY = "stow-test-boundary-7d3e"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def related_body(*parts: bytes, media_type: str | None = "application/dicom", boundary: str = BOUNDARY) -> bytes:
    """A multipart/related body with one part per item, each with `Content-Type: media_type` (None: no header)."""
    header = f"Content-Type: {media_type}\r\n".encode() if media_type else b""
    chunks = [b"--" + boundary.encode() + b"\r\n" + header + b"\r\n" + part + b"\r\n" for part in parts]
    return b"".join(chunks) + b"--" + boundary.encode() + b"--\r\n"


def _rewrite(data: bytes, **attributes: str) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
        if keyword == "SOPClassUID":
            ds.file_meta.MediaStorageSOPClassUID = value
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ct_image(dx: bytes) -> bytes:
    """The same file as a CT Image Storage instance (a SOP class xray-triage does not accept)."""
    from pydicom.uid import CTImageStorage

    return _rewrite(dx, SOPClassUID=CTImageStorage, Modality="CT")


def with_study(dx: bytes, study_uid: str) -> bytes:
    return _rewrite(dx, StudyInstanceUID=study_uid)


def uids(data: bytes) -> tuple[str, str, str]:
    """(SOPClassUID, SOPInstanceUID, StudyInstanceUID) of a file."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
