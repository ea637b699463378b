"""The DICOM receiver on the cluster: its Deployment and LoadBalancer Service (`manifests.dicom_receiver`)."""

from __future__ import annotations

from infra_pulumi.kubernetes_objects import KubernetesObjects
from infra_pulumi.manifests import ManifestSettings
from infra_pulumi.manifests.dicom_receiver import dicom_receiver_objects

__all__ = ["DicomReceiver"]


class DicomReceiver(KubernetesObjects):
    type_token = "xray-triage:infra:DicomReceiver"

    def objects_of(self, settings: ManifestSettings) -> list[dict]:
        return dicom_receiver_objects(settings)
