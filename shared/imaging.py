"""Image bytes → float image in [0, 1] → model input. Training and serving share these functions.

Decoding brings large images to the working size (`shared.working_size`): JPEG is decoded already scaled down
(libjpeg's DCT scaling, PIL `draft`), PNG and DICOM are box-averaged band by band right after decoding. No decoder
raises anything but the project's 4xx errors (ImageError, UnsupportedMediaType, PayloadTooLarge) for any bytes.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from shared.config import DEFAULT_MAX_PIXELS
from shared.dicom import decode_dicom, effective_bits, is_dicom
from shared.errors import ImageError, PayloadTooLarge, UnsupportedMediaType
from shared.names import IMAGE_CONTENT_TYPES
from shared.working_size import WORKING_SIDE, reduce_in_bands, working_factor

__all__ = [
    "ACCEPTED_CONTENT_TYPES",
    "MAX_PIXELS",
    "Chroma",
    "WORKING_SIDE",
    "batch_to_model_input",
    "decode_image",
    "encode_png",
    "mean_intensity",
    "sniff_format",
    "to_model_input",
]

MAX_PIXELS = DEFAULT_MAX_PIXELS
# PIL raises DecompressionBombError above twice this and only warns above it; our own declared-size check
# (per call, from Settings.max_pixels) is the one that decides, so PIL's advisory warning is silenced.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

ACCEPTED_CONTENT_TYPES = IMAGE_CONTENT_TYPES
MEAN = 0.5
STD = 0.5

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# An object's default repr ("<_io.BytesIO object at 0x7f...>"), which PIL puts in "cannot identify image file ...".
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


@dataclass
class Chroma:
    """The colour a decode saw, before the pixels became grey: the mean spread between a pixel's largest and
    smallest channel, in [0, 1] (0 for a grey source, also one stored as RGB). Filled by `decode_image(chroma=)`
    on a sample of every decoded band (the not-assessable gate's `not_grayscale` check reads it)."""

    total: float = 0.0
    count: int = 0

    def add(self, rgb: np.ndarray, full_scale: float = 255.0) -> None:
        """Count an [H, W, >=3] array of channel values on `full_scale` (only its first three channels)."""
        step = max(1, int(max(rgb.shape[0], rgb.shape[1]) // 256))  # about 256 x 256 samples are plenty
        sample = np.asarray(rgb[::step, ::step, :3], dtype=np.float32)
        if sample.size:
            self.total += float((sample.max(axis=2) - sample.min(axis=2)).sum()) / full_scale
            self.count += sample.shape[0] * sample.shape[1]

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


def sniff_format(data: bytes) -> str | None:
    """'png', 'jpeg' or 'dicom' from the leading bytes, None when none of them."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if is_dicom(data):
        return "dicom"
    return None


def _looks_like_bare_dicom(data: bytes) -> bool:
    """The first element of a data set written without the PS3.10 preamble: group 0002 or 0008, little endian,
    with an explicit VR's two capital letters or an implicit VR's 4-byte length."""
    if len(data) < 8 or data[:2] not in (b"\x02\x00", b"\x08\x00") or data[3:4] != b"\x00":
        return False
    return data[4:6].isalpha() and data[4:6].isupper() or int.from_bytes(data[4:8], "little") < 1 << 16


def _media_type(content_type: str | None) -> str | None:
    if content_type is None:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    return media or None


def decode_image(
    data: bytes,
    content_type: str | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    max_side: int | None = WORKING_SIDE,
    chroma: Chroma | None = None,
) -> np.ndarray:
    """PNG / JPEG / DICOM bytes → 2-D float32 array in [0, 1] (0 = black), at most `max_side` on the longer side.
    A colour source's channel spread is added to `chroma` on the way (same single pass).

    The bytes decide the format (a mislabelled PNG still decodes); the content type only has to be one we
    accept, and `application/dicom` also admits DICOM files written without the 128-byte preamble. An image
    larger than `max_side` is box-averaged by the smallest whole factor that fits (None: the full size).
    """
    media = _media_type(content_type)
    if media is not None and media not in ACCEPTED_CONTENT_TYPES:
        accepted = ", ".join(sorted(ACCEPTED_CONTENT_TYPES))
        raise UnsupportedMediaType(f"content type {media!r} is not accepted (use one of {accepted})")
    if not data:
        raise ImageError("empty body: no image bytes")
    kind = sniff_format(data)
    if kind == "dicom" or (kind is None and media == "application/dicom"):
        return decode_dicom(data, max_pixels=max_pixels, max_side=max_side, chroma=chroma)
    if kind is None:
        hint = (" (they look like a DICOM data set without its 128-byte preamble: send it as application/dicom)"
                if _looks_like_bare_dicom(data) else "")
        raise ImageError(f"the bytes are not a PNG, JPEG or DICOM image{hint}")
    return _decode_raster(data, kind, max_pixels, max_side, chroma)


def _decode_raster(data: bytes, kind: str, max_pixels: int, max_side: int | None,
                   chroma: Chroma | None = None) -> np.ndarray:
    if max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
        # A deployment allowing more than the default: lift PIL's hard ceiling (2x this) to match.
        Image.MAX_IMAGE_PIXELS = max(max_pixels, Image.MAX_IMAGE_PIXELS or 0)
    try:
        image = Image.open(io.BytesIO(data), formats=[kind.upper()])
        # The header is parsed, the pixels are not: refuse bombs before any pixel is decoded.
        width, height = image.size
        if width * height > max_pixels:
            declared = f"{width}x{height} = {width * height} pixels"
            raise PayloadTooLarge(f"{kind.upper()} declares {declared}, over the limit of {max_pixels}")
        if width == 0 or height == 0:
            raise ImageError(f"{kind.upper()} declares an empty image ({width}x{height})")
        factor = working_factor(width, height, max_side)
        if kind == "jpeg" and factor > 1:
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale (at least the size asked for): the full size never exists.
            image.draft(image.mode, (-(-width // factor), -(-height // factor)))
        image.load()
        if kind == "jpeg":
            image = ImageOps.exif_transpose(image)
        return _to_working_size(image, max_side, chroma)
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{kind.upper()} is a decompression bomb: {exc}") from exc
    except (MemoryError, PayloadTooLarge, ImageError):
        raise
    except Exception as exc:
        # Truncated or corrupt files: PIL says "image file is truncated", "broken data stream", ... and its plugins
        # raise other types too (struct.error, ZeroDivisionError) on hostile headers: all are the file's fault.
        said = _OBJECT_REPR.sub("", " ".join(str(exc).split())).strip()  # PIL names our BytesIO "<_io.BytesIO ...>"
        raise ImageError(f"corrupt or truncated {kind.upper()}: {said[:300]}") from exc


def _to_working_size(image: Image.Image, max_side: int | None, chroma: Chroma | None = None) -> np.ndarray:
    """A loaded PIL image → gray float32 in [0, 1], box-averaged to `max_side` a band of rows at a time."""
    width, height = image.size
    factor = working_factor(width, height, max_side)
    full_scale = _sixteen_bit_scale(image)  # of the whole image: every band maps the same way
    if factor == 1:
        return _to_gray_float(image, chroma, full_scale)
    return reduce_in_bands(
        height, lambda top, bottom: _to_gray_float(image.crop((0, top, width, bottom)), chroma, full_scale), factor)


def _sixteen_bit_scale(image: Image.Image) -> float:
    """The white of a 16-bit grey image: 65535, or 2**k - 1 when its values use only k <= 14 bits (at least 8).

    Pixel data exported from a 10-14-bit detector's DICOM to PNG keeps its values (a 12-bit film in 0..4095): read
    over 65535 it is a film at 1/16 of its brightness, as `shared.dicom` maps a DICOM's declared-wider range."""
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return 65535.0
    high = int(image.getextrema()[1])
    return float(2 ** effective_bits(max(min(high, 65535), 0).bit_length(), 16) - 1)


_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr")


def _to_gray_float(image: Image.Image, chroma: Chroma | None = None, full_scale: float = 65535.0) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16"):
        arr16 = np.asarray(image, dtype=np.uint16).astype(np.float32)
        return np.clip(arr16 / np.float32(full_scale), 0.0, 1.0).astype(np.float32)
    if mode == "I":
        # 16-bit grayscale PNGs may open as 32-bit "I" with values in 0..65535.
        arr = np.clip(np.asarray(image, dtype=np.int64), 0, 65535).astype(np.float32)
        return np.clip(arr / np.float32(full_scale), 0.0, 1.0).astype(np.float32)
    if mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if mode != "L":
        # RGB(A), P, LA, 1, CMYK, YCbCr → 8-bit luminance; alpha is dropped (X-rays carry none).
        if mode in _COLOUR_MODES:
            rgb = image if mode in ("RGB", "RGBA", "RGBX") else image.convert("RGB")
            if chroma is not None:
                chroma.add(np.asarray(rgb))
            image = rgb.convert("L")
        else:
            image = image.convert("L")
    return np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255.0)


def to_model_input(image: np.ndarray, size: int) -> np.ndarray:
    """2-D float image in [0, 1] → float32 [1, size, size]: PIL bilinear (antialiased) resize, (x - 0.5) / 0.5."""
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if arr.shape != (size, size):
        resized = Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(resized, dtype=np.float32)
    return ((arr - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)[None]


def _as_unit_float(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    if images.dtype == np.uint16:
        return images.astype(np.float32) / np.float32(65535.0)
    return images.astype(np.float32, copy=False)


def batch_to_model_input(images: np.ndarray, size: int) -> np.ndarray:
    """[N, H, W] uint8 (÷255), uint16 (÷65535) or float in [0, 1] → float32 [N, 1, size, size]."""
    arr = np.asarray(images)
    if arr.ndim != 3:
        raise ValueError(f"expected images of shape [N, H, W], got {arr.shape}")
    unit = _as_unit_float(arr)
    if arr.shape[1:] == (size, size):
        # Same arithmetic as to_model_input without a resize, vectorized.
        return ((unit - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)[:, None]
    out = np.empty((arr.shape[0], 1, size, size), dtype=np.float32)
    for i in range(arr.shape[0]):
        out[i] = to_model_input(unit[i], size)
    return out


def mean_intensity(model_inputs: np.ndarray) -> np.ndarray:
    """Mean brightness in [0, 1] (0 = black) of each model input [N, 1, S, S]: the input-drift statistic.

    Taken from the model input on both sides (training's val split, serving's requests), so a change of
    exposure, windowing or MONOCHROME1 handling shows however the images arrive.
    """
    arr = np.asarray(model_inputs, dtype=np.float64)
    if arr.ndim != 4:
        raise ValueError(f"expected model inputs of shape [N, 1, S, S], got {arr.shape}")
    return np.clip(arr.mean(axis=(1, 2, 3)) * STD + MEAN, 0.0, 1.0)


def encode_png(image: np.ndarray) -> bytes:
    """Encode a 2-D image (uint8, uint16 or float in [0, 1]) or an [H, W, 3|4] uint8 image as PNG bytes."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        pil = Image.fromarray(arr)  # uint8 [H, W, 3|4] → RGB / RGBA
    elif arr.ndim == 2:
        if arr.dtype == np.uint8:
            pil = Image.fromarray(arr)
        elif arr.dtype == np.uint16:
            pil = Image.fromarray(arr)  # uint16 → I;16
        else:
            arr8 = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            pil = Image.fromarray(arr8)
    else:
        raise ValueError(f"cannot encode an image of shape {arr.shape} as PNG")
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()
