"""A DICOM instance received from the hospital (C-STORE or STOW-RS): checked, then stored in inference-inputs.

`check_instance` reads the instance as the decoder will (the data set parses, the UIDs the key needs are there,
the SOP class is a chest radiograph and the one the sender declared, the pixels decode) and refuses it with a
`RefusedInstance` naming the reason (no identifier in it) otherwise. `store_instance` writes the instance as
received (the hospital's own storage) under `shared.names.dicom_instance_key`, where the object-created event
starts ingest, which de-identifies before anything leaves the input bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import DEFAULT_MAX_PIXELS
from shared.dicom import decode_dicom, read_dataset
from shared.errors import ImageError, PayloadTooLarge, TriageError
from shared.names import INPUT_BUCKET, dicom_instance_key
from shared.pacs.sop_classes import CHEST_RADIOGRAPH_SOP_CLASSES
from shared.storage import Storage
from shared.working_size import WORKING_SIDE

__all__ = ["CheckedInstance", "RefusedInstance", "check_instance", "store_instance"]

_CONTENT_TYPE = "application/dicom"


class RefusedInstance(TriageError):
    """An instance that is not stored: `mismatch` when it contradicts its SOP class, else it cannot be read."""

    status = 400
    code = "refused_instance"

    def __init__(self, message: str, *, mismatch: bool = False) -> None:
        super().__init__(message)
        self.mismatch = mismatch


@dataclass(frozen=True)
class CheckedInstance:
    """What storing needs of an accepted instance: its bytes, its key in INPUT_BUCKET, its SOP class."""

    data: bytes
    key: str
    sop_class_uid: str


def _uid(ds: object, keyword: str) -> str:
    value = str(getattr(ds, keyword, "") or "").strip()
    if not value:
        raise RefusedInstance(f"{keyword} is missing", mismatch=True)
    return value


def check_instance(data: bytes, *, declared_sop_class: str | None = None,
                   declared_sop_instance: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> CheckedInstance:
    """The instance if xray-triage can triage it; `RefusedInstance` otherwise (the reason names no value)."""
    try:
        ds = read_dataset(data, header_only=True)
    except (ImageError, PayloadTooLarge) as exc:  # PayloadTooLarge: a deflated data set inflating past the limit
        raise RefusedInstance(f"the data set cannot be parsed ({exc.code})") from exc
    try:
        sop_class = _uid(ds, "SOPClassUID")
        sop_instance = _uid(ds, "SOPInstanceUID")
        study = _uid(ds, "StudyInstanceUID")
    except RefusedInstance:
        raise
    except Exception as exc:  # a UID element whose value pydicom cannot convert
        raise RefusedInstance("a UID element cannot be read") from exc
    if sop_class not in CHEST_RADIOGRAPH_SOP_CLASSES:
        raise RefusedInstance("the SOP class is not a chest radiograph (CR or DX)", mismatch=True)
    if declared_sop_class is not None and sop_class != declared_sop_class.strip():
        raise RefusedInstance("the data set's SOP class differs from the one it was sent as", mismatch=True)
    if declared_sop_instance is not None and sop_instance != declared_sop_instance.strip():
        raise RefusedInstance("the data set's SOP instance UID differs from the one it was sent as", mismatch=True)
    try:
        decode_dicom(data, max_pixels=max_pixels, max_side=WORKING_SIDE)
    except (ImageError, PayloadTooLarge) as exc:  # a bomb is refused before its pixels are decoded
        raise RefusedInstance(f"the image cannot be decoded ({exc.code})") from exc
    return CheckedInstance(data=data, key=dicom_instance_key(study, sop_instance), sop_class_uid=sop_class)


def store_instance(storage: Storage, instance: CheckedInstance) -> str:
    """Write the instance to INPUT_BUCKET (the same key for a resent instance); returns its etag."""
    return storage.put_bytes(INPUT_BUCKET, instance.key, instance.data, content_type=_CONTENT_TYPE)
