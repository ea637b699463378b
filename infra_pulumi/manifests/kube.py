"""Small builders of plain Kubernetes objects (as dicts) that every concern of the platform uses."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from infra_pulumi.manifests.settings import SECRET_NAME, ManifestSettings

__all__ = [
    "PART_OF",
    "apply_value",
    "config_map",
    "deployment",
    "meta",
    "persistent_volume_claim",
    "resources",
    "secret_env",
    "service",
    "service_account_with_role",
]

PART_OF = {"app.kubernetes.io/part-of": "xray-triage"}
RBAC = "rbac.authorization.k8s.io/v1"


def meta(name: str, namespace: str | None, labels: Mapping[str, str] | None = None, **extra: Any) -> dict:
    """`metadata` with the project's label; `extra` adds e.g. annotations."""
    metadata: dict[str, Any] = {"name": name, "labels": {**PART_OF, **(labels or {})}}
    if namespace:
        metadata["namespace"] = namespace
    metadata.update(extra)
    return metadata


def secret_env(env_name: str, key: str) -> dict:
    """An env entry read from `key` of the one Secret (SECRET_NAME), so no value appears in the manifest."""
    return {"name": env_name, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key}}}


def resources(cpu: tuple[str, str], memory: tuple[str, str]) -> dict:
    """Requests and limits from (request, limit) pairs."""
    return {"requests": {"cpu": cpu[0], "memory": memory[0]}, "limits": {"cpu": cpu[1], "memory": memory[1]}}


def config_map(name: str, namespace: str, data: Any, **extra: Any) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(name, namespace, **extra), "data": data}


def persistent_volume_claim(s: ManifestSettings, name: str, size: str) -> dict:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if s.storage_class:
        spec["storageClassName"] = s.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(name, s.namespace), "spec": spec}


def service(s: ManifestSettings, name: str, ports: Mapping[str, int], *, admin: bool) -> dict:
    """A Service in front of the Deployment `name`; admin UIs go out through k3s servicelb on the node's port,
    guarded by the OpenStack security groups."""
    kind = "LoadBalancer" if admin and s.expose_admin else "ClusterIP"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, s.namespace, {"app": name}),
        "spec": {
            "type": kind,
            "selector": {"app": name},
            "ports": [{"name": p, "port": n, "targetPort": n, "protocol": "TCP"} for p, n in ports.items()],
        },
    }


def deployment(s: ManifestSettings, name: str, pod_spec: dict, *, on_data_node: bool) -> dict:
    """One replica of `pod_spec`; `on_data_node` pins it to the node that holds the data volume."""
    if on_data_node and s.data_node_selector:
        pod_spec = {"nodeSelector": dict(s.data_node_selector), **pod_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, s.namespace, {"app": name}),
        "spec": {
            "replicas": 1,
            # One pod owns a ReadWriteOnce volume: stop the old pod before starting the new one.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def service_account_with_role(name: str, namespace: str, rules: list[dict]) -> list[dict]:
    """A ServiceAccount `name` with a Role of `rules` in `namespace`, bound to it."""
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name, namespace)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta(name, namespace),
            "rules": rules,
        },
        {
            "apiVersion": RBAC,
            "kind": "RoleBinding",
            "metadata": meta(name, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


def apply_value(value: Any, fn: Callable[[Any], Any]) -> Any:
    """`fn(value)` for a plain value, `value.apply(fn)` for a pulumi Output (the floating IP's domain)."""
    return value.apply(fn) if hasattr(value, "apply") else fn(value)
