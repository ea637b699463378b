"""The DICOM receiver's Deployment and LoadBalancer Service: valid against the real schemas, wired to MinIO,
credentials by reference, the port open only to the hospital's CIDRs."""

from __future__ import annotations

import dataclasses

from infra_pulumi.manifests import all_objects
from infra_pulumi.manifests.dicom_receiver import DICOM_PORT, dicom_receiver_objects
from tests.infra.kubernetes_schemas import validation_errors
from tests.infra.manifests.example import SETTINGS

HOSPITAL = dataclasses.replace(SETTINGS, dicom_cidrs=("10.20.0.0/16",), dicom_allowed_aes=("CR_ROOM1", "PACS"))


def test_the_objects_validate_and_are_part_of_every_manifest() -> None:
    objects = dicom_receiver_objects(HOSPITAL)
    assert [o["kind"] for o in objects] == ["Deployment", "Service"]
    assert [e for o in objects for e in validation_errors(o)] == []
    names = {(o["kind"], o["metadata"]["name"]) for o in all_objects(SETTINGS)}
    assert {("Deployment", "dicom-receiver"), ("Service", "dicom-receiver")} <= names


def test_the_receiver_runs_the_entry_point_with_its_settings_and_secrets_by_reference() -> None:
    deployment, _ = dicom_receiver_objects(HOSPITAL)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["python", "-m", "shared.pacs.receiver"]
    assert container["image"] == "ghcr.io/example/xray-triage/ingest:0.3.1"
    env = {e["name"]: e for e in container["env"]}
    assert env["DICOM_AE_TITLE"]["value"] == "XRAYTRIAGE" and env["DICOM_PORT"]["value"] == str(DICOM_PORT)
    assert env["DICOM_ALLOWED_AES"]["value"] == "CR_ROOM1,PACS"
    assert env["S3_ENDPOINT_URL"]["value"] == "http://minio.xray-triage.svc.cluster.local:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "minio_root_password"
    assert "value-of-minio_root_password" not in str(deployment)
    assert container["readinessProbe"]["tcpSocket"]["port"] == DICOM_PORT


def test_the_service_is_a_load_balancer_limited_to_the_hospital_cidrs() -> None:
    _, service = dicom_receiver_objects(HOSPITAL)
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"][0]["port"] == DICOM_PORT == 11112
    assert service["spec"]["loadBalancerSourceRanges"] == ["10.20.0.0/16"]
    assert service["spec"]["selector"] == {"app": "dicom-receiver"}
