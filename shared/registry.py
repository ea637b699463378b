"""MLflow registry aliases of the serving side: which version `champion` points at, and moving it.

`mlflow` is imported inside the functions only, so importing this module (the canary does) costs nothing and
pulls in no training code; the training side (`training_jobs.registry`) registers versions on top of this.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from shared.errors import UserError

__all__ = ["CHALLENGER", "CHAMPION", "MODEL_NAME", "champion_version", "client", "promote", "resolve",
           "tracking_uri"]

log = logging.getLogger(__name__)

MODEL_NAME = "xray-vit"
CHAMPION, CHALLENGER = "champion", "challenger"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def tracking_uri() -> str:
    from shared.config import default_tracking_uri

    return default_tracking_uri()


def client(uri: str | None = None) -> Any:
    """An MlflowClient on `uri` (default: $MLFLOW_TRACKING_URI or the project's local store), also the registry."""
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def promote(version: str, *, mlflow_client: Any = None, name: str = MODEL_NAME,
            alias: str = CHAMPION) -> str | None:
    """Point `alias` at `version`; returns the version it pointed at before (None if unset)."""
    from mlflow.exceptions import MlflowException

    mc = mlflow_client or client()
    try:
        mc.get_model_version(name, str(version))
    except MlflowException as exc:
        raise UserError(f"registered model {name!r} has no version {version!r}") from exc
    try:
        previous = str(mc.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        previous = None
    mc.set_registered_model_alias(name, alias, str(version))
    return previous


def resolve(ref: str, *, mlflow_client: Any = None, name: str = MODEL_NAME) -> tuple[str, str]:
    """(version, artifact URI) of `models:/name@alias`, `models:/name/3`, an alias or a version number."""
    from mlflow.exceptions import MlflowException

    mc = mlflow_client or client()
    match = _MODELS_URI.match(ref)
    alias = version = None
    if match:
        name, alias, version = match["name"], match["alias"], match["version"]
    elif ref.isdigit():
        version = ref
    else:
        alias = ref
    try:
        mv = mc.get_model_version_by_alias(name, alias) if alias else mc.get_model_version(name, version)
    except MlflowException as exc:
        raise UserError(f"model {ref!r} not found in the registry") from exc
    return str(mv.version), mc.get_model_version_download_uri(name, mv.version)


def champion_version(uri: str | None) -> str | None:
    """The version the `champion` alias points at; None without a registry (`uri` None) or alias."""
    if not uri:
        return None
    try:
        return resolve(CHAMPION, mlflow_client=client(uri))[0]
    except Exception as exc:  # no alias yet, registry down: the canary's feedback check then waits for a champion
        log.warning("registry: no champion version (%s)", type(exc).__name__)
        return None
