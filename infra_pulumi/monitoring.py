"""Monitoring on the cluster: Prometheus and Grafana with the project's dashboard."""

from __future__ import annotations

from infra_pulumi.kubernetes_objects import KubernetesObjects
from infra_pulumi.manifests import ManifestSettings, monitoring_objects

__all__ = ["Monitoring"]


class Monitoring(KubernetesObjects):
    type_token = "xray-triage:infra:Monitoring"

    def objects_of(self, settings: ManifestSettings) -> list[dict]:
        return monitoring_objects(settings)
