"""Every Kubernetes / Knative object of the platform, built as plain dicts, one module per concern.

The Pulumi program applies them through one ComponentResource per concern (`infra_pulumi/platform.py`,
`object_store.py`, `registry.py`, `monitoring.py`, `functions.py`); `triage manifests --out DIR` writes the
same objects as YAML for `kubectl apply -f DIR`. Nothing here imports pulumi.

| module | objects |
| --- | --- |
| `settings` | `ManifestSettings`, the Secret names |
| `kube` | small builders (metadata, PVC, Service, Deployment, RBAC) |
| `basics` | namespace, Secrets, Knative settings, ACME issuer |
| `object_store` | MinIO and the bucket Job (`scripts/make-buckets.sh`) |
| `registry` | PostgreSQL and MLflow |
| `monitoring` | Prometheus and Grafana |
| `functions` | Knative Services and their RBAC |
| `eventing` | Broker, Triggers, PingSources, SinkBinding |
| `dicom_receiver` | the DICOM receiver's Deployment and LoadBalancer Service |
"""

from __future__ import annotations

from infra_pulumi.manifests.basics import knative_objects, namespace_objects, secret_objects
from infra_pulumi.manifests.dicom_receiver import dicom_receiver_objects
from infra_pulumi.manifests.eventing import eventing_objects
from infra_pulumi.manifests.functions import (
    FUNCTIONS,
    FunctionSpec,
    function_rbac_objects,
    function_url,
    knative_service,
)
from infra_pulumi.manifests.monitoring import DASHBOARD, monitoring_objects, prometheus_config
from infra_pulumi.manifests.object_store import BUCKETS, NOTIFYING_BUCKETS, object_store_objects
from infra_pulumi.manifests.registry import registry_objects
from infra_pulumi.manifests.settings import DATA_NODE_LABEL, SECRET_KEYS, SECRET_NAME, ManifestSettings

__all__ = [
    "BUCKETS",
    "DASHBOARD",
    "DATA_NODE_LABEL",
    "FUNCTIONS",
    "NOTIFYING_BUCKETS",
    "SECRET_KEYS",
    "SECRET_NAME",
    "FunctionSpec",
    "ManifestSettings",
    "all_objects",
    "eventing_objects",
    "function_objects",
    "function_rbac_objects",
    "function_url",
    "knative_objects",
    "knative_service",
    "monitoring_objects",
    "namespace_objects",
    "object_store_objects",
    "platform_objects",
    "prometheus_config",
    "registry_objects",
    "secret_objects",
]


def platform_objects(s: ManifestSettings) -> list[dict]:
    """Everything but the namespace, the Secrets and the functions: Knative settings, storage, registry, monitoring."""
    return knative_objects(s) + object_store_objects(s) + registry_objects(s) + monitoring_objects(s)


def function_objects(s: ManifestSettings) -> list[dict]:
    """The Knative Services, their RBAC, the Broker, Triggers, PingSources and the SinkBinding."""
    return function_rbac_objects(s) + [knative_service(s, fn) for fn in FUNCTIONS] + eventing_objects(s)


def all_objects(s: ManifestSettings) -> list[dict]:
    return (namespace_objects(s) + secret_objects(s) + platform_objects(s) + function_objects(s)
            + dicom_receiver_objects(s))
