"""`triage study`: rank training recipes by stratified k-fold cross-validation over train + val, plus a stress set.

Val alone is saturated (AUC ~0.998), so a recipe is judged on every fold of train + val (mean and worst fold)
and on the fold's held-out images under acquisition shifts (training_jobs/stress.py). Each fold runs the real
recipe (`train.train_model`): a stratified 10 % of the fold's training part plays val (early stopping,
temperature, threshold), the held-out fold plays test. The held-out fold is also scored at other operating
points (threshold policies) and calibrations, which need no retraining. One JSON line per recipe is appended to
`--out`; the markdown table `--markdown` is rewritten from every line of `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import UserError
from training_jobs.train import TrainOptions

__all__ = ["RECIPES", "add_arguments", "cross_validate", "markdown_table", "recipe_options", "run",
           "stratified_folds"]

FOLD_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "ece")
INNER_VAL_FRACTION = 0.1


def _model(options: TrainOptions, **changes: Any) -> TrainOptions:
    return replace(options, model=replace(options.model, **changes))


def _v1(o: TrainOptions) -> TrainOptions:
    """The recipe before the study: no acquisition augmentation, no input norm, threshold quantile 0.05."""
    return replace(_model(o, input_norm=False), aug_gamma=0.0, aug_blur=0.0, aug_noise=0.0, threshold_quantile=0.05)


def _acq(o: TrainOptions) -> TrainOptions:
    return replace(o, aug_gamma=0.35, aug_blur=1.0, aug_noise=0.04)


# name -> (what it changes, options -> options). Applied to the defaults of TrainOptions.
RECIPES: dict[str, tuple[str, Callable[[TrainOptions], TrainOptions]]] = {
    "default": ("TrainOptions() as it stands", lambda o: o),
    "baseline-v1": ("the recipe before the study: no shift augmentation, no input norm, threshold q 0.05", _v1),
    "acq-aug": ("v1 + gamma 0.35, blur sigma <= 1.0, noise std <= 0.04 augmentation", lambda o: _acq(_v1(o))),
    "input-norm": ("v1 + per-image standardization in the graph", lambda o: _model(_v1(o), input_norm=True)),
    "acq-aug+norm": ("v1 + acq-aug + input-norm (the default since the study, but threshold q 0.05)",
                     lambda o: _acq(_model(_v1(o), input_norm=True))),
    "wide-scale": ("default + zoom augmentation 0.75-1.25 (scale is the weakest stress shift)",
                   lambda o: replace(o, aug_scale=0.25)),
    "mid-scale": ("default + zoom augmentation 0.82-1.18", lambda o: replace(o, aug_scale=0.18)),
    "mixup": ("default + mixup Beta(0.2, 0.2)", lambda o: replace(o, mixup=0.2)),
    "ema": ("default + EMA of the weights (decay 0.995)", lambda o: replace(o, ema=0.995)),
    "distill": ("default + DeiT-style distillation from a CNN teacher", lambda o: replace(o, distill=True)),
    "ls0": ("default, label smoothing 0", lambda o: replace(o, label_smoothing=0.0)),
    "no-cw": ("default, no class weighting", lambda o: replace(o, class_weighting=False)),
    "small": ("default, dim 64, depth 3", lambda o: _model(o, dim=64, depth=3)),
    "ensemble2": ("default x 2: a deep ensemble of two seeds, trained at once", lambda o: replace(o, members=2)),
    "tiny-test": ("a tiny model for tests (dim 32, depth 1)",
                  lambda o: replace(_model(o, dim=32, depth=1, heads=2), batch_size=64)),
}

# Operating points scored on each held-out fold: name -> bootstrap quantile of the val thresholds.
THRESHOLD_POLICIES = {"q05": 0.05, "q25": 0.25, "q50": 0.5}


def recipe_options(name: str, base: TrainOptions) -> TrainOptions:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    return RECIPES[name][1](base)


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out indices of each of `folds` stratified folds: disjoint, covering every index, seeded."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y).ravel()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [held for _, held in splitter.split(np.zeros(len(y)), y)]


def _summary(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and worst (lowest; highest ECE) over folds of each metric."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        out[key] = {"mean": float(np.mean(values)), "worst": float(max(values) if key == "ece" else min(values))}
    return out


def _fold(options: TrainOptions, x: np.ndarray, y: np.ndarray, held: np.ndarray, seed: int, *,
          stress: bool, progress: bool, desc: str) -> dict[str, Any]:
    from shared.modelcard import calibrated_probability
    from training_jobs.calibration import choose_threshold, fit_temperature_bias
    from training_jobs.data import SplitArrays, carve_split
    from training_jobs.evaluate import compute_metrics
    from training_jobs.stress import score_stress
    from training_jobs.train import predict_logits, train_model

    rest = np.setdiff1d(np.arange(len(y)), held)
    fit_part, inner_val = carve_split(SplitArrays(x[rest], y[rest]), INNER_VAL_FRACTION, seed)
    started = time.monotonic()
    trained = train_model(fit_part.x, fit_part.y, inner_val.x, inner_val.y, options, progress=progress)
    logits = predict_logits(trained.model, x[held])
    probs = calibrated_probability(logits, trained.temperature)
    row: dict[str, Any] = {"threshold": trained.choice.threshold, "temperature": trained.temperature,
                           "epochs": trained.fit.epochs_run, "best_epoch": trained.fit.best_epoch,
                           "train_seconds": trained.fit.seconds}
    row.update({k: float(v) for k, v in compute_metrics(y[held], probs, trained.choice.threshold).items()
                if k in FOLD_METRICS})
    # Other operating points and a Platt calibration, on the same model: no retraining needed.
    val_probs = calibrated_probability(trained.val_logits, trained.temperature)
    policies = {}
    for name, quantile in THRESHOLD_POLICIES.items():
        threshold = choose_threshold(val_probs, inner_val.y, quantile=quantile, seed=seed).threshold
        m = compute_metrics(y[held], probs, threshold)
        policies[name] = {"threshold": threshold, **{k: float(m[k]) for k in FOLD_METRICS}}
    t, c = fit_temperature_bias(trained.val_logits, inner_val.y)
    platt = 0.5 * (1.0 + np.tanh(0.5 * ((logits[:, 1] - logits[:, 0]) / t + c)))
    row["ece_platt"] = float(compute_metrics(y[held], platt, 0.5)["ece"])
    row["policies"] = policies
    if stress:
        scored = score_stress(trained.model, x[held], y[held], temperature=trained.temperature,
                              threshold=trained.choice.threshold)
        row["stress"] = {"overall": scored["overall"], "worst": scored["worst"],
                         "shifts_auc": {k: v["auc"] for k, v in scored["shifts"].items()}}
    row["fold_seconds"] = time.monotonic() - started
    return row


def cross_validate(x: np.ndarray, y: np.ndarray, options: TrainOptions, *, folds: int = 5, seed: int = 0,
                   stress: bool = True, progress: bool = True, desc: str = "cv") -> dict[str, Any]:
    """k-fold CV of one recipe over (x, y): per-fold rows and their mean / worst."""
    from tqdm import tqdm

    started = time.monotonic()
    rows = []
    held_out = stratified_folds(y, folds, seed)
    for k, held in enumerate(tqdm(held_out, desc=desc, unit="fold", disable=not progress, file=sys.stderr)):
        rows.append(_fold(replace(options, seed=seed + k), x, y, held, seed + k, stress=stress, progress=progress,
                          desc=f"{desc} fold {k + 1}/{folds}"))
    result: dict[str, Any] = {"folds": folds, "fold_rows": rows,
                              "cv": _summary([{k: r[k] for k in (*FOLD_METRICS, "ece_platt")} for r in rows]),
                              "policies": {name: _summary([{k: r["policies"][name][k] for k in FOLD_METRICS}
                                                           for r in rows]) for name in THRESHOLD_POLICIES}}
    if stress:
        result["stress"] = {
            "overall": _summary([r["stress"]["overall"] for r in rows]),
            "worst_shift": _summary([{k: r["stress"]["worst"][k] for k in FOLD_METRICS} for r in rows]),
            "shifts_auc": {name: float(np.mean([r["stress"]["shifts_auc"][name] for r in rows]))
                           for name in rows[0]["stress"]["shifts_auc"]},
        }
    result["wall_seconds"] = time.monotonic() - started
    return result


def markdown_table(records: list[dict[str, Any]]) -> str:
    """One row per study record: CV mean / worst fold and stress (pooled / worst shift) numbers."""
    head = ("| recipe | folds x epochs / min | CV AUC mean / worst | CV acc | CV sens | CV spec | CV ECE (Platt) | "
            "stress AUC pooled / worst shift | stress acc | stress sens / spec | wall min |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        cv = r["cv"]

        def mw(block: dict[str, Any], key: str) -> str:
            return f"{block[key]['mean']:.4f} / {block[key]['worst']:.4f}"

        stress = r.get("stress")
        s_auc = (f"{stress['overall']['auc']['mean']:.4f} / {stress['worst_shift']['auc']['mean']:.4f}"
                 if stress else "-")
        s_acc = f"{stress['overall']['accuracy']['mean']:.4f}" if stress else "-"
        s_ss = (f"{stress['overall']['sensitivity']['mean']:.3f} / {stress['overall']['specificity']['mean']:.3f}"
                if stress else "-")
        lines.append(
            f"| {r['recipe']} | {r['folds']} x {r['epochs']} / {r['max_minutes']:g} | {mw(cv, 'auc')} | "
            f"{mw(cv, 'accuracy')} | {mw(cv, 'sensitivity')} | {mw(cv, 'specificity')} | {cv['ece']['mean']:.4f} "
            f"({cv['ece_platt']['mean']:.4f}) | {s_auc} | {s_acc} | {s_ss} | {r['wall_seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# CLI: triage study


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainOptions()
    parser.add_argument("--data", help="data set with train (+ val): .npz, folder or s3:// (its test split is ignored)")
    parser.add_argument("--recipes", default="default",
                        help="comma-separated recipe names (default: default); --list-recipes shows them")
    parser.add_argument("--list-recipes", action="store_true", help="print the recipe registry and exit")
    parser.add_argument("--folds", type=int, default=5, help="stratified folds over train + val (default 5)")
    parser.add_argument("--max-minutes", type=float, default=d.max_minutes,
                        help=f"training time budget per fold in minutes (default {d.max_minutes})")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"maximum epochs per fold (default {d.epochs})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and of fold k's training (seed + k)")
    parser.add_argument("--no-stress", action="store_true", help="skip the stress set")
    parser.add_argument("--out", type=Path, default=Path("runs/study/study.jsonl"),
                        help="JSON lines file a record per recipe is appended to (default runs/study/study.jsonl)")
    parser.add_argument("--markdown", type=Path,
                        help="markdown table rewritten from every record of --out (default: --out with .md)")
    parser.add_argument("--threads", type=int, default=d.threads, help=f"torch threads (default {d.threads})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.list_recipes:
        for name, (what, _) in RECIPES.items():
            print(f"{name:<14} {what}")
        return 0
    if not args.data:
        raise UserError("--data is required (or --list-recipes)")
    if args.folds < 2:
        raise UserError(f"--folds must be at least 2, got {args.folds}")
    if not args.max_minutes > 0 or args.epochs < 1:
        raise UserError("--max-minutes must be positive and --epochs at least 1")
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    if not names:
        raise UserError("--recipes is empty")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise UserError(f"unknown recipe(s) {', '.join(unknown)} (known: {', '.join(RECIPES)})")
    import torch

    from training_jobs.data import load_splits

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    splits = load_splits(args.data, seed=args.seed)
    parts = [s for s in (splits.train, splits.val) if s is not None]
    if not parts:
        raise UserError(f"{splits.source}: no train split")
    x = np.concatenate([p.x for p in parts])
    y = np.concatenate([p.y for p in parts])
    smallest = int(np.bincount(y, minlength=2).min())
    if smallest < args.folds * 2:
        raise UserError(f"{splits.source}: {smallest} images in the smaller class, too few for {args.folds} folds")
    base = TrainOptions(epochs=args.epochs, max_minutes=args.max_minutes, threads=args.threads,
                        model=replace(TrainOptions().model, image_size=splits.image_size))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    markdown = args.markdown or args.out.with_suffix(".md")
    for name in names:
        options = recipe_options(name, base)
        result = cross_validate(x, y, options, folds=args.folds, seed=args.seed, stress=not args.no_stress,
                                progress=not args.quiet, desc=name)
        record = {"recipe": name, "what": RECIPES[name][0], "data_hash": splits.data_hash,
                  "synthetic_data": splits.synthetic, "n": int(len(y)), "max_minutes": args.max_minutes,
                  "epochs": args.epochs, "seed": args.seed, "options": _plain(asdict(options)),
                  "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
        with args.out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        records = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
        markdown.write_text(markdown_table(records))
        cv = result["cv"]
        print(f"{name}: CV AUC {cv['auc']['mean']:.4f} (worst {cv['auc']['worst']:.4f})  accuracy "
              f"{cv['accuracy']['mean']:.4f}  sensitivity {cv['sensitivity']['mean']:.4f}  specificity "
              f"{cv['specificity']['mean']:.4f}  ECE {cv['ece']['mean']:.4f}"
              + (f"  stress AUC {result['stress']['overall']['auc']['mean']:.4f} (worst shift "
                 f"{result['stress']['worst_shift']['auc']['mean']:.4f})" if "stress" in result else "")
              + f"  [{result['wall_seconds'] / 60:.1f} min]")
    print(f"records appended to {args.out}; table in {markdown}")
    return 0


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
