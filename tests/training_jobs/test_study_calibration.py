"""Pieces the recipe study added: Platt calibration, the input-norm ViT option and old checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training_jobs.calibration import fit_temperature, fit_temperature_bias
from training_jobs.vit import ViT, ViTConfig

torch.set_num_threads(1)


def _logits(margin: np.ndarray) -> np.ndarray:
    return np.stack([np.zeros_like(margin), margin], axis=1)


def test_temperature_bias_recovers_a_shifted_boundary_that_temperature_alone_cannot():
    rng = np.random.default_rng(0)
    margin = rng.normal(0.0, 3.0, 20000)
    true_t, true_c = 2.0, -1.0  # P(y = 1) = sigmoid(margin / 2 - 1)
    labels = (rng.uniform(size=margin.size) < 1.0 / (1.0 + np.exp(-(margin / true_t + true_c)))).astype(np.int64)
    t, c = fit_temperature_bias(_logits(margin), labels)
    assert t == pytest.approx(true_t, rel=0.08) and c == pytest.approx(true_c, abs=0.08)
    # Temperature alone must compromise: its NLL is worse than the Platt fit's.
    t_only = fit_temperature(_logits(margin), labels)
    sign = np.where(labels == 1, 1.0, -1.0)
    nll_t = np.logaddexp(0.0, -sign * margin / t_only).mean()
    nll_tc = np.logaddexp(0.0, -sign * (margin / t + c)).mean()
    assert nll_tc < nll_t - 0.01
    with pytest.raises(ValueError, match="logits"):
        fit_temperature_bias(margin, labels)


def test_input_norm_makes_the_model_blind_to_exposure_offsets_and_linear_contrast():
    torch.manual_seed(0)
    config = ViTConfig(image_size=28, patch=7, dim=32, depth=1, heads=2, input_norm=True)
    model = ViT(config).eval()
    x = torch.rand(3, 1, 28, 28) * 0.6 - 0.3
    with torch.no_grad():
        base = model(x)[0]
        shifted = model(x * 1.5 + 0.2)[0]  # brighter and more contrast, no clipping
        plain = ViT(ViTConfig(image_size=28, patch=7, dim=32, depth=1, heads=2)).eval()
        assert not torch.allclose(plain(x)[0], plain(x * 1.5 + 0.2)[0], atol=1e-3)
    assert torch.allclose(base, shifted, atol=2e-2)


def test_a_checkpoint_config_without_input_norm_rebuilds_without_it():
    fields = ViTConfig().to_dict()
    fields.pop("input_norm")
    assert ViTConfig.from_dict(fields).input_norm is False
    assert ViTConfig.from_dict({**fields, "input_norm": True}).input_norm is True
