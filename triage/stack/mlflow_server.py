"""The local MLflow tracking server: SQLite store in the run dir, artifacts in the local S3 bucket `mlflow`.

Artifacts are proxied (`--serve-artifacts`): clients log and download through the server, so only the server
needs the S3 endpoint (`MLFLOW_S3_ENDPOINT_URL`) and credentials. Job execution is off and one worker is
enough locally; both keep MLflow light on a small machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

from shared.names import MLFLOW_BUCKET
from triage.config import PORT_ENV
from triage.stack.processes import ProcessSpec

__all__ = ["mlflow_spec"]


def mlflow_spec(run_dir: Path, port: int, s3_endpoint_url: str, *, access_key: str = "minioadmin",
                secret_key: str = "minioadmin", ready_timeout_s: float = 120.0) -> ProcessSpec:
    """How to run `mlflow server` for the stack (health at /health)."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    argv = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/", "--serve-artifacts"]
    env = {
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    return ProcessSpec("mlflow", argv, env=env, port=port, port_env=PORT_ENV["mlflow"],
                       health_url=f"http://127.0.0.1:{port}/health", ready_timeout_s=ready_timeout_s)
