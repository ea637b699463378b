"""Stack configuration: good values load into a frozen object; every bad value names its key."""

from __future__ import annotations

import dataclasses
import json

import pytest

from infra_pulumi.config import DEFAULT_VERSIONS, InfraConfigError, load_config

GOOD = {
    "key_pair": "ops-key",
    "image_repository": "ghcr.io/example/xray-triage",
    "image_tag": "0.3.1",
    "admin_cidrs": json.dumps(["198.51.100.0/24"]),
}


def load(**changes: str | None):
    values = {**GOOD, **changes}
    values = {k: v for k, v in values.items() if v is not None}
    return load_config(values.get, "dev", lambda key: True)


def test_defaults_follow_the_design() -> None:
    cfg = load()
    assert cfg.flavor == "m1.xlarge" and cfg.image == "CC-Ubuntu24.04" and cfg.external_network == "public"
    assert cfg.node_ips == ("192.168.1.11", "192.168.1.12", "192.168.1.13")
    assert cfg.node_names[0] == "xray-triage-node1-dev"
    assert cfg.cidrs["ssh"] == ("198.51.100.0/24",)
    assert cfg.cidrs["https"] == ("0.0.0.0/0", "::/0")
    assert dict(cfg.versions) == DEFAULT_VERSIONS
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.flavor = "m1.small"  # type: ignore[misc]


def test_lists_may_be_comma_separated_and_overrides_apply() -> None:
    cfg = load(admin_cidrs="198.51.100.0/24, 203.0.113.0/24", grafana_cidrs="203.0.113.7/32", node_count="1")
    assert cfg.cidrs["mlflow"] == ("198.51.100.0/24", "203.0.113.0/24")
    assert cfg.cidrs["grafana"] == ("203.0.113.7/32",)
    assert cfg.node_names == ("xray-triage-node1-dev",)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"key_pair": None}, "key_pair"),
        ({"image_tag": None}, "image_tag"),
        ({"admin_cidrs": None}, "admin_cidrs"),
        ({"admin_cidrs": "[]"}, "admin_cidrs"),
        ({"admin_cidrs": "198.51.100.0/33"}, "admin_cidrs"),
        ({"admin_cidrs": "198.51.100.1/24"}, "admin_cidrs"),  # host bits set
        ({"admin_cidrs": "10.0.0.0/8,10.1.0.0/16"}, "admin_cidrs"),  # overlap
        ({"ssh_cidrs": "not-a-cidr"}, "ssh_cidrs"),
        ({"network_cidr": "192.168.1.0/24x"}, "network_cidr"),
        ({"network_cidr": "10.42.0.0/24"}, "network_cidr"),  # overlaps the k3s pod network
        ({"node_count": "0"}, "node_count"),
        ({"node_count": "-2"}, "node_count"),
        ({"node_count": "three"}, "node_count"),
        ({"node_count": "300"}, "node_count"),
        ({"k3s_version": "latest"}, "k3s_version"),
        ({"knative_serving_version": "^1.17"}, "knative_serving_version"),
        ({"grafana_version": ">=11"}, "grafana_version"),
        ({"minio_version": ""}, "minio_version"),
        ({"postgres_version": "16.x"}, "postgres_version"),
        ({"image_tag": "latest"}, "image_tag"),
        ({"image_repository": "ghcr.io/example/app:1.0"}, "image_repository"),
        ({"tls": "true"}, "acme_email"),
        ({"tls": "maybe"}, "tls"),
        ({"domain": "not a domain"}, "domain"),
        ({"suffix": "Bad_Suffix"}, "suffix"),
        ({"dns_nameservers": "8.8.8.8,dns.google"}, "dns_nameservers"),
        ({"pacs_stow_url": "pacs.hospital:8042"}, "pacs_stow_url"),
        ({"pacs_stow_url": "ftp://pacs/dicom-web"}, "pacs_stow_url"),
        ({"export_method": "ftp"}, "export_method"),
        ({"export_method": "cstore"}, "pacs_host"),  # C-STORE to nowhere: refused at config time
        ({"export_method": "cstore", "pacs_host": "pacs host"}, "pacs_host"),
        ({"pacs_port": "70000"}, "pacs_port"),
        ({"pacs_port": "0"}, "pacs_port"),
        ({"pacs_ae_title": "A_TITLE_LONGER_THAN_16"}, "pacs_ae_title"),
        ({"export_ae_title": "BACK\\SLASH"}, "export_ae_title"),
    ],
)
def test_bad_values_name_their_key(changes: dict, key: str) -> None:
    with pytest.raises(InfraConfigError) as excinfo:
        load(**changes)
    assert f"'xray-triage:{key}'" in excinfo.value.message


def test_missing_secret_names_the_key() -> None:
    with pytest.raises(InfraConfigError, match="xray-triage:ssh_private_key"):
        load_config(GOOD.get, "dev", lambda key: False)


def test_pinned_versions_are_accepted() -> None:
    cfg = load(k3s_version="v1.32.1+k3s2", image_tag="3f2a9c1", grafana_version="11.6.0")
    assert cfg.versions["k3s_version"] == "v1.32.1+k3s2" and cfg.image_tag == "3f2a9c1"


def test_the_example_stack_loads_and_documents_every_key() -> None:
    import re
    from pathlib import Path

    import yaml

    from infra_pulumi.config import ADMIN_SERVICES, OPTIONAL_SECRET_KEYS, PUBLIC_SERVICES, REQUIRED_SECRET_KEYS

    path = Path(__file__).resolve().parents[2] / "Pulumi.example.yaml"
    text = path.read_text()
    values = {
        key.split(":", 1)[1]: json.dumps(value) if isinstance(value, list) else str(value)
        for key, value in yaml.safe_load(text)["config"].items()
    }
    cfg = load_config(values.get, "dev", lambda key: True)
    assert cfg.node_count == 3 and cfg.key_pair == "my-chameleon-key"
    source = (Path(__file__).resolve().parents[2] / "infra_pulumi" / "config.py").read_text()
    read_keys = set(re.findall(r'get\("(\w+)"\)', source)) | set(re.findall(r'_int\(get, "(\w+)"', source))
    read_keys |= set(DEFAULT_VERSIONS) | {f"{s}_cidrs" for s in ADMIN_SERVICES + PUBLIC_SERVICES}
    read_keys |= set(REQUIRED_SECRET_KEYS + OPTIONAL_SECRET_KEYS) | {"public_cidrs", "admin_cidrs"}
    undocumented = sorted(key for key in read_keys if key not in text)
    assert undocumented == []


def test_the_pacs_destination_reaches_the_export_function() -> None:
    from infra_pulumi.config import OPTIONAL_SECRET_KEYS
    from infra_pulumi.manifests import all_objects
    from infra_pulumi.manifests.settings import ManifestSettings

    assert load().pacs_stow_url == ""  # unset: export skips (counted) rather than dead-lettering every upload
    cfg = load(pacs_stow_url="https://pacs.hospital.example/dicom-web")
    settings = ManifestSettings.from_config(cfg, domain="example.org", secrets=dict.fromkeys(OPTIONAL_SECRET_KEYS, "s"))
    export = next(o for o in all_objects(settings) if o["kind"] == "Service" and o["metadata"]["name"] == "export")
    env = {e["name"]: e.get("value") for e in export["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PACS_STOW_URL"] == "https://pacs.hospital.example/dicom-web"


def test_the_cstore_destination_reaches_the_export_function() -> None:
    from infra_pulumi.config import OPTIONAL_SECRET_KEYS
    from infra_pulumi.manifests import all_objects
    from infra_pulumi.manifests.settings import ManifestSettings
    from shared.config import ExportSettings

    cfg = load(export_method="cstore", pacs_host="10.20.0.5", pacs_port="104", pacs_ae_title="HOSP_PACS",
               export_ae_title="TRIAGE_AI")
    settings = ManifestSettings.from_config(cfg, domain="example.org", secrets=dict.fromkeys(OPTIONAL_SECRET_KEYS, "s"))
    export = next(o for o in all_objects(settings) if o["kind"] == "Service" and o["metadata"]["name"] == "export")
    env = {e["name"]: e.get("value") for e in export["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {k: env[k] for k in ("EXPORT_METHOD", "PACS_HOST", "PACS_PORT", "PACS_AE_TITLE", "EXPORT_AE_TITLE")} == {
        "EXPORT_METHOD": "cstore", "PACS_HOST": "10.20.0.5", "PACS_PORT": "104", "PACS_AE_TITLE": "HOSP_PACS",
        "EXPORT_AE_TITLE": "TRIAGE_AI"}
    # The function reads them back as the C-STORE destination (the env a Knative Service would give it).
    export_settings = ExportSettings.from_env({k: v for k, v in env.items() if v is not None})
    destination = (export_settings.method, export_settings.pacs_host, export_settings.pacs_port)
    assert destination == ("cstore", "10.20.0.5", 104)
    assert (export_settings.pacs_ae_title, export_settings.calling_ae_title) == ("HOSP_PACS", "TRIAGE_AI")
    assert export_settings.configured


def test_the_default_export_env_is_stow_and_parses() -> None:
    from infra_pulumi.config import OPTIONAL_SECRET_KEYS
    from infra_pulumi.manifests import all_objects
    from infra_pulumi.manifests.settings import ManifestSettings
    from shared.config import ExportSettings

    cfg = load()
    assert (cfg.export_method, cfg.pacs_host, cfg.pacs_port, cfg.pacs_ae_title) == ("stow", "", 4242, "ORTHANC")
    settings = ManifestSettings.from_config(cfg, domain="example.org", secrets=dict.fromkeys(OPTIONAL_SECRET_KEYS, "s"))
    export = next(o for o in all_objects(settings) if o["kind"] == "Service" and o["metadata"]["name"] == "export")
    env = {e["name"]: e["value"] for e in export["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    export_settings = ExportSettings.from_env(env)  # empty PACS_HOST / PACS_STOW_URL must not be a config error
    assert export_settings.method == "stow" and not export_settings.configured
