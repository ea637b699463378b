"""The model card beside every exported model, and the one place the calibrated probability is computed.

Numpy only (serving must not import torch). `ModelCard.load(path)` validates every field and raises
`ModelCardError` naming the file and the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import UserError
from shared.gate import Gate, GateError
from shared.names import CLASS_NAMES

__all__ = [
    "CARD_FILE",
    "CLASS_NAMES",
    "MODEL_FILES",
    "URGENT_MIN",
    "ModelCard",
    "ModelCardError",
    "calibrated_probability",
]

URGENT_MIN = 0.9
CARD_FILE = "model_card.json"
MODEL_FILES = ("model.onnx", "model.int8.onnx")


class ModelCardError(UserError):
    """A model card that is missing, unreadable or has a bad field (our fault when serving: 500)."""

    status = 500
    code = "bad_model_card"


def calibrated_probability(logits: np.ndarray, temperature: float) -> np.ndarray:
    """P(pneumonia) = softmax(logits / temperature)[:, 1] for logits [N, 2]; float64 [N]."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError(f"calibrated_probability: logits must be [N, 2], got {list(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"calibrated_probability: temperature must be > 0, got {temperature}")
    # For two classes softmax(z)[1] = sigmoid(z1 - z0); this form cannot overflow.
    margin = (logits[:, 1] - logits[:, 0]) / temperature
    return 0.5 * (1.0 + np.tanh(0.5 * margin))


@dataclass(frozen=True)
class ModelCard:
    input: dict[str, Any]
    grid: int
    temperature: float
    threshold: float
    config: dict[str, Any]
    sha256: dict[str, str]
    name: str = "xray-vit"
    version: str | None = None
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    threshold_spread: dict[str, float] | None = None
    # Per split: scalar metrics, and on val the monitor's reference histograms (lists of counts).
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    int8: dict[str, float] = field(default_factory=dict)
    data_hash: str = ""
    git_commit: str = ""
    created: str = ""
    synthetic_data: bool = True
    # The not-assessable gate's reference statistics (shared.gate.fit_reference); None: gate off (older models).
    gate: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def image_size(self) -> int:
        return int(self.input["image_size"])

    def load_gate(self, variant: str | None = None) -> Gate | None:
        """The gate of this card for the served model file (None when it has none: every answer is assessable)."""
        return Gate.from_reference(self.gate, variant)

    @property
    def urgent_threshold(self) -> float:
        """Probability at or above which a case is flagged urgent."""
        return max(self.threshold, URGENT_MIN)

    def validate(self, source: str = "model card") -> None:
        def bad(name: str, why: str) -> ModelCardError:
            return ModelCardError(f"{source}: field '{name}' {why}")

        if not isinstance(self.name, str) or not self.name:
            raise bad("name", "must be a non-empty string")
        if self.version is not None and not isinstance(self.version, str):
            raise bad("version", "must be a string or null")
        if list(self.class_names) != list(CLASS_NAMES):
            raise bad("class_names", f"must be {list(CLASS_NAMES)}")
        if not isinstance(self.input, dict):
            raise bad("input", "must be an object")
        for key in ("name", "shape", "image_size", "mean", "std"):
            if key not in self.input:
                raise bad(f"input.{key}", "is missing")
        size = self.input["image_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise bad("input.image_size", "must be a positive integer")
        if not isinstance(self.grid, int) or isinstance(self.grid, bool) or self.grid <= 0 or size % self.grid:
            raise bad("grid", f"must be a positive integer dividing image_size {size}")
        if not _is_number(self.temperature) or not self.temperature > 0:
            raise bad("temperature", "must be a number > 0")
        if not _is_number(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            raise bad("threshold", "must be a number in [0, 1]")
        spread = self.threshold_spread
        if spread is not None and (
            set(spread) != {"p5", "p50", "p95"} or not all(_is_number(v) for v in spread.values())
        ):
            raise bad("threshold_spread", "must be {p5, p50, p95} numbers or null")
        if not isinstance(self.sha256, dict) or not all(
            isinstance(v, str) and len(v) == 64 for v in self.sha256.values()
        ):
            raise bad("sha256", "must map file names to 64-character hex digests")
        for name in ("config", "metrics", "int8"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "must be an object")
        if not isinstance(self.synthetic_data, bool):
            raise bad("synthetic_data", "must be true or false")
        try:
            Gate.from_reference(self.gate)
        except GateError as exc:
            raise bad("gate", f"is unusable: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelCardError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(data, dict):
            raise ModelCardError(f"{source}: must be a JSON object")
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is f.default_factory is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ModelCardError(f"{source}: field '{missing[0]}' is missing")
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelCardError(f"{source}: unknown field '{unknown[0]}'")
        try:
            card = cls.__new__(cls)
            for key, value in data.items():
                object.__setattr__(card, key, value)
            for f in fields(cls):
                if f.name not in data:
                    default = f.default_factory() if f.default_factory is not MISSING else f.default
                    object.__setattr__(card, f.name, default)
        except TypeError as exc:  # pragma: no cover - defensive
            raise ModelCardError(f"{source}: {exc}") from exc
        card.validate(source)
        return card

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read a card file, or the `model_card.json` inside a model directory."""
        path = Path(path)
        if path.is_dir():
            path = path / CARD_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ModelCardError(f"{path}: model card not found") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelCardError(f"{path}: model card unreadable ({exc.__class__.__name__})") from exc
        return cls.from_json(text, source=str(path))

    def save(self, path: str | Path) -> Path:
        """Write the card atomically (temp file + rename), so readers never see half a card."""
        path = Path(path)
        if path.is_dir():
            path = path / CARD_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        tmp.replace(path)
        return path


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
