"""The stress set: deterministic, each shift changes pixels the way it says; scoring a model on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training_jobs.stress import SHIFTS, apply_shift, score_stress, stress_set

torch.set_num_threads(1)


def _disk(n: int = 4, size: int = 28, radius: float = 6.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2.0
    disk = (np.hypot(xx, yy) <= radius).astype(np.float32) * 0.6 + 0.2
    return np.repeat(disk[None], n, axis=0)


def _inputs(unit: np.ndarray) -> np.ndarray:
    return ((unit - 0.5) / 0.5).astype(np.float32)[:, None]


def test_stress_set_is_deterministic_and_has_every_shift_at_two_levels():
    rng = np.random.default_rng(0)
    x = _inputs(rng.uniform(0.2, 0.8, (6, 28, 28)).astype(np.float32))
    first, second = stress_set(x), stress_set(x)
    assert set(first) == {f"{name}_{level}" for name in SHIFTS for level in ("mild", "strong")}
    for name, images in first.items():
        assert images.shape == x.shape and images.dtype == np.float32
        assert np.array_equal(images, second[name]), name
        assert not np.allclose(images, x), f"{name} left the images unchanged"
        assert images.min() >= -1.0 and images.max() <= 1.0
    with pytest.raises(ValueError, match="N, 1, S, S"):
        stress_set(x[:, 0])


def test_gamma_and_contrast_go_both_ways_image_by_image():
    unit = np.full((2, 28, 28), 0.5, dtype=np.float32)
    unit[:, :14] = 0.3
    gamma = apply_shift(unit, "gamma", 1.8)
    assert gamma[0].mean() < unit[0].mean() < gamma[1].mean()  # x ** 1.8 darkens, x ** (1 / 1.8) brightens
    contrast = apply_shift(unit, "contrast", 0.5)
    assert contrast[0].std() == pytest.approx(0.5 * unit[0].std(), rel=1e-4)
    assert contrast[1].std() == pytest.approx(1.6 * unit[1].std(), rel=1e-4)  # 1 / 0.5 capped at 1.6
    assert contrast[0].mean() == pytest.approx(unit[0].mean(), abs=1e-5)


def test_blur_noise_geometry_and_jpeg_change_pixels_as_stated():
    unit = _disk()
    edges = lambda a: np.abs(np.diff(a, axis=-1)).sum()  # noqa: E731
    mild, strong = apply_shift(unit, "blur", 0.6), apply_shift(unit, "blur", 1.1)
    assert edges(strong) < edges(mild) < edges(unit)
    assert strong.mean() == pytest.approx(unit.mean(), abs=0.01)
    noise = apply_shift(unit, "noise", 0.05) - unit
    assert noise.std() == pytest.approx(0.05, rel=0.1) and abs(noise.mean()) < 0.01

    bright = lambda a: (a > 0.5).sum(axis=(1, 2))  # noqa: E731
    zoomed = apply_shift(unit, "scale", 1.25)
    assert bright(zoomed)[0] > bright(unit)[0] > bright(zoomed)[1]  # zoom in, then out
    bar = np.zeros((2, 28, 28), dtype=np.float32)
    bar[:, 13:15, 2:26] = 1.0
    rotated = apply_shift(bar, "rotation", 12.0)
    assert rotated[:, 13:15].sum() < 0.6 * bar[:, 13:15].sum()  # the bar left its rows
    assert not np.allclose(rotated[0], rotated[1])  # +12 and -12 degrees

    mild_err = np.abs(apply_shift(unit, "jpeg", 50) - unit).mean()
    strong_err = np.abs(apply_shift(unit, "jpeg", 20) - unit).mean()
    assert 0 < mild_err < strong_err < 0.1
    with pytest.raises(ValueError, match="unknown shift"):
        apply_shift(unit, "fog", 1.0)


def test_score_stress_reports_every_shift_pooled_and_worst():
    from training_jobs.vit import ViT, ViTConfig

    model = ViT(ViTConfig(image_size=28, patch=7, dim=32, depth=1, heads=2)).eval()
    rng = np.random.default_rng(1)
    x = _inputs(rng.uniform(0.2, 0.8, (24, 28, 28)).astype(np.float32))
    y = np.array([0, 1] * 12)
    scored = score_stress(model, x, y, temperature=1.0, threshold=0.5)
    assert len(scored["shifts"]) == 2 * len(SHIFTS)
    aucs = [m["auc"] for m in scored["shifts"].values()]
    assert scored["worst"]["auc"] == min(aucs) and scored["worst"]["ece"] == max(
        m["ece"] for m in scored["shifts"].values())
    assert scored["shifts"][scored["worst"]["worst_auc_shift"]]["auc"] == min(aucs)
    for key in ("auc", "accuracy", "sensitivity", "specificity", "ece"):
        assert 0.0 <= scored["overall"][key] <= 1.0


def test_acquisition_augmentation_is_seeded_and_stays_in_range():
    from training_jobs.train import augment

    x = torch.as_tensor(_inputs(_disk(8)))
    plain = augment(x, torch.Generator().manual_seed(3))
    a = augment(x, torch.Generator().manual_seed(3), gamma=0.35, blur=1.0, noise=0.04)
    b = augment(x, torch.Generator().manual_seed(3), gamma=0.35, blur=1.0, noise=0.04)
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= -1.0 and a.max() <= 1.0
    assert not torch.allclose(a, plain)
    # At 0 the extra shifts draw no random numbers: the default recipe's augmentation is unchanged.
    assert torch.equal(plain, augment(x, torch.Generator().manual_seed(3), gamma=0.0, blur=0.0, noise=0.0))
