"""The preprocess function's upload clean-up: validate an image and strip DICOM patient identifiers before storing.

`store_upload` writes the cleaned bytes to INPUT_BUCKET, where the upload triggers inference (design §4).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shared import imaging
from shared.dicom import deidentify_bytes
from shared.names import INPUT_BUCKET

if TYPE_CHECKING:
    from shared.storage import Storage

__all__ = ["CleanUpload", "clean_upload", "store_upload"]

_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "dicom": "application/dicom"}
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "dicom": "dcm"}


@dataclass(frozen=True)
class CleanUpload:
    """An accepted upload: bytes safe to store (DICOM de-identified) and the image they decode to."""

    data: bytes = field(repr=False)
    content_type: str
    format: str  # png | jpeg | dicom
    image: np.ndarray  # float32 [H, W] in [0, 1]
    deidentified: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def key(self) -> str:
        """Its key in INPUT_BUCKET: `<sha256>.<ext>`, so the same cleaned bytes are stored once."""
        return f"{self.sha256}.{_EXTENSIONS[self.format]}"

    def to_json(self) -> dict[str, Any]:
        image = self.image
        return {
            "format": self.format,
            "shape": [int(image.shape[0]), int(image.shape[1])],
            "deidentified": self.deidentified,
            "sha256": self.sha256,
            "stats": {
                name: round(float(fn(image)), 6)
                for name, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std))
            },
        }


def clean_upload(data: bytes, content_type: str | None, *, max_pixels: int) -> CleanUpload:
    """Validate an upload and strip DICOM patient identifiers (PS3.15 basic profile) before anything stores it.

    The de-identified bytes are decoded again, so what is stored is exactly what was validated.
    """
    image = imaging.decode_image(data, content_type, max_pixels=max_pixels)  # validates type, size, pixels
    kind = imaging.sniff_format(data) or "dicom"  # decode_image only accepts unsniffable bytes as DICOM
    deidentified = False
    if kind == "dicom":
        data = deidentify_bytes(data)
        image = imaging.decode_image(data, "application/dicom", max_pixels=max_pixels)
        deidentified = True
    return CleanUpload(data, _CONTENT_TYPES[kind], kind, image, deidentified)


def store_upload(storage: Storage, upload: CleanUpload) -> dict[str, str]:
    """Write the cleaned bytes to INPUT_BUCKET/`upload.key`; returns {"bucket", "key"}."""
    storage.put_bytes(INPUT_BUCKET, upload.key, upload.data, content_type=upload.content_type)
    return {"bucket": INPUT_BUCKET, "key": upload.key}
