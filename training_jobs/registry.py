"""MLflow model registry: register a run's model dir as `xray-vit` (alias `challenger`), promote to `champion`.

Reading and moving aliases (`client`, `promote`, `resolve`) lives in `shared.registry`, which the serving side
uses too; this module adds what only training does: validate, register, download, announce, `triage promote`.
Registration validates the model dir (card + both ONNX files + their sha256) before anything is created; a
version whose artifacts fail to upload is deleted again, and aliases move only once the files are there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared.errors import UserError
from shared.events import Publisher, model_registered_event
from shared.modelcard import CARD_FILE, MODEL_FILES, ModelCard, ModelCardError
from shared.registry import CHALLENGER, CHAMPION, MODEL_NAME, client, promote, resolve, tracking_uri

__all__ = [
    "ARTIFACT_PATH", "CHALLENGER", "CHAMPION", "MODEL_NAME", "add_arguments", "client", "download",
    "emit_model_registered", "promote", "register_model_dir", "resolve", "run", "tracking_uri", "validate_model_dir",
]
ARTIFACT_PATH = "model"


def validate_model_dir(model_dir: str | Path) -> ModelCard:
    """The card of a complete model dir; UserError naming the file when anything is missing or altered."""
    from shared.model_store import sha256_file

    model_dir = Path(model_dir)
    try:
        card = ModelCard.load(model_dir / CARD_FILE)
    except ModelCardError as exc:
        raise UserError(exc.message) from exc
    for name in MODEL_FILES:
        path = model_dir / name
        if not path.is_file():
            raise UserError(f"{path}: missing; a model dir needs {', '.join(MODEL_FILES)} and {CARD_FILE}")
        if name not in card.sha256:
            raise UserError(f"{model_dir / CARD_FILE}: sha256 has no entry for {name}")
        if sha256_file(path) != card.sha256[name]:
            raise UserError(f"{path}: sha256 differs from the model card's; the file was changed after export")
    return card


def register_model_dir(model_dir: str | Path, run_id: str, *, mlflow_client: Any = None,
                       name: str = MODEL_NAME, alias: str = CHALLENGER) -> str:
    """Log the model dir under the run's `model/` artifacts as a new version of `name`; returns the version.

    The logged card carries the version number; the local card is updated to match.
    """
    from mlflow.exceptions import MlflowException

    model_dir = Path(model_dir)
    card = validate_model_dir(model_dir)
    mc = mlflow_client or client()
    run = mc.get_run(run_id)
    try:
        mc.get_registered_model(name)
    except MlflowException:
        mc.create_registered_model(name, description="Chest X-ray triage ViT (normal vs pneumonia), ONNX + int8")
    source = f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
    version = mc.create_model_version(name, source=source, run_id=run_id,
                                      tags={"data_hash": card.data_hash, "synthetic_data": str(card.synthetic_data)})
    try:
        versioned = replace(card, version=str(version.version))
        with tempfile.TemporaryDirectory(prefix="xray-vit-") as tmp:
            stage = Path(tmp)
            for file_name in MODEL_FILES:
                shutil.copy2(model_dir / file_name, stage / file_name)
            versioned.save(stage / CARD_FILE)
            mc.log_artifacts(run_id, str(stage), ARTIFACT_PATH)
        mc.set_registered_model_alias(name, alias, version.version)
    except BaseException:
        mc.delete_model_version(name, version.version)  # no version without its files
        raise
    versioned.save(model_dir / CARD_FILE)
    return str(version.version)


def download(ref: str, dst: str | Path, *, mlflow_client: Any = None) -> Path:
    """Download the model files of `ref` (see `resolve`) under dst; returns the folder holding them."""
    import mlflow.artifacts

    mc = mlflow_client or client()
    _, uri = resolve(ref, mlflow_client=mc)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=mc.tracking_uri)
    return Path(local)


def emit_model_registered(
    version: str | int, run_id: str | None, publisher: Publisher, *, batch_id: str | None = None
) -> None:
    """Announce a newly registered model version (the training job calls this after registering)."""
    extra = {"batch_id": batch_id} if batch_id else None
    publisher.publish(model_registered_event(version, run_id, extra=extra))


# ---------------------------------------------------------------------------------------------------------------
# CLI: triage promote VERSION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", help="registered version of xray-vit to make champion (a number)")
    parser.add_argument("--name", default=MODEL_NAME, help=f"registered model name (default {MODEL_NAME})")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")


def run(args: argparse.Namespace) -> int:
    if not str(args.version).isdigit():
        raise UserError(f"version must be a number, not {args.version!r}")
    previous = promote(str(args.version), name=args.name)
    print(f"{args.name}: champion -> version {args.version} (was {previous or 'unset'})")
    if args.json:
        print(json.dumps({"name": args.name, "alias": CHAMPION, "version": str(args.version), "previous": previous}))
    return 0
