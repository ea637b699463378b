"""The load tool's guards and statistics (no stack needed)."""

from __future__ import annotations

import pytest

from load_tests.loadtest import check_loopback, percentiles, run_load
from shared.errors import UserError


@pytest.mark.parametrize("url", ["http://10.0.0.5:8080/predict", "http://example.com/", "ftp://127.0.0.1/",
                                 "http://169.254.169.254/latest"])
def test_only_loopback_targets_are_accepted(url):
    with pytest.raises(UserError, match="--url"):
        check_loopback(url)


def test_loopback_targets_pass():
    for url in ("http://127.0.0.1:8080/predict", "http://localhost:1/", "http://[::1]:80/"):
        assert check_loopback(url) == url


def test_percentiles_in_milliseconds():
    stats = percentiles([0.001] * 98 + [0.010, 0.020])
    assert stats["p50"] == pytest.approx(1.0) and stats["max"] == pytest.approx(20.0)
    assert percentiles([])["p99"] is None


def test_load_is_bounded():
    with pytest.raises(UserError, match="requests must be"):
        run_load("http://127.0.0.1:9/", b"x", requests=10**6, concurrency=1)


def test_images_come_from_a_folder_or_an_npz(tmp_path):
    import numpy as np

    from load_tests.images import load_images
    from tests.functions.tiny_model import gray_image, png_bytes
    from triage.stack.demo import dicom

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes())
    (folder / "b.dcm").write_bytes(dicom(gray_image()))
    (folder / "notes.txt").write_text("not an image")
    images = load_images(folder)
    assert [(i.name, i.content_type) for i in images] == [("a.png", "image/png"), ("b.dcm", "application/dicom")]
    assert all(i.pixels.dtype == np.uint8 and i.pixels.shape == (28, 28) for i in images)

    np.savez(tmp_path / "set.npz", test_images=np.stack([gray_image(28, s) for s in range(3)]))
    from_npz = load_images(tmp_path / "set.npz", 2)
    assert [i.name for i in from_npz] == ["0.png", "1.png"] and from_npz[0].data.startswith(b"\x89PNG")
    assert np.array_equal(from_npz[1].pixels, gray_image(28, 1))

    with pytest.raises(UserError, match="--images"):
        load_images(tmp_path / "missing")
