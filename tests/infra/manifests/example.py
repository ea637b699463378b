"""The manifest settings the object tests build from (TLS on, pinned to a data node) and lookups by kind."""

from __future__ import annotations

from infra_pulumi.manifests import DATA_NODE_LABEL, SECRET_KEYS, ManifestSettings

SETTINGS = ManifestSettings(
    domain="203.0.113.10.sslip.io",
    image_repository="ghcr.io/example/xray-triage",
    image_tag="0.3.1",
    secrets={key: f"value-of-{key}" for key in SECRET_KEYS},
    tls=True,
    acme_email="ops@example.org",
    data_node_selector={DATA_NODE_LABEL: "true"},
    storage_class="local-path",
)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def knative_services(objects: list[dict]) -> list[dict]:
    return [o for o in by_kind(objects, "Service") if o["apiVersion"] == "serving.knative.dev/v1"]
