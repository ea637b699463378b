"""Export a checkpoint to ONNX (parity-checked against torch) + an int8 variant + the model card.

The ONNX graph has input `image` [N, 1, S, S] (N dynamic) and outputs `logits` [N, 2] and `attention`
[N, depth, T, T] (docs/contracts.md). The TorchScript exporter is the default: it takes ~0.2 s where the
dynamo exporter takes seconds, and the model's reshapes keep the batch axis symbolic (`reshape(-1, ...)`);
the graph is run at several batch sizes after export so a baked-in shape would fail loudly either way.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.errors import UserError
from shared.model_store import sha256_file  # the one file digest: serving verifies with it
from shared.modelcard import CARD_FILE, MODEL_FILES, ModelCard, calibrated_probability
from training_jobs.vit import ViT, ViTWithAttention, load_checkpoint

PARITY_ATOL = 1e-4
PARITY_BATCHES = (1, 32)  # logits must agree within PARITY_ATOL at these batch sizes
SHAPE_BATCHES = (1, 3, 32, 64)  # the graph must run with the right output shapes at these
OPSET = 18


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model (parity or shape check failed)."""


def export_onnx(model: ViT, path: Path, *, exporter: str = "torchscript") -> Path:
    """Write `model` as ONNX with a dynamic batch axis; `exporter` is 'torchscript' or 'dynamo'."""
    wrapper = ViTWithAttention(model).eval()
    size = model.config.image_size
    example = torch.zeros(2, 1, size, size)
    names = {"input_names": ["image"], "output_names": ["logits", "attention"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
        if exporter == "dynamo":
            torch.onnx.export(wrapper, (example,), str(path), dynamo=True, external_data=False, opset_version=OPSET,
                              dynamic_shapes={"image": {0: torch.export.Dim("batch")}}, **names)
        elif exporter == "torchscript":
            axes = {name: {0: "batch"} for name in ("image", "logits", "attention")}
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=OPSET,
                              dynamic_axes=axes, **names)
        else:
            raise ValueError(f"exporter must be 'torchscript' or 'dynamo', not {exporter!r}")
    return path


def onnx_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # export-time checks are small; leave the cores to others
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, attention) of an ONNX session on x [N, 1, S, S], in batches."""
    outs = [session.run(["logits", "attention"], {"image": x[i:i + batch_size]}) for i in range(0, len(x), batch_size)]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def _batch(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n], dtype=np.float32)


def check_parity(model: ViT, onnx_path: Path, x: np.ndarray, *, atol: float = PARITY_ATOL) -> dict[str, float]:
    """Run the graph at every batch size of SHAPE_BATCHES; logits must match torch within atol at PARITY_BATCHES.

    Returns {"max_abs_diff_b<N>": diff}. Raises ExportError naming the batch size and the difference.
    """
    session = onnx_session(onnx_path)
    cfg = model.config
    model.eval()
    diffs: dict[str, float] = {}
    for n in SHAPE_BATCHES:
        xb = _batch(x, n)
        try:
            logits, attention = session.run(["logits", "attention"], {"image": xb})
        except Exception as exc:  # onnxruntime raises its own exception types for shape errors
            raise ExportError(f"{onnx_path}: the exported graph fails at batch size {n}: {exc}") from exc
        want_att = (n, cfg.depth, cfg.tokens, cfg.tokens)
        if logits.shape != (n, cfg.num_classes) or attention.shape != want_att:
            got = f"logits {list(logits.shape)} and attention {list(attention.shape)}"
            want = f"{[n, cfg.num_classes]} and {list(want_att)}"
            raise ExportError(f"{onnx_path}: at batch size {n} the graph returns {got}, expected {want}")
        with torch.no_grad():
            ref_logits, _ = model.forward_with_attention(torch.from_numpy(xb))
        diff = float(np.abs(logits - ref_logits.numpy()).max())
        diffs[f"max_abs_diff_b{n}"] = diff
        if n in PARITY_BATCHES and not diff <= atol:
            raise ExportError(f"{onnx_path}: ONNX/torch parity failed at batch size {n}: "
                              f"max |logits difference| {diff:.3g} > {atol:g}")
    return diffs


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantization of the MatMul/Gemm weights (the bulk of a ViT; ConvInteger is poorly supported)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its "consider pre-processing" notice would read like a failure to users
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        logging.disable(previous)
    return dst


def measure_int8(fp32: Path, int8: Path, x: np.ndarray, y: np.ndarray | None, *, temperature: float,
                 threshold: float) -> dict[str, float]:
    """How much the int8 model changes the calibrated probability, and (with labels) accuracy and AUC."""
    p32 = calibrated_probability(run_onnx(onnx_session(fp32), x)[0], temperature)
    p8 = calibrated_probability(run_onnx(onnx_session(int8), x)[0], temperature)
    result = {
        "n": float(len(x)),
        "size_fp32_bytes": float(fp32.stat().st_size),
        "size_int8_bytes": float(int8.stat().st_size),
        "max_abs_probability_change": float(np.abs(p32 - p8).max()),
        "decision_agreement": float(((p32 >= threshold) == (p8 >= threshold)).mean()),
    }
    if y is not None:
        from sklearn.metrics import roc_auc_score

        acc32, acc8 = float(((p32 >= threshold) == y).mean()), float(((p8 >= threshold) == y).mean())
        result.update(accuracy_fp32=acc32, accuracy_int8=acc8, accuracy_change=acc8 - acc32)
        if len(np.unique(y)) == 2:
            auc32, auc8 = float(roc_auc_score(y, p32)), float(roc_auc_score(y, p8))
            result.update(auc_fp32=auc32, auc_int8=auc8, auc_change=auc8 - auc32)
    return result


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def export_model_dir(
    model: ViT,
    out_dir: str | Path,
    *,
    temperature: float = 1.0,
    threshold: float = 0.5,
    threshold_spread: dict[str, float] | None = None,
    metrics: dict[str, dict[str, float]] | None = None,
    data_hash: str = "",
    synthetic_data: bool = True,
    calibration_x: np.ndarray | None = None,
    calibration_y: np.ndarray | None = None,
    version: str | None = None,
    exporter: str = "torchscript",
) -> ModelCard:
    """Write model.onnx, model.int8.onnx and model_card.json into out_dir; returns the card.

    Everything is built in a temporary folder and moved in at the end (card last), so a failed export
    leaves no half-written model directory behind.
    """
    model.eval()
    cfg = model.config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if calibration_x is None:
        calibration_x = np.random.default_rng(0).standard_normal((64, 1, cfg.image_size, cfg.image_size))
        calibration_y = None
    calibration_x = np.ascontiguousarray(calibration_x, dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp_name:
        tmp = Path(tmp_name)
        fp32, int8 = tmp / MODEL_FILES[0], tmp / MODEL_FILES[1]
        export_onnx(model, fp32, exporter=exporter)
        parity = check_parity(model, fp32, calibration_x[:64])
        quantize_int8(fp32, int8)
        int8_report = measure_int8(fp32, int8, calibration_x, calibration_y, temperature=temperature,
                                   threshold=threshold)
        card = ModelCard(
            name="xray-vit",
            version=version,
            input={"name": "image", "shape": ["batch", 1, cfg.image_size, cfg.image_size],
                   "image_size": cfg.image_size, "mean": 0.5, "std": 0.5},
            grid=cfg.grid,
            temperature=float(temperature),
            threshold=float(threshold),
            threshold_spread=threshold_spread,
            metrics={**(metrics or {}), "parity": parity},
            int8=int8_report,
            data_hash=data_hash,
            sha256={name: sha256_file(tmp / name) for name in MODEL_FILES},
            config=cfg.to_dict(),
            git_commit=git_commit(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            synthetic_data=bool(synthetic_data),
        )
        card.save(tmp / CARD_FILE)
        for name in (*MODEL_FILES, CARD_FILE):
            (tmp / name).replace(out_dir / name)
    return card


# ---------------------------------------------------------------------------------------------------------------
# CLI: triage export


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by `triage train` (.pt)")
    parser.add_argument("--out", required=True, type=Path, help="model directory to write")
    parser.add_argument("--data", type=Path, help="data set whose val split measures the int8 accuracy change")
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # a few forward passes; one thread is as fast and kind to a shared CPU
    try:
        model, extra = load_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    x = y = None
    data_hash, synthetic = extra.get("data_hash", ""), extra.get("synthetic_data", True)
    if args.data is not None:
        from training_jobs.data import load_splits

        splits = load_splits(args.data, image_size=model.config.image_size)
        x, y = splits.val.x, splits.val.y
        data_hash, synthetic = splits.data_hash, splits.synthetic
    try:
        card = export_model_dir(
            model, args.out, temperature=extra.get("temperature", 1.0), threshold=extra.get("threshold", 0.5),
            threshold_spread=extra.get("threshold_spread"), metrics=extra.get("metrics"), data_hash=data_hash,
            synthetic_data=synthetic, calibration_x=x, calibration_y=y, exporter=args.exporter,
        )
    except ExportError as exc:
        raise UserError(str(exc)) from exc
    print(f"exported {args.out}: {', '.join(card.sha256)} + {CARD_FILE}; parity {card.metrics['parity']}")
    print(f"int8: {card.int8}")
    if args.json:
        print(json.dumps({"out": str(args.out), "sha256": card.sha256, "int8": card.int8,
                          "parity": card.metrics["parity"]}))
    return 0

