"""The functions as Knative Services (min-scale 0): their Kubernetes sizes and rights, env, RBAC and URLs.

Which functions exist, which are public, which emit events and which variables each gets is the topology's
(`shared/topology.py`); this module adds what only Kubernetes needs: cpu, memory, timeout, max scale, accounts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infra_pulumi.manifests.kube import meta, resources, secret_env, service_account_with_role
from infra_pulumi.manifests.settings import TRAINING_ENV_SECRET, ManifestSettings
from shared import topology
from shared.config import CanarySettings
from shared.names import API_TOKENS_KEY, STATE_BUCKET

__all__ = ["FUNCTIONS", "FunctionSpec", "function_env", "function_rbac_objects", "function_url", "knative_service"]


@dataclass(frozen=True, kw_only=True)
class FunctionSpec:
    """One Knative Service: a function of the topology, built from the one image with FUNCTION=<target>."""

    function: topology.Function
    cpu: tuple[str, str]  # request, limit
    memory: tuple[str, str]
    timeout_s: int
    service_account: str | None = None
    max_scale: int | None = None  # None: the stack's max_scale

    @property
    def name(self) -> str:
        return self.function.name

    @property
    def target(self) -> str:
        return self.function.target


_SMALL = {"cpu": ("100m", "500m"), "memory": ("128Mi", "256Mi")}
_MEDIUM = {"cpu": ("250m", "1"), "memory": ("256Mi", "512Mi")}
_MODEL = {"cpu": ("1", "2"), "memory": ("1Gi", "2Gi")}  # holds the ONNX session and runs explanations
_KUBERNETES: dict[str, dict[str, Any]] = {
    "predict": {"cpu": ("500m", "1"), "memory": ("512Mi", "1Gi"), "timeout_s": 30},
    "explain": {**_MODEL, "timeout_s": 60},
    "preprocess": {**_MEDIUM, "timeout_s": 30},
    "feedback": {**_SMALL, "timeout_s": 30},
    "review": {**_MEDIUM, "timeout_s": 30},  # decodes the images it streams (DICOM too)
    # STOW-RS: holds a request body (up to MAX_INPUT_BYTES) and its parts, decodes each instance once.
    "dicomweb": {**_MEDIUM, "memory": ("512Mi", "1Gi"), "timeout_s": 60},
    "minio-source": {**_SMALL, "timeout_s": 30},
    "ingest": {**_MODEL, "timeout_s": 120},
    # One launcher: a batch of labels must never start two trainings.
    "retrain": {**_MEDIUM, "timeout_s": 300, "service_account": "retrain", "max_scale": 1},
    "canary": {**_SMALL, "timeout_s": 120, "service_account": "canary", "max_scale": 1},
    "monitor": {**_MEDIUM, "timeout_s": 120, "max_scale": 1},
    "export": {**_MEDIUM, "timeout_s": 60},  # builds the SR and the Secondary Capture from the original instance
    "dead-letter": {**_SMALL, "timeout_s": 30, "max_scale": 2},
}
FUNCTIONS: tuple[FunctionSpec, ...] = tuple(
    FunctionSpec(function=fn, **_KUBERNETES[fn.name]) for fn in topology.FUNCTIONS
)
# What the accounts of design §2 may do: retrain launches training Jobs, canary patches the Services' traffic.
ROLES = {
    "retrain": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch"]}],
    "canary": [
        {"apiGroups": ["serving.knative.dev"], "resources": ["services"], "verbs": ["get", "list", "patch"]},
        {"apiGroups": ["serving.knative.dev"], "resources": ["revisions"], "verbs": ["get", "list"]},
    ],
}


def function_url(settings: ManifestSettings, function: FunctionSpec, domain: str) -> str:
    """The URL Knative gives the Service (`{name}.{namespace}.{domain}`); cluster-local ones stay internal."""
    if not function.function.public:
        return settings.internal_url(function.name)
    scheme = "https" if settings.tls else "http"
    return f"{scheme}://{function.name}.{settings.namespace}.{domain}"


def function_env(s: ManifestSettings, fn: FunctionSpec) -> list[dict]:
    """The topology's env contract with the cluster's values; secret values by reference to the one Secret.

    K_SINK is left out (the SinkBinding sets it), and so is CANARY_GATEWAY_URL (the canary patches the
    Knative Services here, not a gateway)."""
    values = {
        topology.MODEL_URI: s.model_uri,
        topology.S3_URL: s.internal_url("minio", 9000),
        topology.ARTIFACT_STORE_URL: s.internal_url("minio", 9000),
        topology.MLFLOW_URL: s.internal_url("mlflow", 8000),
        topology.REGION: "us-east-1",
        topology.NAMESPACE: s.namespace,
        topology.RETRAIN_BACKEND: "kubernetes",
        topology.TRAINING_IMAGE: s.image("training"),
        topology.TRAINING_ENV_SECRET: TRAINING_ENV_SECRET,
        topology.API_TOKENS: f"s3://{STATE_BUCKET}/{API_TOKENS_KEY}",  # rotated with `triage tokens`, no redeploy
        topology.PACS_STOW_URL: s.pacs_stow_url,
        topology.EXPORT_METHOD: s.export_method,
        topology.PACS_HOST: s.pacs_host,
        topology.PACS_PORT: str(s.pacs_port),
        topology.PACS_AE_TITLE: s.pacs_ae_title,
        topology.EXPORT_AE_TITLE: s.export_ae_title,
        # The canary's replay and approval gate: CanarySettings' defaults, written out so the Service shows them.
        topology.CANARY_REPLAY_UPLOADS: str(CanarySettings().replay_uploads),
        topology.CANARY_REPLAY_MIN_AGREEMENT: str(CanarySettings().policy.replay_min_agreement),
        topology.CANARY_REQUIRE_APPROVAL: str(CanarySettings().policy.require_approval).lower(),
    }
    return [
        secret_env(var.name, var.value) if var.secret else {"name": var.name, "value": values[var.value]}
        for var in fn.function.env
        if var.secret or var.value in values
    ]


def knative_service(s: ManifestSettings, fn: FunctionSpec) -> dict:
    labels = {"app": fn.name}
    if not fn.function.public:
        labels["networking.knative.dev/visibility"] = "cluster-local"
    if fn.function.emits_events:
        labels["xray-triage/emits-events"] = "true"
    scaling = topology.AUTOSCALING.get(fn.name)  # measured (triage scale-report), else the stack's defaults
    spec: dict[str, Any] = {
        # A hard limit where measured (past it requests only queue in the pod), else the soft target alone.
        "containerConcurrency": scaling.container_concurrency if scaling else 0,
        "timeoutSeconds": fn.timeout_s,
        "containers": [
            {
                "name": "function",
                "image": s.image(fn.name),
                "ports": [{"containerPort": 8080, "name": "http1"}],
                "env": function_env(s, fn),
                "resources": resources(fn.cpu, fn.memory),
                # Ready only once the model is loaded (design §5), so no request meets a cold model.
                "readinessProbe": {"httpGet": {"path": "/healthz"}, "periodSeconds": 2, "failureThreshold": 3},
            }
        ],
    }
    if fn.service_account:
        spec["serviceAccountName"] = fn.service_account
    annotations = {
        "autoscaling.knative.dev/min-scale": "0",
        "autoscaling.knative.dev/max-scale": str(fn.max_scale or (scaling.max_scale if scaling else s.max_scale)),
        "autoscaling.knative.dev/metric": "concurrency",
        "autoscaling.knative.dev/target": str(scaling.target if scaling else s.target_concurrency),
        "prometheus.io/scrape": "true",
        "prometheus.io/path": "/metrics",
        "prometheus.io/port": "8080",
    }
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": meta(fn.name, s.namespace, labels),
        "spec": {"template": {"metadata": {"labels": {"app": fn.name}, "annotations": annotations}, "spec": spec}},
    }


def function_rbac_objects(s: ManifestSettings) -> list[dict]:
    """retrain launches training Jobs; canary patches the traffic block of the Knative Services."""
    return [obj for name, rules in ROLES.items() for obj in service_account_with_role(name, s.namespace, rules)]
