"""The model registry on the cluster: PostgreSQL and the MLflow server."""

from __future__ import annotations

from infra_pulumi.kubernetes_objects import KubernetesObjects
from infra_pulumi.manifests import ManifestSettings, registry_objects

__all__ = ["Registry"]


class Registry(KubernetesObjects):
    type_token = "xray-triage:infra:Registry"

    def objects_of(self, settings: ManifestSettings) -> list[dict]:
        return registry_objects(settings)
