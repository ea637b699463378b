"""A corpus of images that are no chest radiograph, built only from what ships in the project's dependencies.

Kinds (`KINDS`): scikit-learn's two sample photos (`load_sample_images`: crops, in colour and in grey), its
handwritten digits (`load_digits`, 8 x 8 upscaled), text rendered with Pillow's built-in font, noise (uniform,
Gaussian, salt and pepper, blocky), flat images (constant or nearly), gradients (linear and radial) and
screenshot-like images (windows with title bars, boxes, buttons and text lines; in colour and in grey). Every image
is encoded as a PNG (the photos also as JPEG, as a camera sends them). Kind `dicom`: the image files pydicom ships
for its own tests that this project decodes (CT, MR, ultrasound, nuclear medicine, RT dose, segmentations and
colour secondary captures; none is a chest radiograph), sent as they are. `build_corpus(seed)` is deterministic: the
same seed gives the same bytes. The not-assessable gate's benchmark (`load_tests.gate_bench`) refuses these.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["KINDS", "NonChestImage", "build_corpus"]

KINDS = ("photo", "photo_gray", "digits", "text", "noise", "flat", "gradient", "screenshot", "screenshot_gray",
         "dicom")
SIDE = 224  # the side most images are drawn at (the model input is smaller; decode and preprocess bring it there)


@dataclass(frozen=True)
class NonChestImage:
    kind: str  # one of KINDS
    name: str  # unique within the corpus: <kind>-<n>.<png|jpg>
    data: bytes
    content_type: str


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _photos(rng: np.random.Generator, count: int, gray: bool) -> Iterator[np.ndarray]:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # china.jpg, flower.jpg: uint8 [427, 640, 3]
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(120, min(photo.shape[:2])))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
        yield np.asarray(crop.convert("L") if gray else crop)


def _digits(rng: np.random.Generator, count: int) -> Iterator[np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits().images  # float [1797, 8, 8] in 0..16, white strokes on black
    for index in rng.choice(len(digits), size=count, replace=False):
        small = Image.fromarray((digits[index] * (255.0 / 16.0)).astype(np.uint8))
        resample = Image.Resampling.BILINEAR if index % 2 else Image.Resampling.NEAREST
        yield np.asarray(small.resize((SIDE, SIDE), resample))


_WORDS = ("patient", "report", "invoice", "total", "chest", "date", "lorem", "ipsum", "dolor", "amet", "radiology",
          "meeting", "agenda", "page", "figure", "table", "result", "normal", "x-ray", "2026")


def _text_lines(rng: np.random.Generator, n: int) -> list[str]:
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(2, 6)))) for _ in range(n)]


def _font() -> ImageFont.ImageFont:
    """Pillow's built-in bitmap font: the same glyphs everywhere (no FreeType version in the bytes), and fast."""
    return ImageFont.load_default_imagefont()


def _text(rng: np.random.Generator, count: int) -> Iterator[np.ndarray]:
    font = _font()
    for i in range(count):
        ink, paper = (0, 255) if i % 3 else (255, 0)  # mostly black on white, some white on black
        image = Image.new("L", (SIDE, SIDE), paper)
        draw = ImageDraw.Draw(image)
        y = int(rng.integers(2, 20))
        for line in _text_lines(rng, 20):
            draw.text((int(rng.integers(2, 30)), y), line, fill=ink, font=font)
            y += int(rng.integers(10, 16))
            if y > SIDE - 12:
                break
        yield np.asarray(image)


def _noise(rng: np.random.Generator, count: int) -> Iterator[np.ndarray]:
    for i in range(count):
        kind = i % 4
        if kind == 0:
            pixels = rng.integers(0, 256, (SIDE, SIDE))
        elif kind == 1:
            pixels = rng.normal(rng.uniform(60, 200), rng.uniform(10, 60), (SIDE, SIDE))
        elif kind == 2:
            pixels = np.where(rng.random((SIDE, SIDE)) < rng.uniform(0.05, 0.5), 255, rng.uniform(0, 200))
        else:  # blocky noise: random cells upscaled
            cells = int(rng.integers(4, 29))
            small = Image.fromarray(rng.integers(0, 256, (cells, cells)).astype(np.uint8))
            pixels = np.asarray(small.resize((SIDE, SIDE), Image.Resampling.NEAREST))
        yield np.clip(pixels, 0, 255)


def _flat(rng: np.random.Generator, count: int) -> Iterator[np.ndarray]:
    for i in range(count):
        level = float(rng.uniform(0, 255)) if i % 4 else float((0, 255, 128)[i // 4 % 3])
        jitter = 0.0 if i % 2 else float(rng.uniform(0.5, 2.0))  # constant, or a sensor's faint noise on it
        yield np.clip(level + rng.normal(0.0, jitter, (SIDE, SIDE)), 0, 255)


def _gradient(rng: np.random.Generator, count: int) -> Iterator[np.ndarray]:
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / (SIDE - 1)
    for i in range(count):
        lo, hi = sorted(rng.uniform(0, 255, 2))
        if i % 2:
            cx, cy = rng.uniform(0.2, 0.8, 2)
            t = np.clip(np.hypot(xx - cx, yy - cy) / rng.uniform(0.4, 1.0), 0, 1)
        else:
            angle = rng.uniform(0, 2 * np.pi)
            t = xx * np.cos(angle) + yy * np.sin(angle)
            t = (t - t.min()) / (t.max() - t.min())
        yield lo + (hi - lo) * t


def _screenshot(rng: np.random.Generator, count: int, gray: bool) -> Iterator[np.ndarray]:
    font = _font()
    for _ in range(count):
        width, height = int(rng.integers(320, 512)), int(rng.integers(240, 400))
        desktop = tuple(int(v) for v in rng.integers(0, 256, 3))
        image = Image.new("RGB", (width, height), desktop)
        draw = ImageDraw.Draw(image)
        for _window in range(int(rng.integers(1, 4))):
            x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
            x1, y1 = int(rng.integers(x0 + 120, width + 1)), int(rng.integers(y0 + 90, height + 1))
            draw.rectangle((x0, y0, x1, y1), fill=(245, 245, 245), outline=(90, 90, 90))
            bar = tuple(int(v) for v in rng.integers(0, 200, 3))
            draw.rectangle((x0, y0, x1, y0 + 18), fill=bar)
            draw.text((x0 + 6, y0 + 4), _text_lines(rng, 1)[0], fill=(255, 255, 255), font=font)
            y = y0 + 26
            for line in _text_lines(rng, 12):
                if y > y1 - 14:
                    break
                draw.text((x0 + 8, y), line, fill=(20, 20, 20), font=font)
                y += 13
            bx = int(rng.integers(x0 + 8, max(x0 + 9, x1 - 70)))
            draw.rectangle((bx, y1 - 24, bx + 60, y1 - 6), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        yield np.asarray(image.convert("L") if gray else image)


_PER_KIND = 24


def _generators(rng: np.random.Generator) -> dict[str, Callable[[], Iterator[np.ndarray]]]:
    return {
        "photo": lambda: _photos(rng, _PER_KIND, gray=False),
        "photo_gray": lambda: _photos(rng, _PER_KIND, gray=True),
        "digits": lambda: _digits(rng, _PER_KIND),
        "text": lambda: _text(rng, _PER_KIND),
        "noise": lambda: _noise(rng, _PER_KIND),
        "flat": lambda: _flat(rng, _PER_KIND),
        "gradient": lambda: _gradient(rng, _PER_KIND),
        "screenshot": lambda: _screenshot(rng, _PER_KIND, gray=False),
        "screenshot_gray": lambda: _screenshot(rng, _PER_KIND, gray=True),
    }


def _pydicom_images() -> list[NonChestImage]:
    """pydicom's bundled test files (read from its package folder: nothing is downloaded) that decode here."""
    from pathlib import Path

    import pydicom.data

    from shared.errors import UserError
    from shared.imaging import decode_image

    images = []
    for path in sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*.dcm")):
        data = path.read_bytes()
        try:
            decode_image(data, "application/dicom")
        except UserError:  # no pixel data (SR, RT plans), or a codec not installed: nothing for the gate to judge
            continue
        images.append(NonChestImage("dicom", f"dicom-{path.stem}.dcm", data, "application/dicom"))
    return images


def build_corpus(seed: int = 0) -> list[NonChestImage]:
    """The non-chest corpus (24 images of each generated kind, pydicom's decodable test images), the same bytes for
    the same seed."""
    corpus: list[NonChestImage] = _pydicom_images()
    for kind, generate in _generators(np.random.default_rng(seed)).items():
        for n, pixels in enumerate(generate()):
            pixels = np.clip(np.asarray(pixels, dtype=np.float64) + 0.5, 0, 255).astype(np.uint8)
            if kind.startswith("photo") and n % 2:  # a camera's JPEG
                corpus.append(NonChestImage(kind, f"{kind}-{n}.jpg", _jpeg(pixels), "image/jpeg"))
            else:
                corpus.append(NonChestImage(kind, f"{kind}-{n}.png", _png(pixels), "image/png"))
    return corpus
