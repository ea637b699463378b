"""The not-assessable gate's two shares (issue 11): real chest X-rays accepted, non-chest images refused.

`measure_gate(model_dir, val_x)` sends every val image (as a PNG, through the serving path `TriageModel.__call__`:
decode, preprocess, predict, gate) and every image of the non-chest corpus (`load_tests.non_chest`) and returns
`val_accepted`, `non_chest_refused`, the refused share per kind and the reasons, with the targets (>= 0.99 and
>= 0.95) marked met or not. `python -m load_tests.gate_bench --model DIR --data NPZ` prints it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from load_tests.non_chest import KINDS, build_corpus

__all__ = ["NON_CHEST_TARGET", "VAL_TARGET", "measure_gate"]

VAL_TARGET = 0.99  # share of real chest X-rays (val) the gate must accept
NON_CHEST_TARGET = 0.95  # share of the non-chest corpus it must refuse


def _val_images(val_x: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W] from val images as uint8 / float in [0, 1] [N, H, W], or model inputs [N, 1, S, S]."""
    x = np.asarray(val_x)
    if x.ndim == 4 and x.shape[1] == 1:  # model inputs: (x - 0.5) / 0.5
        x = x[:, 0].astype(np.float64) * 0.5 + 0.5
    if x.ndim != 3:
        raise ValueError(f"val_x: expected [N, H, W] images or [N, 1, S, S] model inputs, got {list(x.shape)}")
    if x.dtype == np.uint8:
        return x
    return np.clip(np.round(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def _share(values: list[bool]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def measure_gate(model_dir: Path, val_x: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Val accepted and non-chest refused by the gate of the model in `model_dir` (see the module docstring)."""
    from shared.config import Settings
    from shared.imaging import encode_png
    from shared.model import TriageModel

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gate-bench-") as cache:
        model = TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=Path(cache)))
        model.load()
        if model.gate is None:
            return {"gate": False, "note": f"{model_dir}: the model card has no gate (every answer is assessable)"}
        val = [model(encode_png(image), "image/png") for image in _val_images(val_x)]
        corpus = build_corpus(seed)
        answers = [(item.kind, model(item.data, item.content_type)) for item in corpus]
    refused_by_kind = {kind: _share([not a.assessable for k, a in answers if k == kind]) for kind in KINDS}
    reasons = {kind: dict(Counter(a.verdict.reason for k, a in answers if k == kind and not a.assessable))
               for kind in KINDS}
    val_accepted = _share([a.assessable for a in val]) or 0.0
    non_chest_refused = _share([not a.assessable for _, a in answers]) or 0.0
    return {
        "gate": True,
        "val_accepted": val_accepted,
        "non_chest_refused": non_chest_refused,
        "n_val": len(val),
        "n_non_chest": len(answers),
        "refused_by_kind": refused_by_kind,
        "reasons_by_kind": reasons,
        "val_refusal_reasons": dict(Counter(a.verdict.reason for a in val if not a.assessable)),
        "threshold": model.gate.threshold,
        "targets": {
            "val_accepted": {"target": VAL_TARGET, "met": val_accepted >= VAL_TARGET},
            "non_chest_refused": {"target": NON_CHEST_TARGET, "met": non_chest_refused >= NON_CHEST_TARGET},
        },
        "wall_s": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.gate_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="model directory (model.onnx + model_card.json)")
    parser.add_argument("--data", required=True, type=Path, help="data set whose val split is the real X-rays")
    args = parser.parse_args(argv)
    from shared.errors import UserError
    from training_jobs.data import load_splits

    try:
        splits = load_splits(args.data)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if splits.val is None:
        print(f"error: {args.data}: no val split", file=sys.stderr)
        return 2
    print(json.dumps(measure_gate(args.model, splits.val.x)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
