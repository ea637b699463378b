"""The working size of a decoded image: large inputs are box-averaged by a whole factor, one row band at a time.

A 47 KB PNG can declare 7000 x 7000 pixels: as float32 that is 196 MB, and every full-size copy after it (the
heatmap, the RGB overlay) costs as much again. The decoders bring such images to at most WORKING_SIDE pixels on the
longer side right after decoding, converting and averaging a band of rows at a time, so the largest array made is
the decoder's own (the format's native pixels) plus one band. The model sees the image at its own input size
(far smaller), and the heatmap overlay is drawn at the working size, so its display size is bounded too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = ["BAND_ROWS", "WORKING_SIDE", "reduce_in_bands", "working_factor"]

WORKING_SIDE = 1024  # longer side, in pixels, of a decoded image handed to the model steps and the overlay
BAND_ROWS = 256  # about this many source rows are converted to float at once


def working_factor(width: int, height: int, max_side: int | None) -> int:
    """The smallest whole factor that brings the longer side to at most `max_side` (1: no reduction)."""
    if max_side is None or max_side <= 0:
        return 1
    longer = max(int(width), int(height))
    return max(1, -(-longer // max_side))


def reduce_in_bands(height: int, band: Callable[[int, int], np.ndarray], factor: int) -> np.ndarray:
    """Box-average an image of `height` rows by `factor` in both directions, `band(top, bottom)` giving its rows
    [top, bottom) as float32 [rows, width] in [0, 1]; edge boxes average the pixels they have (PIL `reduce`)."""
    if factor <= 1:
        return np.asarray(band(0, height), dtype=np.float32)
    step = factor * max(1, BAND_ROWS // factor)  # whole boxes per band, so bands join without seams
    parts = []
    for top in range(0, height, step):
        rows = np.ascontiguousarray(band(top, min(top + step, height)), dtype=np.float32)
        parts.append(np.asarray(Image.fromarray(rows).reduce(factor), dtype=np.float32))
    return np.clip(np.concatenate(parts, axis=0), 0.0, 1.0)
