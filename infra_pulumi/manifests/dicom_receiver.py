"""The DICOM receiver on the cluster: a Deployment (C-STORE SCP, `python -m shared.pacs.receiver`) and a Service
of type LoadBalancer, which k3s's service load balancer binds on the nodes' DICOM port.

DICOM is plain TCP, which Knative does not serve, so this is the one Deployment that is not a function. It runs
the ingest image (the same library; only the command differs) and writes into MinIO's `inference-inputs`, whose
notification starts ingest. The port is reachable only from the hospital's CIDRs: the OpenStack security group
(`infra_pulumi.security`, `dicom_cidrs`) and the Service's `loadBalancerSourceRanges` both say so.
"""

from __future__ import annotations

from infra_pulumi.manifests.kube import meta, resources, secret_env
from infra_pulumi.manifests.settings import ManifestSettings
from shared import topology
from shared.pacs.receiver import METRICS_PORT

__all__ = ["DICOM_PORT", "DICOM_RECEIVER", "dicom_receiver_objects"]

DICOM_RECEIVER = "dicom-receiver"
DICOM_PORT = 11112


def _container(s: ManifestSettings) -> dict:
    env = [
        {"name": "S3_ENDPOINT_URL", "value": s.internal_url("minio", 9000)},
        {"name": "AWS_REGION", "value": "us-east-1"},
        secret_env("AWS_ACCESS_KEY_ID", topology.S3_ACCESS_KEY),
        secret_env("AWS_SECRET_ACCESS_KEY", topology.S3_SECRET_KEY),
        secret_env("LOG_REF_SECRET", topology.LOG_REF_SECRET),  # its log lines name objects as the functions do
        {"name": "DICOM_AE_TITLE", "value": s.dicom_ae_title},
        {"name": "DICOM_PORT", "value": str(DICOM_PORT)},
        {"name": "DICOM_ALLOWED_AES", "value": ",".join(s.dicom_allowed_aes)},
    ]
    probe = {"tcpSocket": {"port": DICOM_PORT}, "periodSeconds": 5, "failureThreshold": 3}
    return {
        "name": "receiver",
        "image": s.image("ingest"),
        "command": ["python", "-m", "shared.pacs.receiver", "--host", "0.0.0.0", "--metrics-port", str(METRICS_PORT)],
        "ports": [{"containerPort": DICOM_PORT, "name": "dicom", "protocol": "TCP"},
                  {"containerPort": METRICS_PORT, "name": "metrics", "protocol": "TCP"}],  # in-cluster only
        "env": env,
        # Decodes each image once to check it (a 2,500 x 2,048 16-bit DX is 10 MB of pixels).
        "resources": resources(("250m", "1"), ("256Mi", "1Gi")),
        "readinessProbe": probe,
        "livenessProbe": {**probe, "periodSeconds": 20},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }


def dicom_receiver_objects(s: ManifestSettings) -> list[dict]:
    """The receiver's Deployment and its LoadBalancer Service."""
    labels = {"app": DICOM_RECEIVER}
    # Scraped by the functions' job (`monitoring.prometheus_config`): the same prometheus.io annotations.
    scraped = {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics",
               "prometheus.io/port": str(METRICS_PORT)}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(DICOM_RECEIVER, s.namespace, labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels, "annotations": scraped},
                         "spec": {"containers": [_container(s)]}},
        },
    }
    spec: dict = {
        "type": "LoadBalancer",  # k3s servicelb: the port on the nodes, guarded by the security group
        "selector": labels,
        "ports": [{"name": "dicom", "port": DICOM_PORT, "targetPort": DICOM_PORT, "protocol": "TCP"}],
    }
    if s.dicom_cidrs:
        spec["loadBalancerSourceRanges"] = list(s.dicom_cidrs)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta(DICOM_RECEIVER, s.namespace, labels),
               "spec": spec}
    return [deployment, service]
