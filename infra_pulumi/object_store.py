"""The object store on the cluster: MinIO, its webhook to minio-source and the Job that makes the buckets."""

from __future__ import annotations

from infra_pulumi.kubernetes_objects import KubernetesObjects
from infra_pulumi.manifests import ManifestSettings, object_store_objects

__all__ = ["ObjectStore"]


class ObjectStore(KubernetesObjects):
    type_token = "xray-triage:infra:ObjectStore"

    def objects_of(self, settings: ManifestSettings) -> list[dict]:
        return object_store_objects(settings)
