"""`make bench-quality`: the default training on a data set, then val, CV, stress and gate numbers, each timed.

Writes <out>/quality.json and <out>/quality.md. Parts: (1) `triage train` with its defaults (the model lands in
<out>/model), (2) the exported ONNX graph on the stress set of val, (3) stratified k-fold CV of the default
recipe over train + val (`--cv-folds`, `--cv-minutes`: the real setting by default, cheaper ones for a quick
look), (4) the not-assessable gate's shares (`load_tests.gate_bench.measure_gate`), when it is built.

    python -m training_jobs.quality --data ../shared/data/pneumoniamnist_28.npz --out reports/quality
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "markdown_report"]


def _timed(parts: dict[str, float], name: str):
    @contextlib.contextmanager
    def timer():
        started = time.monotonic()
        yield
        parts[name] = round(time.monotonic() - started, 1)
        print(f"bench-quality: {name} took {parts[name] / 60:.1f} min", file=sys.stderr)

    return timer()


def _train(data: str, model_dir: Path, extra: list[str]) -> dict[str, Any]:
    from triage.cli import main as triage

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = triage(["train", "--data", data, "--out", str(model_dir), "--json", *extra])
    out = buffer.getvalue()
    sys.stdout.write(out)
    if code != 0:
        raise SystemExit(code)
    return json.loads(out.strip().splitlines()[-1])


def _gate(model_dir: Path, val_x: np.ndarray) -> dict[str, Any]:
    try:
        from load_tests.gate_bench import measure_gate
    except ImportError:
        return {"status": "gate: not built"}
    return {"status": "measured", **measure_gate(model_dir, val_x)}


def markdown_report(report: dict[str, Any]) -> str:
    val, cv, stress, gate = report["val"], report.get("cv"), report["stress"], report["gate"]
    lines = ["# Quality bench", "", f"data `{report['data']}` ({report['data_hash'][:12]}), model "
             f"`{report['model_dir']}`, {report['params']:,} parameters, threshold {report['threshold']:.3f}, "
             f"temperature {report['temperature']:.3f}", "",
             "| part | AUC | accuracy | sensitivity | specificity | ECE |", "|---|---|---|---|---|---|",
             f"| val (n {int(val['n'])}) | {val['auc']:.4f} | {val['accuracy']:.4f} | {val['sensitivity']:.4f} | "
             f"{val['specificity']:.4f} | {val['ece']:.4f} |"]
    if cv:
        for which in ("mean", "worst"):
            c = cv["cv"]
            lines.append(f"| CV {cv['folds']} folds x {report['cv_minutes']:g} min, {which} | "
                         + " | ".join(f"{c[k][which]:.4f}" for k in ("auc", "accuracy", "sensitivity",
                                                                       "specificity", "ece")) + " |")
    for which, block in (("pooled", stress["overall"]), ("worst shift", stress["worst"])):
        lines.append(f"| stress of val, {which} | " + " | ".join(
            f"{block[k]:.4f}" for k in ("auc", "accuracy", "sensitivity", "specificity", "ece")) + " |")
    lines += ["", "Stress AUC per shift: " + ", ".join(f"{k} {v['auc']:.4f}" for k, v in stress["shifts"].items()),
              ""]
    if "val_accepted" in gate:
        lines.append(f"Gate: val accepted {gate.get('val_accepted', float('nan')):.4f}, non-chest refused "
                     f"{gate.get('non_chest_refused', float('nan')):.4f}")
    else:
        lines.append(f"Gate: {gate.get('note') or gate.get('status')}")
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training_jobs.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="MedMNIST-style .npz with train + val")
    parser.add_argument("--out", type=Path, default=Path("reports/quality"), help="report folder")
    parser.add_argument("--cv-folds", type=int, default=5, help="CV folds (default 5; 0 skips CV)")
    parser.add_argument("--cv-minutes", type=float, help="training minutes per fold (default: the default budget)")
    parser.add_argument("--train-args", default="", help="extra `triage train` arguments, space-separated")
    args = parser.parse_args(argv)
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data}: file not found")
    if args.cv_folds == 1 or args.cv_folds < 0:
        parser.error("--cv-folds must be 0 (skip) or at least 2")
    import torch

    from shared.modelcard import ModelCard
    from training_jobs.data import load_splits
    from training_jobs.stress import score_stress
    from training_jobs.study import cross_validate
    from training_jobs.train import TrainOptions

    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = args.out / "model"
    seconds: dict[str, float] = {}
    with _timed(seconds, "train"):
        trained = _train(args.data, model_dir, args.train_args.split())
    card = ModelCard.load(model_dir)
    splits = load_splits(args.data)
    torch.set_num_threads(TrainOptions().threads)
    with _timed(seconds, "stress"):
        stress = score_stress(model_dir / "model.onnx", splits.val.x, splits.val.y, temperature=card.temperature,
                              threshold=card.threshold)
    with _timed(seconds, "gate"):
        gate = _gate(model_dir, splits.val.x)
    cv, cv_minutes = None, args.cv_minutes or TrainOptions().max_minutes
    if args.cv_folds:
        x = np.concatenate([splits.train.x, splits.val.x])
        y = np.concatenate([splits.train.y, splits.val.y])
        defaults = TrainOptions()
        options = replace(defaults, max_minutes=cv_minutes, model=replace(defaults.model, image_size=splits.image_size))
        with _timed(seconds, "cv"):
            cv = cross_validate(x, y, options, folds=args.cv_folds, desc="cv default")
    report = {"data": args.data, "data_hash": splits.data_hash, "model_dir": str(model_dir),
              "params": trained["params"], "threshold": card.threshold, "temperature": card.temperature,
              "train": {k: trained[k] for k in ("epochs", "best_epoch", "stopped", "train_seconds", "total_seconds")},
              "val": trained["val"], "int8": trained["int8"], "stress": stress, "gate": gate, "cv": cv,
              "cv_minutes": cv_minutes, "seconds": seconds,
              "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (args.out / "quality.json").write_text(json.dumps(report, indent=1, default=float))
    (args.out / "quality.md").write_text(markdown_report(report))
    print(markdown_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
