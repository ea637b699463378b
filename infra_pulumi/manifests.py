"""Every Kubernetes / Knative object of the platform, built as plain dicts: the one source of truth.

The Pulumi program applies these objects through pulumi-kubernetes (`platform.py`, `functions.py`);
`triage manifests --out DIR` writes the same objects as YAML for `kubectl apply -f DIR` on any cluster
that already runs Knative Serving + Eventing (and cert-manager when TLS is on).
Secret values are opaque inputs here (pulumi Outputs in the program, generated strings in the CLI).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra_pulumi.config import DEFAULT_VERSIONS, OPTIONAL_SECRET_KEYS
from shared.errors import UserError

BUCKETS = ("raw-data", "processed", "inference-inputs", "inference-results", "feedback", "dead-letter", "mlflow")
# Buckets whose new objects are events of design §4 (MinIO posts them to minio-source).
NOTIFYING_BUCKETS = ("inference-inputs", "raw-data")
SECRET_NAME = "xray-triage-secrets"
TRAINING_ENV_SECRET = "triage-training-env"  # envFrom of the training Jobs that retrain launches
# Keys of the one Kubernetes Secret: the stack config's optional secrets (set there, else pulumi-random).
SECRET_KEYS = OPTIONAL_SECRET_KEYS
DATA_NODE_LABEL = "xray-triage/data"
DASHBOARD = Path(__file__).parent / "dashboards" / "xray-triage.json"
PATCH_FORCE = {"pulumi.com/patchForce": "true"}  # take over Knative's own ConfigMaps on server-side apply


@dataclass(frozen=True, kw_only=True)
class FunctionSpec:
    """One Knative Service: a functions-framework target of the one image built with FUNCTION=<target>."""

    name: str
    public: bool  # reachable through Kourier from outside; otherwise cluster-local only
    cpu: tuple[str, str]  # request, limit
    memory: tuple[str, str]
    timeout_s: int
    emits_events: bool = False  # gets K_SINK (the broker) through the SinkBinding
    secret_env: Mapping[str, str] = field(default_factory=dict)  # env var -> key of SECRET_NAME
    service_account: str | None = None
    max_scale: int | None = None  # None: the stack's max_scale
    extra_env: Mapping[str, str] = field(default_factory=dict)
    launches_training: bool = False  # gets the training image and the Jobs' credentials secret

    @property
    def target(self) -> str:
        return self.name.replace("-", "_")


_SMALL = {"cpu": ("100m", "500m"), "memory": ("128Mi", "256Mi")}
_MEDIUM = {"cpu": ("250m", "1"), "memory": ("256Mi", "512Mi")}
_MODEL = {"cpu": ("1", "2"), "memory": ("1Gi", "2Gi")}  # holds the ONNX session and runs explanations

FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec(name="predict", public=True, cpu=("500m", "1"), memory=("512Mi", "1Gi"), timeout_s=30),
    FunctionSpec(name="explain", public=True, **_MODEL, timeout_s=60),
    FunctionSpec(name="preprocess", public=False, **_MEDIUM, timeout_s=30),
    FunctionSpec(
        name="feedback",
        public=True,
        **_SMALL,
        timeout_s=30,
        emits_events=True,
        secret_env={"REVIEWER_TOKENS": "reviewer_tokens"},
    ),
    FunctionSpec(
        name="minio-source",
        public=False,
        **_SMALL,
        timeout_s=30,
        emits_events=True,
        secret_env={"WEBHOOK_TOKEN": "webhook_token"},
    ),
    FunctionSpec(name="ingest", public=False, **_MODEL, timeout_s=120, emits_events=True),
    FunctionSpec(
        name="retrain",
        public=False,
        **_MEDIUM,
        timeout_s=300,
        emits_events=True,
        service_account="retrain",
        max_scale=1,  # one launcher: a batch of labels must never start two trainings
        extra_env={"RETRAIN_BACKEND": "kubernetes"},
        launches_training=True,
    ),
    FunctionSpec(name="canary", public=False, **_SMALL, timeout_s=120, service_account="canary", max_scale=1),
    FunctionSpec(name="monitor", public=False, **_MEDIUM, timeout_s=120, max_scale=1),
    FunctionSpec(name="dead-letter", public=False, **_SMALL, timeout_s=30, max_scale=2),
)


@dataclass(frozen=True)
class Subscription:
    """A Trigger of design §4: events of `event_type` (from `bucket`, when set) go to `subscriber`."""

    name: str
    event_type: str
    subscriber: str
    bucket: str | None = None


SUBSCRIPTIONS: tuple[Subscription, ...] = (
    Subscription("ingest-inference-inputs", "io.minio.object.created", "ingest", "inference-inputs"),
    Subscription("retrain-raw-data", "io.minio.object.created", "retrain", "raw-data"),
    Subscription("monitor-predictions", "triage.prediction.created", "monitor"),
    Subscription("retrain-feedback", "triage.feedback.received", "retrain"),
    Subscription("monitor-feedback", "triage.feedback.received", "monitor"),
    Subscription("canary-model-registered", "triage.model.registered", "canary"),
)
# Periodic wake-ups: canary steps traffic, monitor computes drift and live accuracy.
PING_SCHEDULES = {"canary": "*/5 * * * *", "monitor": "*/15 * * * *"}
DELIVERY_RETRIES = 5
DELIVERY_BACKOFF = "PT1S"  # ISO 8601; doubles on each retry (exponential)


@dataclass(frozen=True)
class ManifestSettings:
    """What the objects depend on. `domain` and `secrets` values may be pulumi Outputs in the program."""

    domain: Any
    image_repository: str
    image_tag: str
    secrets: Mapping[str, Any]
    namespace: str = "xray-triage"
    model_uri: str = "models:/xray-vit@champion"
    versions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_VERSIONS))
    max_scale: int = 5
    target_concurrency: int = 4
    tls: bool = False
    acme_email: str | None = None
    acme_server: str = "https://acme-v02.api.letsencrypt.org/directory"
    data_node_selector: Mapping[str, str] | None = None  # where MinIO / PostgreSQL / Prometheus data lives
    storage_class: str | None = None  # None: the cluster's default
    expose_admin: bool = True  # MinIO, MLflow, Prometheus, Grafana as LoadBalancer services (k3s servicelb)
    configure_knative: bool = True  # set Knative's domain / Kourier / scale-to-zero / TLS ConfigMaps

    @classmethod
    def from_config(cls, cfg: Any, *, domain: Any, secrets: Mapping[str, Any], **overrides: Any) -> ManifestSettings:
        """The settings the stack config (`infra_pulumi.config`) decides; `overrides` set the rest."""
        return cls(
            domain=domain,
            image_repository=cfg.image_repository,
            image_tag=cfg.image_tag,
            secrets=secrets,
            namespace=cfg.namespace,
            model_uri=cfg.model_uri,
            versions=cfg.versions,
            max_scale=cfg.max_scale,
            target_concurrency=cfg.target_concurrency,
            tls=cfg.tls,
            acme_email=cfg.acme_email,
            acme_server=cfg.acme_server,
            **overrides,
        )

    def image(self, name: str) -> str:
        """REPOSITORY/<name>:TAG (or @sha256:...), built from functions/Dockerfile."""
        sep = "@" if self.image_tag.startswith("sha256:") else ":"
        return f"{self.image_repository}/{name}{sep}{self.image_tag}"

    def internal_url(self, service: str, port: int | None = None) -> str:
        host = f"{service}.{self.namespace}.svc.cluster.local"
        return f"http://{host}:{port}" if port else f"http://{host}"


def function_url(settings: ManifestSettings, function: FunctionSpec, domain: str) -> str:
    """The URL Knative gives the Service (`{name}.{namespace}.{domain}`); cluster-local ones stay internal."""
    if not function.public:
        return settings.internal_url(function.name)
    scheme = "https" if settings.tls else "http"
    return f"{scheme}://{function.name}.{settings.namespace}.{domain}"


# ---------------------------------------------------------------- small builders


def _meta(name: str, namespace: str | None, labels: Mapping[str, str] | None = None, **extra: Any) -> dict:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "xray-triage", **(labels or {})}}
    if namespace:
        meta["namespace"] = namespace
    meta.update(extra)
    return meta


def _secret_env(env_name: str, key: str) -> dict:
    return {"name": env_name, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key}}}


def _resources(cpu: tuple[str, str], memory: tuple[str, str]) -> dict:
    return {"requests": {"cpu": cpu[0], "memory": memory[0]}, "limits": {"cpu": cpu[1], "memory": memory[1]}}


def _pvc(s: ManifestSettings, name: str, size: str) -> dict:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if s.storage_class:
        spec["storageClassName"] = s.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(name, s.namespace), "spec": spec}


def _service(s: ManifestSettings, name: str, ports: Mapping[str, int], *, admin: bool) -> dict:
    # Admin UIs go out through k3s servicelb on the node's port, guarded by the OpenStack security groups.
    kind = "LoadBalancer" if admin and s.expose_admin else "ClusterIP"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, s.namespace, {"app": name}),
        "spec": {
            "type": kind,
            "selector": {"app": name},
            "ports": [{"name": p, "port": n, "targetPort": n, "protocol": "TCP"} for p, n in ports.items()],
        },
    }


def _deployment(s: ManifestSettings, name: str, pod_spec: dict, *, on_data_node: bool) -> dict:
    if on_data_node and s.data_node_selector:
        pod_spec = {"nodeSelector": dict(s.data_node_selector), **pod_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, s.namespace, {"app": name}),
        "spec": {
            "replicas": 1,
            # One pod owns a ReadWriteOnce volume: stop the old pod before starting the new one.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


# ---------------------------------------------------------------- platform


def namespace_objects(s: ManifestSettings) -> list[dict]:
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(s.namespace, None)}]


def secret_objects(s: ManifestSettings) -> list[dict]:
    missing = [key for key in SECRET_KEYS if key not in s.secrets]
    if missing:
        raise UserError(f"manifest settings: secret values missing for {', '.join(missing)}")
    training_env = {
        "AWS_ACCESS_KEY_ID": s.secrets["minio_root_user"],
        "AWS_SECRET_ACCESS_KEY": s.secrets["minio_root_password"],
        "MLFLOW_S3_ENDPOINT_URL": s.internal_url("minio", 9000),
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(SECRET_NAME, s.namespace),
            "type": "Opaque",
            "stringData": {key: s.secrets[key] for key in SECRET_KEYS},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(TRAINING_ENV_SECRET, s.namespace),
            "type": "Opaque",
            "stringData": training_env,
        },
    ]


def knative_config_objects(s: ManifestSettings) -> list[dict]:
    """Settings of the installed Knative: sslip.io / own domain, Kourier, scale to zero, TLS."""

    def config_map(namespace: str, name: str, data: Any) -> dict:
        meta = _meta(name, namespace, annotations=dict(PATCH_FORCE))
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}

    domain_data = _apply(s.domain, lambda domain: {domain: ""})
    network = {
        "ingress-class": "kourier.ingress.networking.knative.dev",
        "external-domain-tls": "Enabled" if s.tls else "Disabled",
        "http-protocol": "Redirected" if s.tls else "Enabled",
    }
    objects = [
        config_map("knative-serving", "config-domain", domain_data),
        config_map("knative-serving", "config-network", network),
        config_map(
            "knative-serving",
            "config-autoscaler",
            {"enable-scale-to-zero": "true", "scale-to-zero-grace-period": "30s", "stable-window": "60s"},
        ),
    ]
    if s.tls:
        issuer = "kind: ClusterIssuer\nname: xray-triage-acme\n"
        objects.append(config_map("knative-serving", "config-certmanager", {"issuerRef": issuer}))
    return objects


def cluster_issuer_objects(s: ManifestSettings) -> list[dict]:
    acme: dict[str, Any] = {
        "server": s.acme_server,
        "privateKeySecretRef": {"name": "xray-triage-acme-account"},
        "solvers": [{"http01": {"ingress": {"class": "kourier.ingress.networking.knative.dev"}}}],
    }
    if s.acme_email:
        acme["email"] = s.acme_email
    return [
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "ClusterIssuer",
            "metadata": _meta("xray-triage-acme", None),
            "spec": {"acme": acme},
        }
    ]


BUCKET_SCRIPT = """\
set -eu
until mc alias set local "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
  echo "waiting for MinIO at $MINIO_URL"
  sleep 5
done
for bucket in $BUCKETS; do
  mc mb --ignore-existing "local/$bucket"
done
for bucket in $NOTIFYING_BUCKETS; do
  if mc event ls "local/$bucket" "$WEBHOOK_ARN" | grep -q "$WEBHOOK_ARN"; then
    echo "notification on $bucket already configured"
  else
    mc event add "local/$bucket" "$WEBHOOK_ARN" --event put
  fi
done
"""
WEBHOOK_ID = "MINIOSOURCE"


def minio_objects(s: ManifestSettings) -> list[dict]:
    v = s.versions
    env = [
        _secret_env("MINIO_ROOT_USER", "minio_root_user"),
        _secret_env("MINIO_ROOT_PASSWORD", "minio_root_password"),
        # The webhook target of design §2: every put in a notifying bucket goes to minio-source, with a token.
        {"name": f"MINIO_NOTIFY_WEBHOOK_ENABLE_{WEBHOOK_ID}", "value": "on"},
        {"name": f"MINIO_NOTIFY_WEBHOOK_ENDPOINT_{WEBHOOK_ID}", "value": s.internal_url("minio-source")},
        _secret_env(f"MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_{WEBHOOK_ID}", "webhook_token"),
        # Events wait on disk while minio-source is cold or down, instead of being dropped.
        {"name": f"MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_{WEBHOOK_ID}", "value": "/queue"},
        {"name": "MINIO_PROMETHEUS_AUTH_TYPE", "value": "public"},
    ]
    pod = {
        "containers": [
            {
                "name": "minio",
                "image": f"quay.io/minio/minio:{v['minio_version']}",
                "args": ["server", "/data", "--console-address", ":9001"],
                "env": env,
                "ports": [{"containerPort": 9000, "name": "api"}, {"containerPort": 9001, "name": "console"}],
                "readinessProbe": {"httpGet": {"path": "/minio/health/ready", "port": 9000}, "periodSeconds": 10},
                "livenessProbe": {"httpGet": {"path": "/minio/health/live", "port": 9000}, "periodSeconds": 30},
                "resources": _resources(("250m", "2"), ("512Mi", "2Gi")),
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data", "subPath": "minio"},
                    {"name": "data", "mountPath": "/queue", "subPath": "minio-queue"},
                ],
            }
        ],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "minio-data"}}],
    }
    job_env = [
        {"name": "MINIO_URL", "value": s.internal_url("minio", 9000)},
        _secret_env("MINIO_ROOT_USER", "minio_root_user"),
        _secret_env("MINIO_ROOT_PASSWORD", "minio_root_password"),
        {"name": "BUCKETS", "value": " ".join(BUCKETS)},
        {"name": "NOTIFYING_BUCKETS", "value": " ".join(NOTIFYING_BUCKETS)},
        {"name": "WEBHOOK_ARN", "value": f"arn:minio:sqs::{WEBHOOK_ID}:webhook"},
        {"name": "HOME", "value": "/tmp"},  # mc writes its config under $HOME
    ]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta("minio-buckets", s.namespace),
        "spec": {
            "backoffLimit": 6,
            "activeDeadlineSeconds": 900,
            "template": {
                "metadata": {"labels": {"app": "minio-buckets"}},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "containers": [
                        {
                            "name": "mc",
                            "image": f"quay.io/minio/mc:{v['minio_mc_version']}",
                            "command": ["/bin/sh", "-c", BUCKET_SCRIPT],
                            "env": job_env,
                            "resources": _resources(("50m", "200m"), ("64Mi", "128Mi")),
                        }
                    ],
                },
            },
        },
    }
    return [
        _pvc(s, "minio-data", "80Gi"),
        _deployment(s, "minio", pod, on_data_node=True),
        _service(s, "minio", {"api": 9000, "console": 9001}, admin=True),
        job,
    ]


def postgres_objects(s: ManifestSettings) -> list[dict]:
    pod = {
        "containers": [
            {
                "name": "postgres",
                "image": f"postgres:{s.versions['postgres_version']}",
                "env": [
                    {"name": "POSTGRES_USER", "value": "mlflow"},
                    {"name": "POSTGRES_DB", "value": "mlflow"},
                    _secret_env("POSTGRES_PASSWORD", "db_password"),
                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                ],
                "ports": [{"containerPort": 5432, "name": "postgres"}],
                "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "mlflow"]}, "periodSeconds": 10},
                "resources": _resources(("250m", "1"), ("256Mi", "1Gi")),
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
            }
        ],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "postgres-data"}}],
    }
    return [
        _pvc(s, "postgres-data", "10Gi"),
        _deployment(s, "postgres", pod, on_data_node=True),
        _service(s, "postgres", {"postgres": 5432}, admin=False),
    ]


# The MLflow image ships neither the PostgreSQL driver nor boto3; pinned copies go to a shared dir first.
MLFLOW_SERVER_DEPS = ("psycopg2-binary==2.9.10", "boto3==1.37.38")


def mlflow_objects(s: ManifestSettings) -> list[dict]:
    image = f"ghcr.io/mlflow/mlflow:{s.versions['mlflow_version']}"
    env = [
        _secret_env("DB_PASSWORD", "db_password"),
        # Kubernetes expands $(DB_PASSWORD), so the password never appears in the manifest.
        {
            "name": "MLFLOW_BACKEND_STORE_URI",
            "value": f"postgresql://mlflow:$(DB_PASSWORD)@postgres.{s.namespace}.svc.cluster.local:5432/mlflow",
        },
        {"name": "MLFLOW_ARTIFACTS_DESTINATION", "value": "s3://mlflow/artifacts"},
        {"name": "MLFLOW_S3_ENDPOINT_URL", "value": s.internal_url("minio", 9000)},
        _secret_env("AWS_ACCESS_KEY_ID", "minio_root_user"),
        _secret_env("AWS_SECRET_ACCESS_KEY", "minio_root_password"),
        {"name": "PYTHONPATH", "value": "/deps"},
    ]
    pod = {
        "initContainers": [
            {
                "name": "server-deps",
                "image": image,
                "command": ["pip", "install", "--no-cache-dir", "--target", "/deps", *MLFLOW_SERVER_DEPS],
                "volumeMounts": [{"name": "deps", "mountPath": "/deps"}],
                "resources": _resources(("100m", "1"), ("256Mi", "512Mi")),
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
                "resources": _resources(("250m", "1"), ("512Mi", "1Gi")),
                "volumeMounts": [{"name": "deps", "mountPath": "/deps"}],
            }
        ],
        "volumes": [{"name": "deps", "emptyDir": {}}],
    }
    return [_deployment(s, "mlflow", pod, on_data_node=False), _service(s, "mlflow", {"http": 8000}, admin=True)]


def prometheus_config(s: ManifestSettings) -> str:
    """Scrape every function pod that carries the prometheus.io annotations, plus Prometheus itself."""
    config = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": ["localhost:9090"]}]},
            {
                "job_name": "functions",
                "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [s.namespace]}}],
                "relabel_configs": [
                    {
                        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                        "action": "keep",
                        "regex": "true",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
                        "action": "replace",
                        "target_label": "__metrics_path__",
                        "regex": "(.+)",
                    },
                    {
                        "source_labels": [
                            "__meta_kubernetes_pod_ip",
                            "__meta_kubernetes_pod_annotation_prometheus_io_port",
                        ],
                        "action": "replace",
                        "target_label": "__address__",
                        "regex": "(.+);(.+)",
                        "replacement": "$1:$2",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_label_serving_knative_dev_service"],
                        "target_label": "function",
                    },
                    {
                        "source_labels": ["__meta_kubernetes_pod_label_serving_knative_dev_revision"],
                        "target_label": "revision",
                    },
                    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                ],
            },
            {
                "job_name": "minio",
                "metrics_path": "/minio/v2/metrics/cluster",
                "static_configs": [{"targets": [f"minio.{s.namespace}.svc.cluster.local:9000"]}],
            },
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def monitoring_objects(s: ManifestSettings) -> list[dict]:
    ns = s.namespace
    rbac = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta("prometheus", ns)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta("prometheus", ns),
            "rules": [
                {"apiGroups": [""], "resources": ["pods", "services", "endpoints"], "verbs": ["get", "list", "watch"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta("prometheus", ns),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prometheus"},
            "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": ns}],
        },
    ]
    prom_pod = {
        "serviceAccountName": "prometheus",
        "securityContext": {"fsGroup": 65534, "runAsUser": 65534, "runAsNonRoot": True},
        "containers": [
            {
                "name": "prometheus",
                "image": f"prom/prometheus:{s.versions['prometheus_version']}",
                "args": [
                    "--config.file=/etc/prometheus/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    "--storage.tsdb.retention.time=30d",
                ],
                "ports": [{"containerPort": 9090, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/-/ready", "port": 9090}, "periodSeconds": 10},
                "resources": _resources(("100m", "1"), ("256Mi", "1Gi")),
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/prometheus"},
                    {"name": "data", "mountPath": "/prometheus"},
                ],
            }
        ],
        "volumes": [
            {"name": "config", "configMap": {"name": "prometheus-config"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "prometheus-data"}},
        ],
    }
    datasources = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": "prometheus",
                "type": "prometheus",
                "access": "proxy",
                "url": s.internal_url("prometheus", 9090),
                "isDefault": True,
            }
        ],
    }
    providers = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "xray-triage",
                "folder": "xray-triage",
                "type": "file",
                "options": {"path": "/var/lib/grafana/dashboards"},
            }
        ],
    }
    grafana_pod = {
        "containers": [
            {
                "name": "grafana",
                "image": f"grafana/grafana:{s.versions['grafana_version']}",
                "env": [
                    {"name": "GF_SECURITY_ADMIN_USER", "value": "admin"},
                    _secret_env("GF_SECURITY_ADMIN_PASSWORD", "grafana_admin_password"),
                    {"name": "GF_USERS_ALLOW_SIGN_UP", "value": "false"},
                    {"name": "GF_ANALYTICS_REPORTING_ENABLED", "value": "false"},
                ],
                "ports": [{"containerPort": 3000, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/api/health", "port": 3000}, "periodSeconds": 10},
                "resources": _resources(("100m", "500m"), ("128Mi", "512Mi")),
                "volumeMounts": [
                    {"name": "datasources", "mountPath": "/etc/grafana/provisioning/datasources"},
                    {"name": "providers", "mountPath": "/etc/grafana/provisioning/dashboards"},
                    {"name": "dashboards", "mountPath": "/var/lib/grafana/dashboards"},
                ],
            }
        ],
        "volumes": [
            {"name": "datasources", "configMap": {"name": "grafana-datasources"}},
            {"name": "providers", "configMap": {"name": "grafana-dashboard-providers"}},
            {"name": "dashboards", "configMap": {"name": "grafana-dashboards"}},
        ],
    }

    def config_map(name: str, data: dict) -> dict:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, ns), "data": data}

    return [
        *rbac,
        config_map("prometheus-config", {"prometheus.yml": prometheus_config(s)}),
        _pvc(s, "prometheus-data", "10Gi"),
        _deployment(s, "prometheus", prom_pod, on_data_node=True),
        _service(s, "prometheus", {"http": 9090}, admin=True),
        config_map("grafana-datasources", {"prometheus.yaml": yaml.safe_dump(datasources, sort_keys=False)}),
        config_map("grafana-dashboard-providers", {"xray-triage.yaml": yaml.safe_dump(providers, sort_keys=False)}),
        config_map("grafana-dashboards", {"xray-triage.json": DASHBOARD.read_text()}),
        _deployment(s, "grafana", grafana_pod, on_data_node=False),
        _service(s, "grafana", {"http": 3000}, admin=True),
    ]


def function_rbac_objects(s: ManifestSettings) -> list[dict]:
    """retrain launches training Jobs; canary patches the traffic block of the Knative Services."""
    ns = s.namespace
    roles = {
        "retrain": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch"]}],
        "canary": [
            {"apiGroups": ["serving.knative.dev"], "resources": ["services"], "verbs": ["get", "list", "patch"]},
            {"apiGroups": ["serving.knative.dev"], "resources": ["revisions"], "verbs": ["get", "list"]},
        ],
    }
    objects: list[dict] = []
    for name, rules in roles.items():
        objects += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, ns)},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(name, ns), "rules": rules},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": _meta(name, ns),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
            },
        ]
    return objects


def platform_objects(s: ManifestSettings) -> list[dict]:
    """Everything but the functions: config of Knative, TLS issuer, storage, registry, monitoring."""
    objects = knative_config_objects(s) if s.configure_knative else []
    if s.tls:
        objects += cluster_issuer_objects(s)
    return objects + minio_objects(s) + postgres_objects(s) + mlflow_objects(s) + monitoring_objects(s)


# ---------------------------------------------------------------- functions and eventing


def knative_service(s: ManifestSettings, fn: FunctionSpec) -> dict:
    env: list[dict] = [
        {"name": "MODEL_URI", "value": s.model_uri},
        {"name": "S3_ENDPOINT_URL", "value": s.internal_url("minio", 9000)},
        {"name": "MLFLOW_S3_ENDPOINT_URL", "value": s.internal_url("minio", 9000)},
        {"name": "MLFLOW_TRACKING_URI", "value": s.internal_url("mlflow", 8000)},
        {"name": "AWS_REGION", "value": "us-east-1"},
        {"name": "KNATIVE_NAMESPACE", "value": s.namespace},
        _secret_env("AWS_ACCESS_KEY_ID", "minio_root_user"),
        _secret_env("AWS_SECRET_ACCESS_KEY", "minio_root_password"),
    ]
    env += [{"name": k, "value": v} for k, v in fn.extra_env.items()]
    env += [_secret_env(name, key) for name, key in fn.secret_env.items()]
    if fn.launches_training:
        env += [
            {"name": "TRAINING_IMAGE", "value": s.image("training")},
            {"name": "TRAINING_ENV_SECRET", "value": TRAINING_ENV_SECRET},
        ]
    labels = {"app": fn.name}
    if not fn.public:
        labels["networking.knative.dev/visibility"] = "cluster-local"
    if fn.emits_events:
        labels["xray-triage/emits-events"] = "true"
    spec: dict[str, Any] = {
        "containerConcurrency": 0,  # soft limit through the autoscaling target below
        "timeoutSeconds": fn.timeout_s,
        "containers": [
            {
                "name": "function",
                "image": s.image(fn.name),
                "ports": [{"containerPort": 8080, "name": "http1"}],
                "env": env,
                "resources": _resources(fn.cpu, fn.memory),
                # Ready only once the model is loaded (design §5), so no request meets a cold model.
                "readinessProbe": {"httpGet": {"path": "/healthz"}, "periodSeconds": 2, "failureThreshold": 3},
            }
        ],
    }
    if fn.service_account:
        spec["serviceAccountName"] = fn.service_account
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": _meta(fn.name, s.namespace, labels),
        "spec": {
            "template": {
                "metadata": {
                    "labels": {"app": fn.name},
                    "annotations": {
                        "autoscaling.knative.dev/min-scale": "0",
                        "autoscaling.knative.dev/max-scale": str(fn.max_scale or s.max_scale),
                        "autoscaling.knative.dev/metric": "concurrency",
                        "autoscaling.knative.dev/target": str(s.target_concurrency),
                        "prometheus.io/scrape": "true",
                        "prometheus.io/path": "/metrics",
                        "prometheus.io/port": "8080",
                    },
                },
                "spec": spec,
            }
        },
    }


def _delivery() -> dict:
    return {
        "retry": DELIVERY_RETRIES,
        "backoffPolicy": "exponential",
        "backoffDelay": DELIVERY_BACKOFF,
        "deadLetterSink": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "dead-letter"}},
    }


def eventing_objects(s: ManifestSettings) -> list[dict]:
    ns = s.namespace
    broker_ref = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}
    objects: list[dict] = [
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": _meta("default", ns, annotations={"eventing.knative.dev/broker.class": "MTChannelBasedBroker"}),
            "spec": {"delivery": _delivery()},
        },
        {
            "apiVersion": "sources.knative.dev/v1",
            "kind": "SinkBinding",
            "metadata": _meta("functions-to-broker", ns),
            "spec": {
                "subject": {
                    "apiVersion": "serving.knative.dev/v1",
                    "kind": "Service",
                    "selector": {"matchLabels": {"xray-triage/emits-events": "true"}},
                },
                "sink": {"ref": broker_ref},
            },
        },
    ]
    for sub in SUBSCRIPTIONS:
        attributes = {"type": sub.event_type}
        if sub.bucket:
            attributes["bucket"] = sub.bucket
        objects.append(
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Trigger",
                "metadata": _meta(sub.name, ns),
                "spec": {
                    "broker": "default",
                    "filter": {"attributes": attributes},
                    "subscriber": {
                        "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": sub.subscriber}
                    },
                    "delivery": _delivery(),
                },
            }
        )
    for name, schedule in PING_SCHEDULES.items():
        objects.append(
            {
                "apiVersion": "sources.knative.dev/v1",
                "kind": "PingSource",
                "metadata": _meta(f"{name}-tick", ns),
                "spec": {
                    "schedule": schedule,
                    "contentType": "application/json",
                    "data": json.dumps({"check": name}),
                    "sink": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": name}},
                },
            }
        )
    return objects


def function_objects(s: ManifestSettings) -> list[dict]:
    """The Knative Services, their RBAC, the Broker, Triggers, PingSources and the SinkBinding."""
    return function_rbac_objects(s) + [knative_service(s, fn) for fn in FUNCTIONS] + eventing_objects(s)


def all_objects(s: ManifestSettings) -> list[dict]:
    return namespace_objects(s) + secret_objects(s) + platform_objects(s) + function_objects(s)


def _apply(value: Any, fn: Any) -> Any:
    """`fn(value)` for a plain value, `value.apply(fn)` for a pulumi Output (the floating IP's domain)."""
    return value.apply(fn) if hasattr(value, "apply") else fn(value)


# ---------------------------------------------------------------- `triage manifests`

FILES = (
    ("00-namespace.yaml", namespace_objects),
    ("10-secrets.yaml", secret_objects),
    ("20-platform.yaml", platform_objects),
    ("30-functions.yaml", function_objects),
)


def write_manifests(settings: ManifestSettings, out: Path) -> list[Path]:
    """Write the YAML files into `out` (created); each file appears whole or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".manifests-", dir=out))
    written = []
    try:
        for name, build in FILES:
            path = staging / name
            path.write_text(yaml.safe_dump_all(build(settings), sort_keys=False))
            if name == "10-secrets.yaml":
                path.chmod(0o600)
        for name, _ in FILES:
            os.replace(staging / name, out / name)
            written.append(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="directory for the YAML files (created)")
    parser.add_argument("--domain", required=True, help="Knative domain, e.g. 203.0.113.7.sslip.io or example.org")
    parser.add_argument("--image-repository", required=True, help="function images are REPOSITORY/<function>:TAG")
    parser.add_argument("--image-tag", required=True, help="pinned image tag (version, git commit or sha256:...)")
    parser.add_argument("--namespace", default="xray-triage")
    parser.add_argument("--model-uri", default="models:/xray-vit@champion")
    parser.add_argument("--max-scale", type=int, default=5)
    parser.add_argument("--target-concurrency", type=int, default=4)
    parser.add_argument("--tls", action="store_true", help="HTTPS through cert-manager (needs --acme-email)")
    parser.add_argument("--acme-email", default=None)
    parser.add_argument("--storage-class", default=None, help="storage class of the PVCs (default: the cluster's)")
    parser.add_argument(
        "--keep-knative-config",
        action="store_true",
        help="leave the cluster's Knative ConfigMaps (domain, ingress class, autoscaler) as they are",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")


def settings_from_args(args: argparse.Namespace) -> ManifestSettings:
    """Validate the CLI values through the same checks as the stack config."""
    from infra_pulumi.config import load_config

    values = {
        "key_pair": "unused",
        "admin_cidrs": "127.0.0.1/32",
        "image_repository": args.image_repository,
        "image_tag": args.image_tag,
        "namespace": args.namespace,
        "domain": args.domain,
        "model_uri": args.model_uri,
        "max_scale": str(args.max_scale),
        "target_concurrency": str(args.target_concurrency),
        "tls": "true" if args.tls else "false",
        "acme_email": args.acme_email,
    }
    cfg = load_config(values.get, "manifests", lambda key: True)
    # The CLI has no secret store: fresh random values go only into the 0600 secrets file.
    generated = {key: secrets.token_urlsafe(24) for key in SECRET_KEYS}
    generated["minio_root_user"] = "xray-" + secrets.token_hex(6)
    generated["reviewer_tokens"] = f"reviewer:{secrets.token_urlsafe(24)}"
    return ManifestSettings.from_config(
        cfg,
        domain=cfg.domain,
        secrets=generated,
        storage_class=args.storage_class,
        expose_admin=False,  # on someone else's cluster, admin UIs stay inside (kubectl port-forward)
        configure_knative=not args.keep_knative_config,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a directory")
    files = write_manifests(settings, args.out)
    count = sum(len(build(settings)) for _, build in FILES)
    print(f"wrote {count} objects to {args.out} ({', '.join(p.name for p in files)})")
    print(f"secrets were generated into {args.out / '10-secrets.yaml'} (mode 0600): keep it out of version control")
    print(f"apply with: kubectl apply -f {args.out}")
    if args.json:
        print(json.dumps({"out": str(args.out), "files": [p.name for p in files], "objects": count}))
    return 0
