"""The CLI's and the local stack's own environment, read once (`TriageEnv.from_env`) and passed down.

The functions read theirs through `shared.config`; nothing else under `triage/` reads `os.environ` (a child
process may still be handed a copy of the environment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import ConfigError, env_number

__all__ = ["PORT_ENV", "TriageEnv", "env_port", "env_threads"]

# The local stack's ports (design §6): field of `StackPorts` → environment variable.
PORT_ENV = {"s3": "S3_PORT", "s3_notify": "S3_NOTIFY_PORT", "mlflow": "MLFLOW_PORT", "gateway": "GATEWAY_PORT",
            "broker": "BROKER_PORT", "prometheus": "PROMETHEUS_PORT", "function_base": "FUNCTION_BASE_PORT"}


def env_threads(env: Mapping[str, str]) -> int | None:
    """THREADS as a whole number >= 1, None when unset; ConfigError naming the variable otherwise."""
    value = env_number(env, "THREADS", None, whole=True)
    if value is not None and value < 1:
        raise ConfigError(f"environment variable THREADS={env['THREADS']!r} must be at least 1")
    return None if value is None else int(value)


def env_port(env: Mapping[str, str], name: str) -> int | None:
    """A TCP port from `env[name]`, None when unset; ConfigError naming the variable otherwise."""
    raw = env.get(name)
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"environment variable {name}={raw!r} is not a port number")
    return int(raw)


@dataclass(frozen=True)
class TriageEnv:
    """What `triage` subcommands take from the environment as defaults for their options."""

    run_dir: Path = Path(".triage")
    data: Path | None = None  # DATA: a data set for the first model instead of phantoms
    model_uri: str | None = None  # MODEL_URI: serve this model instead of training one
    # THREADS: gunicorn threads per function process, for every function; None: each function's own
    # (`shared.topology.Function.threads`: 2 for predict and explain), else functions-framework's default
    threads: int | None = None
    ports: Mapping[str, int] = field(default_factory=dict)  # PORT_ENV fields that are set
    knative_namespace: str = "xray-triage"
    prometheus_url: str | None = None
    in_cluster: bool = False  # KUBECONFIG or KUBERNETES_SERVICE_HOST: a Kubernetes API is reachable
    mlflow_tracking_uri: str | None = None
    pythonpath: str | None = None
    gateway_admin_token: str | None = field(default=None, repr=False)  # GATEWAY_ADMIN_TOKEN: the gateway's /admin
    api_tokens_uri: str | None = None  # API_TOKENS_URI: the token table `triage tokens` edits (else the stack's)
    dicom_port: int = 11112  # DICOM_PORT: the local stack's DICOM receiver (C-STORE SCP)
    orthanc_http_port: int = 8042  # ORTHANC_HTTP_PORT / ORTHANC_DICOM_PORT: the local stack's PACS (Orthanc)
    orthanc_dicom_port: int = 4242

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.get('gateway', 8080)}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TriageEnv:
        env = os.environ if env is None else env
        ports = {name: port for name, var in PORT_ENV.items() if (port := env_port(env, var)) is not None}
        return cls(
            run_dir=Path(env.get("RUN_DIR") or ".triage"),
            data=Path(env["DATA"]) if env.get("DATA") else None,
            model_uri=env.get("MODEL_URI") or None,
            threads=env_threads(env),
            ports=ports,
            knative_namespace=env.get("KNATIVE_NAMESPACE") or "xray-triage",
            prometheus_url=env.get("PROMETHEUS_URL") or None,
            in_cluster=bool(env.get("KUBECONFIG") or env.get("KUBERNETES_SERVICE_HOST")),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            pythonpath=env.get("PYTHONPATH") or None,
            gateway_admin_token=env.get("GATEWAY_ADMIN_TOKEN") or None,
            api_tokens_uri=env.get("API_TOKENS_URI") or None,
            dicom_port=env_port(env, "DICOM_PORT") or 11112,
            orthanc_http_port=env_port(env, "ORTHANC_HTTP_PORT") or 8042,
            orthanc_dicom_port=env_port(env, "ORTHANC_DICOM_PORT") or 4242,
        )
