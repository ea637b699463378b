"""The model store: MODEL_URI (a local path, `s3://bucket/prefix/` or `models:/NAME@ALIAS|/VERSION`) → verified files.

Downloads land in a per-URI cache directory in one rename, and every model file is checked against the sha256 its
model card lists before anything opens it. `sha256_file` is the one file digest (the export writes the card with it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import Settings, default_tracking_uri
from shared.errors import TriageError
from shared.modelcard import CARD_FILE, ModelCard, ModelCardError

__all__ = ["ModelLoadError", "ResolvedModel", "resolve_model", "sha256_file", "verify_sha256"]

log = logging.getLogger(__name__)

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class ModelLoadError(TriageError):
    """The model named by MODEL_URI cannot be found, downloaded, verified or opened (our fault: HTTP 503)."""

    status = 503
    code = "model_unavailable"


@dataclass(frozen=True)
class ResolvedModel:
    """Local files of a model and the version the registry (or the card) gives it."""

    onnx_path: Path
    card: ModelCard
    version: str | None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(onnx_path: Path, card: ModelCard) -> None:
    """Refuse a model file whose sha256 is missing from, or differs from, the model card."""
    expected = card.sha256.get(onnx_path.name)
    if not expected:
        raise ModelLoadError(f"{onnx_path}: the model card lists no sha256 for {onnx_path.name}")
    actual = sha256_file(onnx_path)
    if actual != expected:
        raise ModelLoadError(f"{onnx_path}: sha256 {actual[:12]}... differs from the model card's {expected[:12]}...")


def resolve_model(settings: Settings, *, storage: Any | None = None) -> ResolvedModel:
    """Local files of the model named by `settings.model_uri`, downloaded once into the cache and sha256-verified."""
    uri = settings.model_uri
    if not uri:
        raise ModelLoadError("MODEL_URI is not set: give a model directory, s3://bucket/prefix/ or models:/NAME@ALIAS")
    if uri.startswith("s3://"):
        return _resolve_s3(uri, settings, storage)
    if uri.startswith("models:/"):
        return _resolve_mlflow(uri, settings)
    path = Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()
    if not path.exists():
        raise ModelLoadError(f"MODEL_URI {uri}: no such file or directory")
    return _resolve_local(path, settings.model_variant)


# --- local files -------------------------------------------------------------------------------------------------
def _read_card(path: Path) -> ModelCard:
    try:
        return ModelCard.load(path)
    except ModelCardError as exc:
        raise ModelLoadError(exc.message) from exc


def _resolve_local(path: Path, variant: str) -> ResolvedModel:
    """A model directory (its `variant` file) or an .onnx file beside its card, verified."""
    onnx_path, card_path = (path / variant, path / CARD_FILE) if path.is_dir() else (path, path.parent / CARD_FILE)
    if not onnx_path.is_file():
        raise ModelLoadError(f"MODEL_URI {path}: no model file {onnx_path.name}")
    card = _read_card(card_path)
    verify_sha256(onnx_path, card)
    return ResolvedModel(onnx_path, card, None if card.version is None else str(card.version))


# --- the download cache ------------------------------------------------------------------------------------------
def _cache_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cached(directory: Path, variant: str) -> ResolvedModel | None:
    """A complete, verified cached download, or None (a bad cache entry is downloaded again)."""
    if not (directory / variant).is_file() or not (directory / CARD_FILE).is_file():
        return None
    try:
        return _resolve_local(directory, variant)
    except ModelLoadError:
        log.warning("cached model in %s does not verify; downloading it again", directory)
        return None


def _install(source_dir: Path, target: Path, variant: str) -> None:
    """Move a verified download into the cache in one rename, so a crash never leaves half a model there."""
    if _cached(target, variant) is not None:
        return  # another process sharing the cache installed it meanwhile
    if target.exists():
        shutil.rmtree(target)  # a cache entry that failed verification
    try:
        os.replace(source_dir, target)
    except OSError as exc:
        if _cached(target, variant) is None:
            raise ModelLoadError(f"cannot write the model cache {target} ({exc.strerror})") from exc


def _staging(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))


# --- s3:// -------------------------------------------------------------------------------------------------------
def _resolve_s3(uri: str, settings: Settings, storage: Any | None) -> ResolvedModel:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ModelLoadError(f"MODEL_URI {uri}: no bucket")
    prefix = prefix.strip("/")
    target = Path(settings.model_cache_dir) / "s3" / _cache_key(uri)
    cached = _cached(target, settings.model_variant)
    if cached is not None:
        return cached
    if storage is None:
        from shared.storage import Storage

        storage = Storage.from_settings(settings)
    staging = _staging(target)
    try:
        for name in (CARD_FILE, settings.model_variant):
            key = f"{prefix}/{name}" if prefix else name
            try:
                data = storage.get_bytes(bucket, key)
            except Exception as exc:  # boto3 raises many kinds; all mean "not there" for the caller
                raise ModelLoadError(f"MODEL_URI {uri}: cannot download s3://{bucket}/{key} ({exc})") from exc
            (staging / name).write_bytes(data)
        resolved = _resolve_local(staging, settings.model_variant)
        _install(staging, target, settings.model_variant)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ResolvedModel(target / settings.model_variant, resolved.card, resolved.version)


# --- models:/ (MLflow registry) ----------------------------------------------------------------------------------
def _without_credentials(uri: str) -> str:
    """A URI safe to show in errors and logs: `scheme://user:password@host` loses its user part."""
    return re.sub(r"//[^/@]*@", "//", uri)


def _resolve_mlflow(uri: str, settings: Settings) -> ResolvedModel:
    match = _MODELS_URI.match(uri)
    if match is None:
        raise ModelLoadError(f"MODEL_URI {uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    import mlflow  # lazily: only processes serving a registry model pay for importing MLflow
    from mlflow.tracking import MlflowClient

    tracking_uri = settings.mlflow_tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, version = match["name"], match["version"]
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"]).version
        target = Path(settings.model_cache_dir) / "mlflow" / _cache_key(tracking_uri) / name / str(version)
        cached = _cached(target, settings.model_variant)
        if cached is not None:
            return ResolvedModel(cached.onnx_path, cached.card, str(version))
        staging = _staging(target)
        try:
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
            downloaded = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(staging))
            )
            _resolve_local(downloaded, settings.model_variant)
            _install(downloaded, target, settings.model_variant)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except ModelLoadError:
        raise
    except Exception as exc:  # MLflow raises MlflowException and transport errors alike
        where = _without_credentials(tracking_uri)
        raise ModelLoadError(
            f"MODEL_URI {uri}: cannot resolve through MLflow at {where} ({_without_credentials(str(exc))})"
        ) from exc
    resolved = _resolve_local(target, settings.model_variant)
    return ResolvedModel(resolved.onnx_path, resolved.card, str(version))
