"""The images a load test sends: read from a folder of PNG / JPEG / DICOM files or from an .npz data set.

An .npz gives the first of its test / val / train splits (`<split>_images`, uint8 [N, H, W]), encoded as PNG;
a folder gives its image files in name order, sent as they are with their media type. Each image also carries
its pixels (uint8, for the faithfulness measure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import UserError
from shared.imaging import decode_image, encode_png

__all__ = ["MEDIA_TYPES", "LoadImage", "load_images"]

MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".dcm": "application/dicom"}


@dataclass(frozen=True)
class LoadImage:
    name: str  # a file name with the extension of its format: case-3.png, study.dcm
    data: bytes
    content_type: str
    pixels: np.ndarray  # uint8 [H, W]


def load_images(path: Path, count: int | None = None) -> list[LoadImage]:
    """Up to `count` images from `path` (a folder or an .npz); UserError naming `--images` when there are none."""
    path = Path(path)
    if path.is_dir():
        images = _from_folder(path, count)
    elif path.is_file() and path.suffix == ".npz":
        images = _from_npz(path, count)
    else:
        raise UserError(f"--images {path}: not a folder of PNG / JPEG / DICOM files nor an .npz file")
    if not images:
        raise UserError(f"--images {path}: no images in it")
    return images


def _from_folder(folder: Path, count: int | None) -> list[LoadImage]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MEDIA_TYPES)[:count]
    images = []
    for file in files:
        data = file.read_bytes()
        media = MEDIA_TYPES[file.suffix.lower()]
        pixels = (decode_image(data, media) * 255.0 + 0.5).astype(np.uint8)
        images.append(LoadImage(file.name, data, media, pixels))
    return images


def _from_npz(path: Path, count: int | None) -> list[LoadImage]:
    with np.load(path) as arrays:
        split = next((f"{s}_images" for s in ("test", "val", "train") if f"{s}_images" in arrays), None)
        if split is None:
            raise UserError(f"--images {path}: no test_images / val_images / train_images array")
        pixels = np.asarray(arrays[split][:count], np.uint8)
    return [LoadImage(f"{index}.png", encode_png(image), "image/png", image) for index, image in enumerate(pixels)]
