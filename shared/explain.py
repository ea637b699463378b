"""Saliency maps for the ViT (attention rollout, occlusion sensitivity), their overlay PNG and their faithfulness.

- Attention rollout: Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (2020).
- Deletion / insertion AUC: Petsiuk et al., "RISE: Randomized Input Sampling for Explanation" (2018).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "OCCLUSION_BATCH",
    "ScoreFn",
    "attention_rollout",
    "colormap",
    "deletion_insertion_auc",
    "faithfulness_against_random",
    "occlusion_map",
    "overlay_png",
    "resize_map",
]

# A batch of model inputs float32 [N, 1, S, S] → one score per image [N] (e.g. the pneumonia probability).
ScoreFn = Callable[[np.ndarray], np.ndarray]

OCCLUSION_BATCH = 256  # occluded copies per model call: all of a 28 px model's windows at once


def _unit_range(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant map becomes all zeros (it points nowhere)."""
    values = np.asarray(values, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if not math.isfinite(low) or not math.isfinite(high) or high - low < 1e-12:
        return np.zeros_like(values, dtype=np.float32)
    return (values - low) / (high - low)


def attention_rollout(attention: np.ndarray) -> np.ndarray:
    """Per-layer head-averaged attention [depth, T, T] (T = 1 + G*G, token 0 = CLS) → rollout map [G, G] in [0, 1].

    Each layer's attention gets the residual connection as an identity term (0.5 A + 0.5 I), rows are
    re-normalized, the layers are multiplied in order, and the CLS token's row over the patch tokens is the map.
    """
    attention = np.asarray(attention, dtype=np.float64)
    if attention.ndim != 3 or attention.shape[1] != attention.shape[2]:
        raise ValueError(f"attention must be [depth, T, T], got {attention.shape}")
    tokens = attention.shape[1]
    grid = int(round(math.sqrt(tokens - 1)))
    if grid * grid != tokens - 1:
        raise ValueError(f"attention has {tokens} tokens; expected 1 + G*G")
    identity = np.eye(tokens)
    joint = identity
    for layer in attention:
        with_residual = 0.5 * layer + 0.5 * identity
        with_residual /= with_residual.sum(axis=-1, keepdims=True)
        joint = with_residual @ joint
    return _unit_range(joint[0, 1:].reshape(grid, grid))


def _window_starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - patch, 0) + 1, stride))
    if starts[-1] != max(size - patch, 0):
        starts.append(size - patch)  # cover the last rows / columns too
    return starts


def occlusion_map(
    score_fn: ScoreFn,
    model_input: np.ndarray,
    *,
    patch: int,
    stride: int | None = None,
    baseline: float | None = None,
    batch_size: int = OCCLUSION_BATCH,
    reference: float | None = None,
) -> np.ndarray:
    """Occlusion sensitivity [S, S] in [0, 1]: how much the score drops when a patch is covered.

    `model_input` is float32 [1, S, S]; each patch is filled with `baseline`, by default with the same region of a
    strongly blurred copy of the image: the patch loses its detail (an opacity, an edge) without gaining a new
    one — a flat mean-gray patch on the dark background outside the body reads as an opacity to the model and
    lit up the corners. Overlapping windows are averaged; windows that raise the score count as 0.
    The occluded copies are scored `batch_size` at a time (one call for the default 28 px model's 169 windows);
    `reference`, the unoccluded image's score when the caller has it, spares one more call.
    """
    image = np.asarray(model_input, dtype=np.float32).reshape(model_input.shape[-2:])
    size_y, size_x = image.shape
    patch = max(1, min(patch, size_y, size_x))
    stride = stride or max(1, patch // 2)
    fill = _blurred(image) if baseline is None else np.full_like(image, baseline)
    if reference is None:
        reference = float(score_fn(image[np.newaxis, np.newaxis])[0])
    windows = [(y, x) for y in _window_starts(size_y, patch, stride) for x in _window_starts(size_x, patch, stride)]
    drops = np.zeros((size_y, size_x), np.float64)
    counts = np.zeros((size_y, size_x), np.float64)
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        batch = np.repeat(image[np.newaxis, np.newaxis], len(chunk), axis=0)
        for index, (y, x) in enumerate(chunk):
            batch[index, 0, y : y + patch, x : x + patch] = fill[y : y + patch, x : x + patch]
        scores = np.asarray(score_fn(batch), dtype=np.float64)
        for (y, x), score in zip(chunk, scores, strict=True):
            drops[y : y + patch, x : x + patch] += reference - score
            counts[y : y + patch, x : x + patch] += 1
    sensitivity = np.clip(drops / np.maximum(counts, 1), 0.0, None)
    if sensitivity.max() <= 0:
        return np.zeros_like(sensitivity, dtype=np.float32)
    return (sensitivity / sensitivity.max()).astype(np.float32)


def resize_map(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map to (height, width), values kept in [0, 1]."""
    height, width = size
    resized = Image.fromarray(np.asarray(saliency, dtype=np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def colormap(values: np.ndarray) -> np.ndarray:
    """Blue → cyan → yellow → red ("jet") for values in [0, 1] → uint8 RGB [..., 3]; cheap, no matplotlib."""
    x = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., np.newaxis]
    centers = np.array([3.0, 2.0, 1.0], np.float32)  # red, green, blue peaks at x = 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * x - centers), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay_png(image: np.ndarray, heatmap: np.ndarray, *, opacity: float = 0.6, underlay: bool = True) -> bytes:
    """PNG (RGB, the image's size) of the gray image with the heatmap blended in where the map is high.

    Without `underlay` the map is drawn on black and no pixel of the image reaches the PNG (an image with
    burned-in text must not have it copied into results).
    """
    gray = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if gray.shape != heat.shape:
        raise ValueError(f"image {gray.shape} and heatmap {heat.shape} differ in size")
    if not underlay:
        gray = np.zeros_like(heat)
    alpha = (opacity * heat)[..., np.newaxis]  # low saliency leaves the X-ray readable
    blended = (1.0 - alpha) * (gray[..., np.newaxis] * 255.0) + alpha * colormap(heat).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _blurred(image: np.ndarray) -> np.ndarray:
    radius = max(1.0, image.shape[0] / 8)
    low, high = float(image.min()), float(image.max())
    scale = (high - low) or 1.0
    as_image = Image.fromarray(((image - low) / scale * 255.0).astype(np.uint8))
    return np.asarray(as_image.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0 * scale + low


def deletion_insertion_auc(
    model_fn: ScoreFn,
    image: np.ndarray,
    saliency: np.ndarray,
    steps: int = 32,
    *,
    deletion_baseline: float | np.ndarray = 0.0,
    insertion_baseline: np.ndarray | None = None,
) -> tuple[float, float]:
    """(deletion AUC, insertion AUC) of a saliency map for one model input (Petsiuk et al. 2018).

    Deletion replaces the most salient pixels first with `deletion_baseline` (default 0, the normalized
    mid-gray; lower AUC = more faithful). Insertion starts from `insertion_baseline` (default a strongly
    blurred copy of the image, as in RISE) and restores the most salient pixels first (higher AUC = more
    faithful). `image` is [S, S] or [1, S, S]; the saliency is resized to it. All curve points are scored in
    one batched call.
    """
    picture = np.asarray(image, dtype=np.float32).reshape(np.shape(image)[-2:])
    size = picture.shape
    if np.shape(saliency) != size:
        saliency = resize_map(_unit_range(np.asarray(saliency)), size)
    removed = np.broadcast_to(np.asarray(deletion_baseline, np.float32), size)
    start = _blurred(picture) if insertion_baseline is None else np.asarray(insertion_baseline, np.float32)
    start = start.reshape(size)
    order = np.argsort(-np.asarray(saliency, np.float64).ravel(), kind="stable")
    pixels = order.size
    steps = max(1, min(steps, pixels))
    counts = [round(pixels * step / steps) for step in range(steps + 1)]
    deleted, inserted = [], []
    for count in counts:
        mask = np.zeros(pixels, bool)
        mask[order[:count]] = True
        mask = mask.reshape(size)
        deleted.append(np.where(mask, removed, picture))
        inserted.append(np.where(mask, picture, start))
    batch = np.stack(deleted + inserted)[:, np.newaxis].astype(np.float32)
    scores = np.asarray(model_fn(batch), dtype=np.float64)
    fractions = np.array(counts, np.float64) / pixels
    deletion = float(np.trapezoid(scores[: steps + 1], fractions))
    insertion = float(np.trapezoid(scores[steps + 1 :], fractions))
    return deletion, insertion


def faithfulness_against_random(
    model_fn: ScoreFn,
    image: np.ndarray,
    saliency: np.ndarray,
    steps: int = 32,
    *,
    seed: int = 0,
    random_maps: int = 3,
) -> dict[str, float]:
    """Deletion / insertion AUC of a map and, for reference, the mean over random maps of the same image."""
    deletion, insertion = deletion_insertion_auc(model_fn, image, saliency, steps)
    rng = np.random.default_rng(seed)
    size = np.shape(image)[-2:]
    random_scores = [
        deletion_insertion_auc(model_fn, image, rng.random(size, dtype=np.float32), steps) for _ in range(random_maps)
    ]
    return {
        "deletion_auc": deletion,
        "insertion_auc": insertion,
        "random_deletion_auc": float(np.mean([score[0] for score in random_scores])),
        "random_insertion_auc": float(np.mean([score[1] for score in random_scores])),
    }
