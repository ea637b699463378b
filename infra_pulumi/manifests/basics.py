"""Platform basics: the namespace, the two Secrets, the installed Knative's settings and the ACME issuer."""

from __future__ import annotations

from typing import Any

from infra_pulumi.manifests.kube import apply_value, config_map, meta
from infra_pulumi.manifests.settings import SECRET_KEYS, SECRET_NAME, TRAINING_ENV_SECRET, ManifestSettings
from shared.errors import UserError

__all__ = [
    "ISSUER_NAME",
    "PATCH_FORCE",
    "cluster_issuer_objects",
    "knative_config_objects",
    "knative_objects",
    "namespace_objects",
    "secret_objects",
]

PATCH_FORCE = {"pulumi.com/patchForce": "true"}  # take over Knative's own ConfigMaps on server-side apply
ISSUER_NAME = "xray-triage-acme"
KOURIER = "kourier.ingress.networking.knative.dev"


def namespace_objects(s: ManifestSettings) -> list[dict]:
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": meta(s.namespace, None)}]


def secret_objects(s: ManifestSettings) -> list[dict]:
    """The functions' Secret (SECRET_KEYS) and the credentials of the training Jobs retrain launches."""
    missing = [key for key in SECRET_KEYS if key not in s.secrets]
    if missing:
        raise UserError(f"manifest settings: secret values missing for {', '.join(missing)}")
    training_env = {
        "AWS_ACCESS_KEY_ID": s.secrets["minio_root_user"],
        "AWS_SECRET_ACCESS_KEY": s.secrets["minio_root_password"],
        "MLFLOW_S3_ENDPOINT_URL": s.internal_url("minio", 9000),
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta(SECRET_NAME, s.namespace),
            "type": "Opaque",
            "stringData": {key: s.secrets[key] for key in SECRET_KEYS},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta(TRAINING_ENV_SECRET, s.namespace),
            "type": "Opaque",
            "stringData": training_env,
        },
    ]


def knative_config_objects(s: ManifestSettings) -> list[dict]:
    """Settings of the installed Knative: sslip.io / own domain, Kourier, scale to zero, TLS."""

    def knative_config(name: str, data: Any) -> dict:
        return config_map(name, "knative-serving", data, annotations=dict(PATCH_FORCE))

    network = {
        "ingress-class": KOURIER,
        "external-domain-tls": "Enabled" if s.tls else "Disabled",
        "http-protocol": "Redirected" if s.tls else "Enabled",
    }
    objects = [
        knative_config("config-domain", apply_value(s.domain, lambda domain: {domain: ""})),
        knative_config("config-network", network),
        knative_config(
            "config-autoscaler",
            {"enable-scale-to-zero": "true", "scale-to-zero-grace-period": "30s", "stable-window": "60s"},
        ),
    ]
    if s.tls:
        objects.append(
            knative_config("config-certmanager", {"issuerRef": f"kind: ClusterIssuer\nname: {ISSUER_NAME}\n"})
        )
    return objects


def cluster_issuer_objects(s: ManifestSettings) -> list[dict]:
    """The Let's Encrypt issuer of the functions' certificates (HTTP-01 through Kourier)."""
    acme: dict[str, Any] = {
        "server": s.acme_server,
        "privateKeySecretRef": {"name": f"{ISSUER_NAME}-account"},
        "solvers": [{"http01": {"ingress": {"class": KOURIER}}}],
    }
    if s.acme_email:
        acme["email"] = s.acme_email
    return [
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "ClusterIssuer",
            "metadata": meta(ISSUER_NAME, None),
            "spec": {"acme": acme},
        }
    ]


def knative_objects(s: ManifestSettings) -> list[dict]:
    """What the platform sets on the installed Knative (unless left as it is) and, with TLS, its issuer."""
    objects = knative_config_objects(s) if s.configure_knative else []
    return objects + (cluster_issuer_objects(s) if s.tls else [])
