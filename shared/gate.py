"""The not-assessable gate: is this input a chest radiograph the model can judge? The one place the gate lives.

Before the classifier answers, four checks run, cheapest first; the first that fails gives the `reason` code:

1. `not_grayscale` — the source pixels had colour: the mean spread between the largest and the smallest colour
   channel (`imaging.Chroma`, measured while decoding) is over `colour_max`. Radiographs are grey; a grey image
   saved as RGB or JPEG (channels equal up to compression noise) passes.
2. `too_small` — the source image's shorter side is under half the model's input side (`SMALL_SIDE_RATIO`): the
   model would see pixels interpolated 2x or more (a thumbnail, an icon), not a film's detail.
3. `flat_image` — what the model sees (the model input, back in [0, 1]) has a standard deviation under
   `flat_std_min`: a blank, black or near-constant picture carries nothing to judge.
4. `out_of_distribution` — the Mahalanobis distance (Lee et al. 2018) of the input's features to the nearest class
   mean of the reference features, with one shared Ledoit-Wolf-shrunk covariance, is over `threshold`: the
   distance that accepts `quantile` (99.5 %) of val. The features (`features`) are the model's embedding (the CLS
   token after the final LayerNorm, the ONNX output `embedding`) next to the image's own statistics: its layout
   (the model input pooled to 7 x 7, standardized per image), mean, std, detail and left-right symmetry. The
   reference is train plus acquisition-shifted copies of part of it (`training_jobs.export.fit_gate`).

Before them, a DICOM whose header names another modality (CT, MR, US, ...), a body part away from the chest or a
lateral view is `header_not_chest` (`shared.dicom.read_header`; with or without a gate), whatever its pixels.

Measured on PneumoniaMNIST (`load_tests.gate_bench`, a 4-minute model; val 99.4 % accepted in every variant): of
the non-chest images the first two checks let through, the embedding alone refused 55 %, the layout alone 93 %,
embedding + layout + mean / std 96 %, with detail and symmetry 98 % (gradients are the hard kind); of the whole
corpus 97.7-99.1 % over three corpus seeds.

The reference statistics are computed on train at export (`fit_reference`) and stored in the model card's `gate`
field (`GATE_VERSION` 1: class means as lists, the precision's Cholesky factor as base64 float32). A card without a
`gate` (older models) turns the gate off: every answer is assessable. Serving needs numpy only.
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ASSESSABLE",
    "COLOUR_MAX",
    "FLAT_STD_MIN",
    "GATE_VERSION",
    "NOT_CHEST_HEADER",
    "QUANTILE",
    "REASONS",
    "SMALL_SIDE_RATIO",
    "Gate",
    "GateError",
    "Verdict",
    "features",
    "fit_reference",
    "image_std",
]

GATE_VERSION = 1
QUANTILE = 0.995  # share of val the distance threshold accepts (issue 11)
# Mean max-min channel spread in [0, 1] above which a source counts as colour. Measured: PneumoniaMNIST val images
# saved as RGB JPEG (quality 75 and 95, 224 px) spread 0.000; sklearn's two sample photos 0.112 and 0.282.
COLOUR_MAX = 0.02
# Standard deviation in [0, 1] of the model's view below which an image is flat. Measured on PneumoniaMNIST: the
# flattest train image has 0.025 (the 0.1 % quantile 0.038, val's flattest 0.030); a constant image with a
# sensor's faint noise (1-2 grey levels) has < 0.01.
FLAT_STD_MIN = 0.015

# A source whose shorter side is under this share of the model's input side is `too_small`. Measured with the default
# PneumoniaMNIST model: a 512 px film shrunk to 8 x 8 was accepted and read p 0.98 where the film reads 0.91.
SMALL_SIDE_RATIO = 0.5
REASONS = {
    "not_grayscale": "the image is in colour: a chest radiograph is grey (a photo, a screenshot or a colour map?)",
    "too_small": "the image has too few pixels: a thumbnail or an icon, not a film with detail to judge",
    "flat_image": "the image is (nearly) uniform: there is nothing in it to judge",
    "out_of_distribution": "the image does not look like the chest radiographs the model was trained on",
    "header_not_chest": "the DICOM header names another modality, another body part or a lateral view: the model "
                        "judges frontal chest radiographs only",
}


class GateError(ValueError):
    """A model card's `gate` field that cannot be used (the card validation turns it into a ModelCardError)."""


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one input: assessable, or the reason code (REASONS) why not; `distance` when measured."""

    assessable: bool
    reason: str | None = None
    distance: float | None = None

    @property
    def message(self) -> str | None:
        return None if self.reason is None else REASONS[self.reason]

    def reason_json(self) -> dict[str, str] | None:
        """`{"code", "message"}` of a refusal (the answer's `reason`), None when assessable."""
        return None if self.reason is None else {"code": self.reason, "message": REASONS[self.reason]}


ASSESSABLE = Verdict(True)
NOT_CHEST_HEADER = Verdict(False, "header_not_chest")  # decided from the header (`shared.dicom.read_header`)
LAYOUT = 7  # the model input is pooled to LAYOUT x LAYOUT cells for the layout features


@functools.lru_cache(maxsize=16)
def _pooling(side: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """For images [N, side * side] pooled to cells x cells blocks (side >= cells; blocks differ by at most a pixel):
    the matrix [side^2, cells^2] whose product with an image is its blocks' means, and each block's area [cells^2]."""
    sizes = np.diff(np.linspace(0, side, cells + 1).round().astype(int))
    block_of = np.repeat(np.arange(cells), sizes)  # each row's / column's block
    block = (block_of[:, None] * cells + block_of[None, :]).reshape(-1)  # each pixel's block, row-major
    area = (sizes[:, None] * sizes[None, :]).astype(np.float64).reshape(-1)
    weights = np.zeros((side * side, cells * cells))
    weights[np.arange(side * side), block] = 1.0 / area[block]
    for array in (weights, area):  # shared by every call (cached): no caller may change it
        array.flags.writeable = False
    return weights, area


def features(embeddings: np.ndarray, model_inputs: np.ndarray, *, mean: float = 0.5, std: float = 0.5) -> np.ndarray:
    """The gate's features [N, dim + LAYOUT^2 + 4] of embeddings [N, dim] and model inputs [N, 1, S, S]: the
    embedding; of the image in [0, 1] its LAYOUT x LAYOUT layout (standardized), mean, std, detail (the std of
    what the layout misses, relative to the image's std) and left-right symmetry (the correlation with its mirror
    image: a chest film is nearly symmetric, a gradient or a page is not).

    Written for one image as much as for a batch (serving calls it per request): a dozen whole-array numpy calls.
    Every statistic comes from the image's sums, its sum of squares, its block means (one product with the cached
    pooling matrix) and its product with its mirror image: within a block the residual sums to zero, so its energy
    is the image's minus each block's area x mean^2, and the mirror image has the image's mean and energy."""
    n = len(model_inputs)
    e = np.asarray(embeddings, dtype=np.float64).reshape(n, -1)
    x = np.asarray(model_inputs, dtype=np.float64).reshape(n, *np.shape(model_inputs)[-2:]) * std + mean
    weights, area = _pooling(x.shape[-1], LAYOUT)
    flat = x.reshape(n, -1)
    pixels = flat.shape[1]
    pooled = flat @ weights  # [N, LAYOUT^2] block means
    level = (pooled @ area)[:, None] / pixels
    energy = np.einsum("ij,ij->i", flat, flat)[:, None]
    spread = np.sqrt(np.maximum(energy / pixels - level**2, 0.0))
    residual = np.maximum(energy - (pooled**2) @ area[:, None], 0.0) / pixels
    detail = np.sqrt(residual) / (spread + 0.02)
    mirrored = np.einsum("nij,nij->n", x, x[:, :, ::-1])[:, None] - pixels * level**2
    symmetry = mirrored / (spread**2 * pixels + 1e-9)
    layout_centred = pooled - pooled.mean(axis=1, keepdims=True)
    layout_std = np.sqrt(np.einsum("ij,ij->i", layout_centred, layout_centred)[:, None] / pooled.shape[1])
    return np.concatenate([e, layout_centred / (layout_std + 0.02), level, spread, detail, symmetry], axis=1)


def image_std(model_input: np.ndarray, mean: float, std: float) -> float:
    """Standard deviation in [0, 1] units of a model input [1, S, S] (or [S, S]) normalized as (x - mean) / std."""
    return float(np.asarray(model_input, dtype=np.float64).std() * std)


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _decode(text: Any, count: int, name: str) -> np.ndarray:
    if not isinstance(text, str):
        raise GateError(f"gate.{name} must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise GateError(f"gate.{name} is not valid base64") from exc
    if len(raw) != 4 * count:
        raise GateError(f"gate.{name} holds {len(raw) // 4} float32 values, expected {count}")
    values = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if not np.isfinite(values).all():
        raise GateError(f"gate.{name} holds non-finite values")
    return values


def _number(reference: Mapping[str, Any], name: str, *, positive: bool = False) -> float:
    value = reference.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise GateError(f"gate.{name} must be a finite number")
    if positive and not value > 0:
        raise GateError(f"gate.{name} must be > 0")
    return float(value)


class Gate:
    """The gate of one model card: `Gate.from_reference(card.gate)` (None when the card has none)."""

    def __init__(self, means: np.ndarray, whitening: np.ndarray, threshold: float, *,
                 colour_max: float = COLOUR_MAX, flat_std_min: float = FLAT_STD_MIN) -> None:
        self.means = np.asarray(means, dtype=np.float64)  # [classes, dim]
        self.whitening = np.asarray(whitening, dtype=np.float64)  # [dim, dim]: d^2 = ||(e - mu) @ whitening||^2
        self.threshold = float(threshold)
        self.colour_max = float(colour_max)
        self.flat_std_min = float(flat_std_min)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def from_reference(cls, reference: Mapping[str, Any] | None, variant: str | None = None) -> Gate | None:
        """The gate of a card's `gate` field for the served `variant` file (its own threshold when the card has one:
        the int8 graph's embedding moves a little); None for None (gate off). GateError naming a bad field."""
        if reference is None:
            return None
        if not isinstance(reference, Mapping):
            raise GateError("gate must be an object or null")
        if reference.get("version") != GATE_VERSION or reference.get("method") != "mahalanobis":
            raise GateError(f"gate must be version {GATE_VERSION} of method 'mahalanobis'")
        dim = reference.get("dim")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise GateError("gate.dim must be a positive integer")
        means = reference.get("means")
        if (not isinstance(means, list) or not means
                or not all(isinstance(row, list) and len(row) == dim for row in means)):
            raise GateError(f"gate.means must be a non-empty list of lists of {dim} numbers")
        try:
            mean_array = np.asarray(means, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise GateError("gate.means must hold numbers") from exc
        if not np.isfinite(mean_array).all():
            raise GateError("gate.means holds non-finite values")
        lower = np.zeros((dim, dim))
        lower[np.tril_indices(dim)] = _decode(reference.get("precision_cholesky"), dim * (dim + 1) // 2,
                                              "precision_cholesky")
        thresholds = reference.get("thresholds") or {}
        if not isinstance(thresholds, Mapping):
            raise GateError("gate.thresholds must map model files to thresholds")
        for name in thresholds:
            _number(thresholds, name, positive=True)
        threshold = thresholds.get(variant) if variant in thresholds else reference.get("threshold")
        return cls(mean_array, lower, _number({"threshold": threshold}, "threshold", positive=True),
                   colour_max=_number(reference, "colour_max", positive=True),
                   flat_std_min=_number(reference, "flat_std_min"))

    def distances(self, embeddings: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each embedding [N, dim] to its nearest class mean; float64 [N]."""
        e = np.asarray(embeddings, dtype=np.float64).reshape(-1, self.dim)
        centred = e[:, None, :] - self.means[None, :, :]  # [N, classes, dim]
        squared = np.square(centred @ self.whitening).sum(axis=-1)  # [N, classes]
        return np.sqrt(squared.min(axis=1))

    def check_input(self, chroma: float, model_input: np.ndarray, *, mean: float = 0.5, std: float = 0.5,
                    source_side: int | None = None) -> Verdict:
        """The cheap checks on the pixels (colour, size, then flatness), before any embedding is needed;
        `source_side` is the decoded image's shorter side (None: not checked)."""
        if chroma > self.colour_max:
            return Verdict(False, "not_grayscale")
        if source_side is not None and source_side < SMALL_SIDE_RATIO * model_input.shape[-1]:
            return Verdict(False, "too_small")
        if image_std(model_input, mean, std) < self.flat_std_min:
            return Verdict(False, "flat_image")
        return ASSESSABLE

    def check_features(self, embedding: np.ndarray, model_input: np.ndarray, *, mean: float = 0.5,
                       std: float = 0.5) -> Verdict:
        """The distance check on one input's embedding [1, dim] and model input [1, S, S]."""
        distance = float(self.distances(features(embedding, model_input[np.newaxis], mean=mean, std=std))[0])
        if not distance <= self.threshold:  # NaN too: an embedding that is not a number is not in distribution
            return Verdict(False, "out_of_distribution", distance)
        return Verdict(True, None, distance)

    def __call__(self, chroma: float, model_input: np.ndarray, embedding: np.ndarray | None, *,
                 mean: float = 0.5, std: float = 0.5, source_side: int | None = None) -> Verdict:
        """The verdict for one input: its source colour spread, its model input [1, S, S], its embedding [1, dim],
        the decoded image's shorter side."""
        verdict = self.check_input(chroma, model_input, mean=mean, std=std, source_side=source_side)
        if not verdict.assessable:
            return verdict
        if embedding is None:
            raise GateError("the gate needs the model's embedding output (an export without it has no gate)")
        return self.check_features(embedding, model_input, mean=mean, std=std)


def fit_reference(
    train_features: np.ndarray,
    train_labels: np.ndarray | None,
    val_features: np.ndarray,
    *,
    quantile: float = QUANTILE,
) -> dict[str, Any]:
    """The card's `gate` field from train `features` [N, F] (class means + Ledoit-Wolf shared covariance) and the
    threshold accepting `quantile` of the val features. Training side only (imports scikit-learn)."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(train_features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"fit_reference: need [N >= 2, dim] train embeddings, got {list(x.shape)}")
    labels = np.zeros(len(x), dtype=np.int64) if train_labels is None else np.asarray(train_labels).astype(np.int64)
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= 1]
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    precision = 0.5 * (precision + precision.T)
    lower = np.linalg.cholesky(precision)  # precision = L L^T, so d^2 = ||(e - mu) @ L||^2
    dim = x.shape[1]
    # Rounded through float32 first, so the threshold is measured with exactly the numbers serving will use.
    lower32 = lower[np.tril_indices(dim)].astype("<f4")
    stored = np.zeros((dim, dim))
    stored[np.tril_indices(dim)] = lower32
    gate = Gate(means.astype("<f4"), stored, 1.0)
    val_distances = gate.distances(val_features)
    train_distances = gate.distances(x)
    threshold = float(np.quantile(val_distances, quantile))
    return {
        "version": GATE_VERSION,
        "method": "mahalanobis",
        "features": f"embedding (CLS token after ln_f) + layout {LAYOUT}x{LAYOUT} + mean, std, detail, symmetry",
        "layout": LAYOUT,
        "dim": int(dim),
        "classes": [int(c) for c in classes],
        "means": [[float(v) for v in row] for row in means.astype("<f4")],
        "precision_cholesky": _encode(lower32),
        "threshold": threshold,
        "quantile": float(quantile),
        "colour_max": COLOUR_MAX,
        "flat_std_min": FLAT_STD_MIN,
        "n_train": int(len(x)),
        "n_val": int(len(val_distances)),
        "val_accepted": float((val_distances <= threshold).mean()),
        "reference_accepted": float((train_distances <= threshold).mean()),  # of the rows fitted on
        "val_distance_median": float(np.median(val_distances)),
    }
