"""Export a checkpoint to ONNX (parity-checked against torch) + an int8 variant + the model card.

The ONNX graph has input `image` [N, 1, S, S] (N dynamic) and outputs `logits` [N, 2], `attention` [N, depth, T, T]
(docs/contracts.md) and `embedding` [N, dim] (the CLS token after ln_f: what the head sees, and what the
not-assessable gate measures; its reference statistics, fitted on train embeddings, go into the card). The TorchScript
exporter is the default: it takes ~0.2 s where the dynamo exporter takes seconds, and the model's reshapes keep the
batch axis symbolic (`reshape(-1, ...)`); the graph is run at several batch sizes after export so a baked-in shape
would fail loudly either way.
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
from shared.gate import Gate, features, fit_reference
from shared.model_store import sha256_file  # the one file digest: serving verifies with it
from shared.modelcard import CARD_FILE, MODEL_FILES, ModelCard, calibrated_probability
from training_jobs.vit import Ensemble, ViT, ViTWithAttention, load_checkpoint

PARITY_ATOL = 1e-4
OUTPUT_NAMES = ("logits", "attention", "embedding")
PARITY_BATCHES = (1, 32)  # logits must agree within PARITY_ATOL at these batch sizes
SHAPE_BATCHES = (1, 3, 32, 64)  # the graph must run with the right output shapes at these
OPSET = 18


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model (parity or shape check failed)."""


def export_onnx(model: ViT | Ensemble, path: Path, *, exporter: str = "torchscript") -> Path:
    """Write `model` as ONNX with a dynamic batch axis; `exporter` is 'torchscript' or 'dynamo'."""
    wrapper = ViTWithAttention(model).eval()
    size = model.config.image_size
    example = torch.zeros(2, 1, size, size)
    names = {"input_names": ["image"], "output_names": list(OUTPUT_NAMES)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
        if exporter == "dynamo":
            torch.onnx.export(wrapper, (example,), str(path), dynamo=True, external_data=False, opset_version=OPSET,
                              dynamic_shapes={"image": {0: torch.export.Dim("batch")}}, **names)
        elif exporter == "torchscript":
            axes = {name: {0: "batch"} for name in ("image", *OUTPUT_NAMES)}
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


def onnx_embeddings(session: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The `embedding` output [N, dim] of an ONNX session on x [N, 1, S, S], in batches."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return np.concatenate([session.run(["embedding"], {"image": x[i:i + batch_size]})[0]
                           for i in range(0, len(x), batch_size)])


def _batch(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n], dtype=np.float32)


def check_parity(model: ViT | Ensemble, onnx_path: Path, x: np.ndarray, *,
                 atol: float = PARITY_ATOL) -> dict[str, float]:
    """Run the graph at every batch size of SHAPE_BATCHES; logits and the embedding must match torch within atol
    at PARITY_BATCHES.

    Returns {"max_abs_diff_b<N>": logits diff, "max_abs_embedding_diff_b<N>": embedding diff}. Raises ExportError
    naming the batch size, the output and the difference.
    """
    session = onnx_session(onnx_path)
    cfg = model.config
    model.eval()
    diffs: dict[str, float] = {}
    for n in SHAPE_BATCHES:
        xb = _batch(x, n)
        try:
            logits, attention, embedding = session.run(list(OUTPUT_NAMES), {"image": xb})
        except Exception as exc:  # onnxruntime raises its own exception types for shape errors
            raise ExportError(f"{onnx_path}: the exported graph fails at batch size {n}: {exc}") from exc
        want_att = (n, cfg.depth, cfg.tokens, cfg.tokens)
        want_emb = (n, model.embedding_dim)
        if logits.shape != (n, cfg.num_classes) or attention.shape != want_att or embedding.shape != want_emb:
            got = f"logits {list(logits.shape)}, attention {list(attention.shape)}, embedding {list(embedding.shape)}"
            want = f"{[n, cfg.num_classes]}, {list(want_att)}, {list(want_emb)}"
            raise ExportError(f"{onnx_path}: at batch size {n} the graph returns {got}, expected {want}")
        with torch.no_grad():
            ref_embedding, _ = model.forward_features(torch.from_numpy(xb))
            ref_logits = model.head(ref_embedding)
        for key, got_values, ref in (("diff", logits, ref_logits), ("embedding_diff", embedding, ref_embedding)):
            diff = float(np.abs(got_values - ref.numpy()).max())
            diffs[f"max_abs_{key}_b{n}"] = diff
            if n in PARITY_BATCHES and not diff <= atol:
                output = "logits" if key == "diff" else "embedding"
                raise ExportError(f"{onnx_path}: ONNX/torch parity failed at batch size {n}: "
                                  f"max |{output} difference| {diff:.3g} > {atol:g}")
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


GATE_AUGMENT = 800  # train images whose acquisition-shifted copies (stress shifts, strong level) join the reference


def fit_gate(fp32: Path, int8: Path, train_x: np.ndarray, train_y: np.ndarray | None,
             val_x: np.ndarray | None) -> dict[str, Any]:
    """The card's `gate` (shared.gate.fit_reference) from the exported graph's features of train, its threshold
    set on val (without val: on a seeded fifth of train held out of the fit).

    The reference also holds `GATE_AUGMENT` train images under each strong acquisition shift of
    `training_jobs.stress` (gamma, contrast, blur, noise, rotation, scale, JPEG): measured on PneumoniaMNIST, the
    share of shifted val accepted rose (strong noise 0.24 -> 0.66, strong contrast 0.94 -> 0.97) while the same 98 %
    of the non-chest corpus stayed refused. `stress_val_accepted` says, per shift, the share of val accepted. The
    int8 graph's embedding is checked to have the same shape and gets its own threshold (`thresholds`).
    """
    from training_jobs.stress import stress_set

    train_x = np.ascontiguousarray(train_x, dtype=np.float32)
    rng = np.random.default_rng(0)
    if val_x is None:
        order = rng.permutation(len(train_x))
        held = order[: max(1, len(order) // 5)]
        val_x, keep = train_x[held], order[len(held):]
        train_x, train_y = train_x[keep], None if train_y is None else np.asarray(train_y)[keep]
    session = onnx_session(fp32)

    def gate_features(x: np.ndarray) -> np.ndarray:
        return features(onnx_embeddings(session, x), x)

    subset = rng.choice(len(train_x), size=min(GATE_AUGMENT, len(train_x)), replace=False)
    shifted = {name: x for name, x in stress_set(train_x[subset]).items() if name.endswith("_strong")}
    train_features = np.concatenate([gate_features(train_x), *(gate_features(x) for x in shifted.values())])
    labels = None if train_y is None else np.concatenate([np.asarray(train_y)] + [np.asarray(train_y)[subset]]
                                                          * len(shifted))  # fmt: skip
    val_x = np.ascontiguousarray(val_x, dtype=np.float32)
    fp32_val = onnx_embeddings(session, val_x)
    reference = fit_reference(train_features, labels, features(fp32_val, val_x))
    reference["augmented"] = {"shifts": sorted(shifted), "images": int(len(subset))}
    reference["n_reference"], reference["n_train"] = reference["n_train"], int(len(train_x))
    gate = Gate.from_reference(reference)
    assert gate is not None
    reference["stress_val_accepted"] = {name: float((gate.distances(gate_features(x)) <= gate.threshold).mean())
                                        for name, x in stress_set(val_x).items()}
    quantized = onnx_embeddings(onnx_session(int8), val_x)
    if quantized.shape != fp32_val.shape:
        raise ExportError(f"{int8}: the int8 graph's embedding has shape {list(quantized.shape)}, "
                          f"expected {list(fp32_val.shape)}")
    distances = gate.distances(features(quantized, val_x))
    threshold = float(np.quantile(distances, reference["quantile"]))
    reference["thresholds"] = {fp32.name: reference["threshold"], int8.name: threshold}
    reference["int8_val_accepted"] = float((distances <= threshold).mean())
    reference["int8_val_accepted_at_fp32_threshold"] = float((distances <= reference["threshold"]).mean())
    return reference


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def export_model_dir(
    model: ViT | Ensemble,
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
    gate_x: np.ndarray | None = None,
    gate_y: np.ndarray | None = None,
) -> ModelCard:
    """Write model.onnx, model.int8.onnx and model_card.json into out_dir; returns the card.

    With `gate_x` (the train images [N, 1, S, S], `gate_y` their labels) the card gets the not-assessable gate's
    reference statistics (`fit_gate`; its threshold set on `calibration_x`, the val images); without, no gate.

    Everything is built in a temporary folder and moved in at the end (card last), so a failed export
    leaves no half-written model directory behind.
    """
    model.eval()
    cfg = model.config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gate_val_x = calibration_x
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
        gate = None if gate_x is None else fit_gate(fp32, int8, gate_x, gate_y, gate_val_x)
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
            config={**cfg.to_dict(), **({"members": len(model.members)} if isinstance(model, Ensemble) else {})},
            git_commit=git_commit(),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            synthetic_data=bool(synthetic_data),
            gate=gate,
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
    parser.add_argument("--data", type=Path, help="data set whose val split measures the int8 accuracy change "
                        "and whose train split gives the not-assessable gate its reference statistics")
    parser.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # a few forward passes; one thread is as fast and kind to a shared CPU
    try:
        model, extra = load_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    x = y = gate_x = gate_y = None
    data_hash, synthetic = extra.get("data_hash", ""), extra.get("synthetic_data", True)
    if args.data is not None:
        from training_jobs.data import load_splits

        splits = load_splits(args.data, image_size=model.config.image_size)
        x, y = splits.val.x, splits.val.y
        if splits.train is not None:
            gate_x, gate_y = splits.train.x, splits.train.y
        data_hash, synthetic = splits.data_hash, splits.synthetic
    try:
        card = export_model_dir(
            model, args.out, temperature=extra.get("temperature", 1.0), threshold=extra.get("threshold", 0.5),
            threshold_spread=extra.get("threshold_spread"), metrics=extra.get("metrics"), data_hash=data_hash,
            synthetic_data=synthetic, calibration_x=x, calibration_y=y, exporter=args.exporter,
            gate_x=gate_x, gate_y=gate_y,
        )
    except ExportError as exc:
        raise UserError(str(exc)) from exc
    print(f"exported {args.out}: {', '.join(card.sha256)} + {CARD_FILE}; parity {card.metrics['parity']}")
    print(f"int8: {card.int8}")
    gate = {k: card.gate[k] for k in ("threshold", "val_accepted", "int8_val_accepted")} if card.gate else None
    print(f"gate: {gate or 'none (no train split given: every answer is assessable)'}")
    if args.json:
        print(json.dumps({"out": str(args.out), "sha256": card.sha256, "int8": card.int8,
                          "parity": card.metrics["parity"], "gate": gate}))
    return 0

