"""The object store: MinIO on the data volume, its webhook to minio-source, and the Job that makes the buckets."""

from __future__ import annotations

from pathlib import Path

from infra_pulumi.manifests.kube import deployment, meta, persistent_volume_claim, resources, secret_env, service
from infra_pulumi.manifests.settings import ManifestSettings
from shared import names

__all__ = ["BUCKETS", "BUCKET_SCRIPT", "BUCKET_SCRIPT_PATH", "NOTIFYING_BUCKETS", "WEBHOOK_ID", "object_store_objects"]

BUCKETS = (*names.BUCKETS, names.MLFLOW_BUCKET)
NOTIFYING_BUCKETS = names.NOTIFYING_BUCKETS  # their new objects are events of design §4 (posted to minio-source)
BUCKET_SCRIPT_PATH = Path(__file__).parents[1] / "scripts" / "make-buckets.sh"
BUCKET_SCRIPT = BUCKET_SCRIPT_PATH.read_text()
WEBHOOK_ID = "MINIOSOURCE"
WEBHOOK_ARN = f"arn:minio:sqs::{WEBHOOK_ID}:webhook"


def _minio_pod(s: ManifestSettings) -> dict:
    env = [
        secret_env("MINIO_ROOT_USER", "minio_root_user"),
        secret_env("MINIO_ROOT_PASSWORD", "minio_root_password"),
        # The webhook target of design §2: every put in a notifying bucket goes to minio-source, with a token.
        {"name": f"MINIO_NOTIFY_WEBHOOK_ENABLE_{WEBHOOK_ID}", "value": "on"},
        {"name": f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{WEBHOOK_ID}", "value": s.internal_url("minio-source")},
        secret_env(f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{WEBHOOK_ID}", "webhook_token"),
        # Events wait on disk while minio-source is cold or down, instead of being dropped.
        {"name": f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{WEBHOOK_ID}", "value": "/queue"},
        {"name": "MINIO_PROMETHEUS_AUTH_TYPE", "value": "public"},
    ]
    return {
        "containers": [
            {
                "name": "minio",
                "image": f"quay.io/minio/minio:{s.versions['minio_version']}",
                "args": ["server", "/data", "--console-address", ":9001"],
                "env": env,
                "ports": [{"containerPort": 9000, "name": "api"}, {"containerPort": 9001, "name": "console"}],
                "readinessProbe": {"httpGet": {"path": "/minio/health/ready", "port": 9000}, "periodSeconds": 10},
                "livenessProbe": {"httpGet": {"path": "/minio/health/live", "port": 9000}, "periodSeconds": 30},
                "resources": resources(("250m", "2"), ("512Mi", "2Gi")),
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data", "subPath": "minio"},
                    {"name": "data", "mountPath": "/queue", "subPath": "minio-queue"},
                ],
            }
        ],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "minio-data"}}],
    }


def _bucket_job(s: ManifestSettings) -> dict:
    env = [
        {"name": "MINIO_URL", "value": s.internal_url("minio", 9000)},
        secret_env("MINIO_ROOT_USER", "minio_root_user"),
        secret_env("MINIO_ROOT_PASSWORD", "minio_root_password"),
        {"name": "BUCKETS", "value": " ".join(BUCKETS)},
        {"name": "NOTIFYING_BUCKETS", "value": " ".join(NOTIFYING_BUCKETS)},
        {"name": "WEBHOOK_ARN", "value": WEBHOOK_ARN},
        {"name": "HOME", "value": "/tmp"},  # mc writes its config under $HOME
    ]
    container = {
        "name": "mc",
        "image": f"quay.io/minio/mc:{s.versions['minio_mc_version']}",
        "command": ["/bin/sh", "-c", BUCKET_SCRIPT],
        "env": env,
        "resources": resources(("50m", "200m"), ("64Mi", "128Mi")),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta("minio-buckets", s.namespace),
        "spec": {
            "backoffLimit": 6,
            "activeDeadlineSeconds": 900,
            "template": {
                "metadata": {"labels": {"app": "minio-buckets"}},
                "spec": {"restartPolicy": "OnFailure", "containers": [container]},
            },
        },
    }


def object_store_objects(s: ManifestSettings) -> list[dict]:
    return [
        persistent_volume_claim(s, "minio-data", "80Gi"),
        deployment(s, "minio", _minio_pod(s), on_data_node=True),
        service(s, "minio", {"api": 9000, "console": 9001}, admin=True),
        _bucket_job(s),
    ]
