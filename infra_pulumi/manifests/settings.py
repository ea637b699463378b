"""What every Kubernetes object of the platform depends on: `ManifestSettings`, and the names several concerns share.

The Pulumi program builds the settings from the stack config (`ManifestSettings.from_config`), `triage manifests`
from its arguments; secret values are opaque inputs here (pulumi Outputs in the program, generated strings in the CLI).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from infra_pulumi.config import DEFAULT_VERSIONS, OPTIONAL_SECRET_KEYS

__all__ = ["DATA_NODE_LABEL", "SECRET_KEYS", "SECRET_NAME", "TRAINING_ENV_SECRET", "ManifestSettings"]

SECRET_NAME = "xray-triage-secrets"
TRAINING_ENV_SECRET = "triage-training-env"  # envFrom of the training Jobs that retrain launches
# Keys of the one Kubernetes Secret: the stack config's optional secrets (set there, else pulumi-random).
SECRET_KEYS = OPTIONAL_SECRET_KEYS
DATA_NODE_LABEL = "xray-triage/data"


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
    # The DICOM receiver: its AE title, the calling AE titles it accepts (empty: any), the hospital CIDRs of its port.
    dicom_ae_title: str = "XRAYTRIAGE"
    dicom_allowed_aes: tuple[str, ...] = ()
    dicom_cidrs: tuple[str, ...] = ()
    pacs_stow_url: str = ""  # the hospital PACS's DICOMweb base for export (empty: export skips, counted)
    export_method: str = "stow"  # or cstore: to pacs_host:pacs_port (pacs_ae_title), calling as export_ae_title
    pacs_host: str = ""
    pacs_port: int = 4242
    pacs_ae_title: str = "ORTHANC"
    export_ae_title: str = "XRAYTRIAGE"
    alert_utc_offset_hours: float = 0.0  # the hospital's offset from UTC: working hours of the alerting rules

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
            dicom_ae_title=cfg.dicom_ae_title,
            dicom_allowed_aes=cfg.dicom_allowed_aes,
            dicom_cidrs=tuple(cfg.cidrs.get("dicom", ())),
            pacs_stow_url=cfg.pacs_stow_url,
            export_method=cfg.export_method,
            pacs_host=cfg.pacs_host,
            pacs_port=cfg.pacs_port,
            pacs_ae_title=cfg.pacs_ae_title,
            export_ae_title=cfg.export_ae_title,
            **overrides,
        )

    def image(self, name: str) -> str:
        """REPOSITORY/<name>:TAG (or @sha256:...), built from functions/Dockerfile."""
        sep = "@" if self.image_tag.startswith("sha256:") else ":"
        return f"{self.image_repository}/{name}{sep}{self.image_tag}"

    def internal_url(self, service: str, port: int | None = None) -> str:
        host = f"{service}.{self.namespace}.svc.cluster.local"
        return f"http://{host}:{port}" if port else f"http://{host}"
