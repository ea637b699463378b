"""The preprocess function's upload clean-up: validate an image and strip DICOM patient identifiers before storing.

`store_upload` writes the cleaned bytes to INPUT_BUCKET, where the upload triggers inference (design §4). A DICOM
whose pixels carry burned-in text (BurnedInAnnotation YES) is refused (400) unless the operator marks such images
(BURNED_IN_ANNOTATION=mark); de-identification needs the installation's DEID_SECRET (503 without it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shared import imaging
from shared.dicom import BurnedInAnnotation, burned_in_annotation, deidentify_bytes
from shared.names import INPUT_BUCKET

if TYPE_CHECKING:
    from shared.storage import Storage

__all__ = ["CleanUpload", "clean_upload", "store_upload"]

_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "dicom": "application/dicom"}
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "dicom": "dcm"}


@dataclass(frozen=True)
class CleanUpload:
    """An accepted upload: bytes safe to store (DICOM de-identified) and the image they decode to (working size)."""

    data: bytes = field(repr=False)
    content_type: str
    format: str  # png | jpeg | dicom
    image: np.ndarray  # float32 [H, W] in [0, 1], at most imaging.WORKING_SIDE on the longer side
    deidentified: bool
    burned_in_annotation: bool = False  # marked (BURNED_IN_ANNOTATION=mark): its pixels carry text

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def key(self) -> str:
        """Its key in INPUT_BUCKET: `<sha256>.<ext>`, so the same cleaned bytes are stored once."""
        return f"{self.sha256}.{_EXTENSIONS[self.format]}"

    def to_json(self) -> dict[str, Any]:
        image = self.image
        body = {
            "format": self.format,
            "shape": [int(image.shape[0]), int(image.shape[1])],
            "deidentified": self.deidentified,
            "sha256": self.sha256,
            "stats": {
                name: round(float(fn(image)), 6)
                for name, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std))
            },
        }
        if self.burned_in_annotation:
            body["burned_in_annotation"] = True
        return body


def clean_upload(
    data: bytes,
    content_type: str | None,
    *,
    max_pixels: int,
    deid_secret: str | None = None,
    burned_in: str = "refuse",
) -> CleanUpload:
    """Validate an upload and strip DICOM patient identifiers (PS3.15 basic profile) before anything stores it.

    The de-identified bytes are decoded again, so what is stored is exactly what was validated. `burned_in` is the
    operator's BURNED_IN_ANNOTATION policy (refuse | mark); `deid_secret` the installation's DEID_SECRET.
    """
    image = imaging.decode_image(data, content_type, max_pixels=max_pixels)  # validates type, size, pixels
    kind = imaging.sniff_format(data) or "dicom"  # decode_image only accepts unsniffable bytes as DICOM
    if kind != "dicom":
        return CleanUpload(data, _CONTENT_TYPES[kind], kind, image, deidentified=False)
    marked = burned_in_annotation(data)
    if marked and burned_in != "mark":
        raise BurnedInAnnotation(
            "DICOM BurnedInAnnotation (0028,0301) is YES: the pixels carry text that may identify the patient, "
            "and this installation refuses such images (BURNED_IN_ANNOTATION=refuse)"
        )
    data = deidentify_bytes(data, secret=deid_secret)
    image = imaging.decode_image(data, "application/dicom", max_pixels=max_pixels)
    return CleanUpload(data, _CONTENT_TYPES[kind], kind, image, deidentified=True, burned_in_annotation=marked)


def store_upload(storage: Storage, upload: CleanUpload) -> dict[str, str]:
    """Write the cleaned bytes to INPUT_BUCKET/`upload.key`; returns {"bucket", "key"}."""
    storage.put_bytes(INPUT_BUCKET, upload.key, upload.data, content_type=upload.content_type)
    return {"bucket": INPUT_BUCKET, "key": upload.key}
