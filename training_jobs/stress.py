"""A deterministic stress set: val under acquisition shifts, and the model's metrics on each shift.

Val is saturated (AUC ~0.998) and the official test split comes from a different acquisition, so recipes are
ranked on how they hold up when the same films are exposed, windowed, blurred, noised, tilted, zoomed or
re-compressed differently. Each shift has a mild and a strong level; directional shifts (gamma, contrast,
rotation, scale) alternate their sign image by image so both directions appear. Noise is seeded: the same
images always give the same stress set.

`stress_set(x)` takes model inputs [N, 1, S, S] ((pixel - 0.5) / 0.5) and returns {name: shifted inputs};
`score_stress(model, x, y, temperature=, threshold=)` scores a torch model or an ONNX path on every shift:
AUC / accuracy / sensitivity / specificity / ECE per shift, `overall` (all shifted images pooled) and `worst`
(the lowest value of each metric over the shifts; the highest ECE).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SHIFTS", "apply_shift", "score_stress", "stress_set"]

# name -> (mild, strong) parameter of the shift.
SHIFTS: dict[str, tuple[float, float]] = {
    "gamma": (1.3, 1.8),  # pixel ** g or ** (1/g): exposure / detector curve
    "contrast": (0.7, 0.45),  # around the image mean, factor c or 1/c (1/c capped at 1.6)
    "blur": (0.6, 1.1),  # Gaussian sigma in pixels
    "noise": (0.03, 0.08),  # additive Gaussian std in [0, 1] pixel units
    "rotation": (5.0, 12.0),  # degrees, +/-
    "scale": (1.1, 1.25),  # zoom in by s or out by 1/s
    "jpeg": (50.0, 20.0),  # JPEG quality of a re-compression
}
STRESS_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "ece")
_SEED = 20240611


def _signs(n: int) -> np.ndarray:
    return np.where(np.arange(n) % 2 == 0, 1.0, -1.0)


def _affine(unit: np.ndarray, angles_deg: np.ndarray, zooms: np.ndarray) -> np.ndarray:
    """Rotate by angle and zoom by factor about the image centre (edge pixels extend), one image at a time."""
    from scipy.ndimage import affine_transform

    size = unit.shape[-1]
    centre = (size - 1) / 2.0
    out = np.empty_like(unit)
    for i, (angle, zoom) in enumerate(zip(angles_deg, zooms, strict=True)):
        a = np.deg2rad(angle)
        matrix = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / zoom
        offset = centre - matrix @ np.array([centre, centre])
        out[i] = affine_transform(unit[i], matrix, offset=offset, order=1, mode="nearest")
    return out


def _jpeg(unit: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    out = np.empty_like(unit)
    for i, image in enumerate(unit):
        buffer = io.BytesIO()
        Image.fromarray(np.round(image * 255.0).astype(np.uint8), mode="L").save(buffer, format="JPEG",
                                                                                  quality=quality)
        out[i] = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32) / 255.0
    return out


def apply_shift(unit: np.ndarray, name: str, level: float) -> np.ndarray:
    """One shift of images in [0, 1] shaped [N, S, S], at parameter `level` (see SHIFTS); deterministic."""
    from scipy.ndimage import gaussian_filter

    unit = np.asarray(unit, dtype=np.float32)
    n = unit.shape[0]
    signs = _signs(n)
    if name == "gamma":
        exponents = (level ** signs).astype(np.float32).reshape(n, 1, 1)
        out = np.clip(unit, 0.0, 1.0) ** exponents
    elif name == "contrast":
        factors = np.where(signs > 0, level, min(1.0 / level, 1.6)).astype(np.float32).reshape(n, 1, 1)
        mean = unit.mean(axis=(1, 2), keepdims=True)
        out = (unit - mean) * factors + mean
    elif name == "blur":
        out = gaussian_filter(unit, sigma=(0.0, level, level), mode="nearest")
    elif name == "noise":
        rng = np.random.default_rng(_SEED)
        out = unit + rng.normal(0.0, level, unit.shape).astype(np.float32)
    elif name == "rotation":
        out = _affine(unit, signs * level, np.ones(n))
    elif name == "scale":
        out = _affine(unit, np.zeros(n), level ** signs)
    elif name == "jpeg":
        out = _jpeg(unit, int(level))
    else:
        raise ValueError(f"unknown shift {name!r} (known: {', '.join(SHIFTS)})")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def stress_set(x: np.ndarray) -> dict[str, np.ndarray]:
    """Model inputs [N, 1, S, S] -> {"<shift>_mild" | "<shift>_strong": shifted model inputs}, deterministic."""
    from shared.imaging import MEAN, STD

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"stress_set: expected model inputs [N, 1, S, S], got {list(x.shape)}")
    unit = np.clip(x[:, 0] * STD + MEAN, 0.0, 1.0)
    out = {}
    for name, levels in SHIFTS.items():
        for level_name, level in zip(("mild", "strong"), levels, strict=True):
            shifted = apply_shift(unit, name, level)
            out[f"{name}_{level_name}"] = ((shifted - MEAN) / STD).astype(np.float32)[:, None]
    return out


def _logits_fn(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    if isinstance(model, str | Path):
        from training_jobs.export import onnx_session, run_onnx

        session = onnx_session(Path(model))
        return lambda x: run_onnx(session, np.ascontiguousarray(x, dtype=np.float32))[0]
    from training_jobs.train import predict_logits

    return lambda x: predict_logits(model, x)


def score_stress(model: Any, x: np.ndarray, y: np.ndarray, *, temperature: float, threshold: float,
                 shifted: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Metrics of `model` (torch model or ONNX path) on every shift of (x, y) at `temperature` / `threshold`.

    Returns {"shifts": {name: metrics}, "overall": metrics of all shifted images pooled, "worst": per metric the
    worst shift's value (lowest; highest for ECE) and "worst_auc_shift"}. `shifted` reuses a stress_set(x).
    """
    from shared.modelcard import calibrated_probability
    from training_jobs.evaluate import compute_metrics

    y = np.asarray(y).astype(np.int64).ravel()
    shifted = stress_set(x) if shifted is None else shifted
    logits_of = _logits_fn(model)
    per_shift, all_probs = {}, []
    for name, images in shifted.items():
        probs = calibrated_probability(logits_of(images), temperature)
        all_probs.append(probs)
        metrics = compute_metrics(y, probs, threshold)
        per_shift[name] = {k: float(metrics[k]) for k in STRESS_METRICS}
    pooled = compute_metrics(np.tile(y, len(shifted)), np.concatenate(all_probs), threshold)
    worst: dict[str, Any] = {k: (max if k == "ece" else min)(m[k] for m in per_shift.values())
                             for k in STRESS_METRICS}
    worst["worst_auc_shift"] = min(per_shift, key=lambda name: per_shift[name]["auc"])
    return {"shifts": per_shift, "overall": {k: float(pooled[k]) for k in STRESS_METRICS}, "worst": worst}
