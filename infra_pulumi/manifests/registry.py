"""The model registry: PostgreSQL on the data volume and the MLflow server (artifacts in the object store)."""

from __future__ import annotations

from infra_pulumi.manifests.kube import deployment, persistent_volume_claim, resources, secret_env, service
from infra_pulumi.manifests.settings import ManifestSettings
from shared.names import MLFLOW_BUCKET

__all__ = ["MLFLOW_SERVER_DEPS", "mlflow_objects", "postgres_objects", "registry_objects"]

# The MLflow image ships neither the PostgreSQL driver nor boto3; pinned copies go to a shared dir first.
MLFLOW_SERVER_DEPS = ("psycopg2-binary==2.9.10", "boto3==1.37.38")


def postgres_objects(s: ManifestSettings) -> list[dict]:
    pod = {
        "containers": [
            {
                "name": "postgres",
                "image": f"postgres:{s.versions['postgres_version']}",
                "env": [
                    {"name": "POSTGRES_USER", "value": "mlflow"},
                    {"name": "POSTGRES_DB", "value": "mlflow"},
                    secret_env("POSTGRES_PASSWORD", "db_password"),
                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                ],
                "ports": [{"containerPort": 5432, "name": "postgres"}],
                "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "mlflow"]}, "periodSeconds": 10},
                "resources": resources(("250m", "1"), ("256Mi", "1Gi")),
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
            }
        ],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "postgres-data"}}],
    }
    return [
        persistent_volume_claim(s, "postgres-data", "10Gi"),
        deployment(s, "postgres", pod, on_data_node=True),
        service(s, "postgres", {"postgres": 5432}, admin=False),
    ]


def mlflow_objects(s: ManifestSettings) -> list[dict]:
    image = f"ghcr.io/mlflow/mlflow:{s.versions['mlflow_version']}"
    env = [
        secret_env("DB_PASSWORD", "db_password"),
        # Kubernetes expands $(DB_PASSWORD), so the password never appears in the manifest.
        {
            "name": "MLFLOW_BACKEND_STORE_URI",
            "value": f"postgresql://mlflow:$(DB_PASSWORD)@postgres.{s.namespace}.svc.cluster.local:5432/mlflow",
        },
        {"name": "MLFLOW_ARTIFACTS_DESTINATION", "value": f"s3://{MLFLOW_BUCKET}/artifacts"},
        {"name": "MLFLOW_S3_ENDPOINT_URL", "value": s.internal_url("minio", 9000)},
        secret_env("AWS_ACCESS_KEY_ID", "minio_root_user"),
        secret_env("AWS_SECRET_ACCESS_KEY", "minio_root_password"),
        {"name": "PYTHONPATH", "value": "/deps"},
    ]
    pod = {
        "initContainers": [
            {
                "name": "server-deps",
                "image": image,
                "command": ["pip", "install", "--no-cache-dir", "--target", "/deps", *MLFLOW_SERVER_DEPS],
                "volumeMounts": [{"name": "deps", "mountPath": "/deps"}],
                "resources": resources(("100m", "1"), ("256Mi", "512Mi")),
            }
        ],
        "containers": [
            {
                "name": "mlflow",
                "image": image,
                "command": ["mlflow", "server", "--host", "0.0.0.0", "--port", "8000", "--serve-artifacts"],
                "env": env,
                "ports": [{"containerPort": 8000, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 10},
                "resources": resources(("250m", "1"), ("512Mi", "1Gi")),
                "volumeMounts": [{"name": "deps", "mountPath": "/deps"}],
            }
        ],
        "volumes": [{"name": "deps", "emptyDir": {}}],
    }
    return [deployment(s, "mlflow", pod, on_data_node=False), service(s, "mlflow", {"http": 8000}, admin=True)]


def registry_objects(s: ManifestSettings) -> list[dict]:
    return postgres_objects(s) + mlflow_objects(s)
