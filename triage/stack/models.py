"""Which model the local stack serves: a given URI, the registry's champion, or one trained first.

`train_first_model` runs `triage phantom` (unless a data set is given) and `triage train` as child processes
against the stack's MLflow; `resolve_models` turns the stack's options into the champion's and the
challenger's MODEL_URI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from shared.config import PROJECT_ROOT
from shared.errors import UserError
from shared.registry import CHALLENGER, CHAMPION, MODEL_NAME, promote

__all__ = ["FAST_TRAIN_ARGS", "MODEL_NAME", "PHANTOM_ARGS", "checked_uri", "phantom_data", "resolve_models",
           "train_first_model"]

PHANTOM_ARGS = ("--n-train", "1200", "--n-val", "200", "--n-test", "200", "--size", "28")
# A small hybrid ViT that trains in about a minute on 2 cores (the default recipe is sized for real data).
# Measured on these phantoms: val AUC 0.98 in 52 s (dim 32 / depth 2 / patch 7 on 400 phantoms learned nothing).
# Epochs run until the time budget (--max-minutes) or early stopping, whichever comes first.
FAST_TRAIN_ARGS = ("--epochs", "40", "--batch-size", "32", "--dim", "48", "--depth", "2", "--heads", "2",
                   "--patch", "4", "--patience", "6", "--max-minutes", "1.0")


def checked_uri(uri: str, what: str) -> str:
    """A URI as is, or a local path made absolute; UserError naming `what` when the path does not exist."""
    if "://" in uri or uri.startswith("models:/"):
        return uri
    path = Path(uri).expanduser()
    if not path.exists():
        raise UserError(f"{what}: {uri} does not exist (a model dir, model.onnx, s3://... or models:/...)")
    return str(path.resolve())


def _alias_version(client: Any, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException:
        return None


def resolve_models(*, model_uri: str | None, challenger_uri: str | None, mlflow_client: Callable[[], Any] | None,
                   train: Callable[[], str], force_train: bool = False, train_data: Path | None = None,
                   say: Callable[[str], None] = print) -> tuple[str, str | None]:
    """(champion MODEL_URI, challenger MODEL_URI or None). Without `model_uri`, the registry's champion; `train`
    (returning the registered version) runs first when there is none or `force_train`."""
    if model_uri:
        return checked_uri(model_uri, "--model / MODEL_URI"), (
            checked_uri(challenger_uri, "--challenger") if challenger_uri else None)
    if mlflow_client is None:
        raise UserError("no model: pass --model PATH|URI or set MODEL_URI (the registry is off)")
    client = mlflow_client()
    champion = _alias_version(client, CHAMPION)
    if champion is None or force_train:
        say(f"{'training on ' + str(train_data) if force_train else 'no champion in the registry'}"
            ": training a model first (about a minute)")
        version = train()
        promote(version, mlflow_client=client)
        champion = version
    challenger = _alias_version(client, CHALLENGER)
    challenger_uri = challenger_uri or (
        f"models:/{MODEL_NAME}@{CHALLENGER}" if challenger and challenger != champion else None)
    say(f"serving {MODEL_NAME} version {champion} (champion)"
        + (f", challenger {challenger_uri}" if challenger_uri else ""))
    return f"models:/{MODEL_NAME}@{CHAMPION}", challenger_uri


def train_first_model(run_dir: Path, env: Mapping[str, str], *, data: Path | None = None,
                      echo: IO[str] | None = sys.stderr, extra_args: tuple[str, ...] = FAST_TRAIN_ARGS) -> str:
    """`triage phantom` (unless `data`) then `triage train` against the stack's MLflow; returns the new version."""
    cli = [sys.executable, "-m", "triage.cli"]
    child_env = {**os.environ, **env}
    if data is None:
        data = phantom_data(run_dir, child_env)
    elif not Path(data).is_file():
        raise UserError(f"DATA: {data} is not a file (an .npz like pneumoniamnist_28.npz)")
    out = Path(run_dir) / "models" / time.strftime("%Y%m%d-%H%M%S")
    result = _run_step([*cli, "train", "--data", str(data), "--out", str(out), *extra_args, "--json"], child_env,
                       "triage train", echo=echo)
    version = result.get("version")
    if version is None:
        raise UserError(f"triage train did not register a model (its JSON: {json.dumps(result)[:300]})")
    if echo:
        val, test = result.get("val") or {}, result.get("test") or {}
        scores = ", ".join(f"{name} AUC {split['auc']:.3f}" for name, split in (("val", val), ("test", test))
                           if isinstance(split.get("auc"), float))
        print(f"trained {MODEL_NAME} version {version} in {result.get('total_seconds')} s "
              f"({result.get('epochs')} epochs): {scores or 'no metrics'}"
              + (" - SYNTHETIC data, for demos only" if result.get("synthetic_data") else ""), file=echo, flush=True)
    return str(version)


def phantom_data(run_dir: Path, env: Mapping[str, str]) -> Path:
    """`<run dir>/phantom.npz`, written by `triage phantom` unless it is there already."""
    data = Path(run_dir) / "phantom.npz"
    if not data.exists():
        _run_step([sys.executable, "-m", "triage.cli", "phantom", "--out", str(data), *PHANTOM_ARGS], env,
                  "triage phantom")
    return data


def _run_step(argv: list[str], env: Mapping[str, str], what: str, echo: IO[str] | None = None) -> dict[str, Any]:
    """Run a CLI step, its progress going to our stderr; returns the JSON of its last stdout line."""
    process = subprocess.run(argv, env=dict(env), cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                             stderr=None if echo else subprocess.PIPE, text=True)
    if process.returncode != 0:
        raise UserError(f"{what} failed with exit code {process.returncode}: "
                        f"{(process.stderr or process.stdout or '')[-800:]}")
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}
