"""Image decoding and the one preprocessing path shared by training and serving."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from shared.errors import ImageError, PayloadTooLarge, UnsupportedMediaType
from shared.imaging import batch_to_model_input, decode_image, encode_png, to_model_input


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _gradient(h: int = 24, w: int = 32) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 255 // (h * w - 1)).astype(np.uint8)


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (a decompression bomb when huge)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_8bit_png_decodes_to_unit_floats() -> None:
    image = _gradient()
    out = decode_image(_png(image), "image/png")
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, image / 255.0, atol=1e-6)


def test_16bit_png_keeps_its_precision() -> None:
    image = (np.arange(24 * 32).reshape(24, 32) * 80).astype(np.uint16)  # 0..61360, steps finer than 1/255
    out = decode_image(_png(image))
    np.testing.assert_allclose(out, image / 65535.0, atol=1e-6)
    assert len(np.unique(out)) == image.size  # 8-bit decoding would collapse these to <= 256 levels


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_a_16bit_png_of_a_detectors_values_maps_from_the_bits_they_use(bits: int) -> None:
    # DICOM pixel data exported to PNG unscaled (a 12-bit film in 0..4095): white is 2**bits - 1, not 65535.
    image = np.round(np.linspace(0, 1, 24 * 32).reshape(24, 32) * (2**bits - 1)).astype(np.uint16)
    np.testing.assert_allclose(decode_image(_png(image)), image / (2**bits - 1), atol=1e-6)
    big = np.kron(image, np.ones((48, 48), np.uint16))  # banded to the working size: every band maps the same
    assert float(decode_image(_png(big)).max()) == pytest.approx(1.0, abs=1e-3)


def test_a_16bit_png_reaching_a_quarter_of_its_range_is_mapped_as_declared() -> None:
    image = np.array([[0, 100], [16384, 20000]], np.uint16)
    np.testing.assert_allclose(decode_image(_png(image)), image / 65535.0, atol=1e-6)


def test_rgb_jpeg_and_rgba_png_become_one_gray_channel() -> None:
    rgb = np.stack([_gradient()] * 3, axis=-1)
    out = decode_image(_jpeg(rgb), "image/jpeg")
    assert out.shape == (24, 32)
    np.testing.assert_allclose(out, _gradient() / 255.0, atol=0.05)
    rgba = np.concatenate([rgb, np.full((24, 32, 1), 128, np.uint8)], axis=-1)
    np.testing.assert_allclose(decode_image(_png(rgba)), _gradient() / 255.0, atol=1e-6)


def test_the_bytes_decide_the_format_not_a_mislabelled_content_type() -> None:
    image = _gradient()
    np.testing.assert_allclose(decode_image(_png(image), "image/jpeg"), image / 255.0, atol=1e-6)
    np.testing.assert_allclose(decode_image(_png(image), "image/png; charset=binary"), image / 255.0, atol=1e-6)
    np.testing.assert_allclose(decode_image(_png(image), "application/octet-stream"), image / 255.0, atol=1e-6)


@pytest.mark.parametrize("content_type", ["text/plain", "image/gif", "application/json", "multipart/form-data"])
def test_other_content_types_are_415(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        decode_image(_png(_gradient()), content_type)
    assert info.value.status == 415 and content_type in info.value.message


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is not an image at all", b"GIF89a" + b"\0" * 40, b"\x89PNG\r\n\x1a\n"],
    ids=["empty", "text", "gif", "png-magic-only"],
)
def test_bytes_that_are_no_image_are_400(data: bytes) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.status == 400


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_truncated_files_are_rejected_not_padded(kind: str) -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (64, 64), dtype=np.uint8)  # incompressible, so the pixel data is long
    data = _png(noisy) if kind == "png" else _jpeg(noisy)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageError, match="truncated|corrupt"):
        decode_image(data[: len(data) * 2 // 3])


def test_png_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = _png_declaring(100_000, 100_000)
    assert len(bomb) < 200
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(bomb, "image/png")
    assert info.value.status == 413  # from the declared size: these few bytes hold no pixels to decode


def test_declared_size_just_over_our_limit_is_413_even_below_pils_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="6000x6000"):
        decode_image(_png_declaring(6_000, 6_000), max_pixels=25_000_000)
    with pytest.raises(PayloadTooLarge):
        decode_image(_png(_gradient()), max_pixels=100)


def test_jpeg_declaring_huge_dimensions_is_413() -> None:
    data = bytearray(_jpeg(_gradient()))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)  # height, width of the frame header
    with pytest.raises(PayloadTooLarge):
        decode_image(bytes(data))


def test_to_model_input_normalizes_and_resizes_with_antialiasing() -> None:
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)
    out = to_model_input(checker, 16)
    assert out.shape == (1, 16, 16) and out.dtype == np.float32
    # An antialiased 4x downscale of a 1-px checkerboard is mid-gray (0.5 → 0), not a sampled 0/1 pattern.
    np.testing.assert_allclose(out, 0.0, atol=0.02)
    same = to_model_input(np.full((28, 28), 1.0, np.float32), 28)
    np.testing.assert_allclose(same, 1.0)


@pytest.mark.parametrize("size", [28, 20])
def test_serving_path_equals_training_batch_path(size: int) -> None:
    """A PNG of a training image, decoded and preprocessed as serving does, equals the training batch row."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    batch = batch_to_model_input(images, size)
    assert batch.shape == (3, 1, size, size)
    for i in range(3):
        served = to_model_input(decode_image(_png(images[i]), "image/png"), size)
        np.testing.assert_array_equal(served, batch[i])


def test_batch_accepts_floats_and_uint16() -> None:
    floats = np.linspace(0, 1, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    np.testing.assert_allclose(batch_to_model_input(floats, 8)[:, 0], (floats - 0.5) / 0.5, atol=1e-6)
    u16 = (floats * 65535).astype(np.uint16)
    np.testing.assert_allclose(batch_to_model_input(u16, 8), batch_to_model_input(floats, 8), atol=1e-4)


def test_encode_png_round_trips() -> None:
    image = _gradient()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(image)))), image)
    u16 = (image.astype(np.uint16) * 257).astype(np.uint16)
    np.testing.assert_allclose(decode_image(encode_png(u16)), u16 / 65535.0, atol=1e-6)
    np.testing.assert_allclose(decode_image(encode_png(image / 255.0)), image / 255.0, atol=1e-6)
    rgb = np.zeros((4, 5, 3), np.uint8)
    assert Image.open(io.BytesIO(encode_png(rgb))).mode == "RGB"


# --- working size: a 7000 x 7000 image is decoded to at most WORKING_SIDE, never copied at full size (issue 8) ----
def _big(kind: str, width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    pixels = ((x * 7 + y * 3) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind, quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_a_large_image_is_decoded_to_the_working_size(kind: str) -> None:
    from shared.imaging import WORKING_SIDE

    out = decode_image(_big(kind, 7000, 3500))
    # PNG: box-averaged by 7; JPEG: decoded at 1/4 scale by libjpeg, then averaged by 2.
    assert out.shape == {"PNG": (500, 1000), "JPEG": (438, 875)}[kind] and max(out.shape) <= WORKING_SIDE
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0


def test_the_working_size_is_the_box_average_of_the_full_image() -> None:
    data = _big("PNG", 2100, 1500)
    full = decode_image(data, max_side=None)
    reduced = decode_image(data)  # factor 3 (2100 / 1024 rounded up)
    expected = full.reshape(500, 3, 700, 3).mean(axis=(1, 3))
    assert reduced.shape == (500, 700)
    np.testing.assert_allclose(reduced, expected, atol=1e-5)


def test_images_within_the_working_size_are_unchanged() -> None:
    data = _big("PNG", 1024, 300)
    np.testing.assert_array_equal(decode_image(data), decode_image(data, max_side=None))


def test_a_large_dicom_is_brought_to_the_working_size_after_its_luts() -> None:
    from load_tests.memory import large_image

    data, content_type = large_image("dicom", side=3000)
    out = decode_image(data, content_type)
    full = decode_image(data, content_type, max_side=None)
    assert out.shape == (1000, 1000) and full.shape == (3000, 3000)
    np.testing.assert_allclose(out, full.reshape(1000, 3, 1000, 3).mean(axis=(1, 3)), atol=1e-5)


def test_a_png_cut_after_its_header_says_so_without_naming_a_python_object() -> None:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 90).save(buffer, "PNG")
    with pytest.raises(ImageError, match="corrupt or truncated PNG") as error:
        decode_image(buffer.getvalue()[:33], "image/png")
    assert "0x" not in str(error.value) and "BytesIO" not in str(error.value)
