"""Stack configuration, read once into a frozen object and validated before any resource is created.

Every key lives under the project namespace (`xray-triage:<key>` in `Pulumi.<stack>.yaml`);
`Pulumi.example.yaml` documents each one. Secrets are read with `get_secret` and stay `pulumi.Output`s.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.config import EXPORT_METHODS
from shared.errors import UserError
from shared.names import AE_TITLE

PROJECT = "xray-triage"

# Every version the platform installs. A version must name one release: no "latest", ranges or wildcards.
DEFAULT_VERSIONS: dict[str, str] = {
    "k3s_version": "v1.33.5+k3s1",
    "knative_serving_version": "v1.17.0",
    "knative_eventing_version": "v1.17.1",
    "kourier_version": "v1.17.0",
    "cert_manager_version": "v1.17.1",
    "minio_version": "RELEASE.2025-04-22T22-12-26Z",
    "minio_mc_version": "RELEASE.2025-04-16T18-13-26Z",
    "mlflow_version": "v3.1.1",
    "postgres_version": "16.6",
    "prometheus_version": "v3.1.0",
    "grafana_version": "11.5.1",
}
# The k3s pod and service networks: the private network must not overlap them, or routing breaks.
K3S_CLUSTER_CIDR = "10.42.0.0/16"
K3S_SERVICE_CIDR = "10.43.0.0/16"

REQUIRED_KEYS = ("key_pair", "image_repository", "image_tag", "admin_cidrs")
REQUIRED_SECRET_KEYS = ("ssh_private_key",)
# Secrets that are generated with pulumi-random when the stack does not set them.
OPTIONAL_SECRET_KEYS = (
    "minio_root_user",
    "minio_root_password",
    "webhook_token",
    "deid_secret",  # the keyed hash of replaced DICOM UIDs (preprocess, ingest)
    "log_ref_secret",  # the keyed hash by which logs name objects (every function and the DICOM receiver)
    "db_password",
    "grafana_admin_password",
    "reviewer_tokens",
)
# Per-service CIDR lists: SSH, the Kubernetes API and the admin UIs default to admin_cidrs; HTTP(S) to public_cidrs.
ADMIN_SERVICES = ("ssh", "kube_api", "minio", "mlflow", "prometheus", "grafana")
PUBLIC_SERVICES = ("https",)

_PINNED = re.compile(
    r"^(v?\d+(\.\d+){1,3}([-+][0-9A-Za-z][0-9A-Za-z.+-]*)?"  # 1.2.3, v1.33.5+k3s1, 16.6
    r"|RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z)$"  # MinIO's release tags
)
_IMAGE_TAG = re.compile(r"^(v?\d+(\.\d+){1,3}([-+][0-9A-Za-z.+-]+)?|[0-9a-f]{7,40}|sha256:[0-9a-f]{64})$")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")


class InfraConfigError(UserError):
    """A stack configuration value that is missing or wrong; the message names the key."""

    code = "invalid_config"


@dataclass(frozen=True)
class InfraConfig:
    """The validated, non-secret stack configuration (secrets live in `StackSecrets`)."""

    suffix: str
    key_pair: str
    image_repository: str
    image_tag: str
    ssh_user: str = "cc"
    external_network: str = "public"
    flavor: str = "m1.xlarge"
    image: str = "CC-Ubuntu24.04"
    node_count: int = 3
    network_cidr: str = "192.168.1.0/24"
    first_node_host: int = 11  # node1 = 192.168.1.11, node2 = .12, ...
    dns_nameservers: tuple[str, ...] = ("8.8.8.8", "8.8.4.4")
    volume_size_gb: int = 100
    cidrs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # service -> allowed source CIDRs
    versions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_VERSIONS))
    namespace: str = "xray-triage"
    domain: str | None = None  # None: <floating ip>.sslip.io
    tls: bool = False
    acme_email: str | None = None
    acme_server: str = "https://acme-v02.api.letsencrypt.org/directory"
    model_uri: str = "models:/xray-vit@champion"
    max_scale: int = 5
    target_concurrency: int = 4
    # The DICOM receiver: its AE title and the modalities' calling AE titles it accepts (empty: any); its port is
    # open only to cidrs["dicom"] (`dicom_cidrs`, the hospital's networks; none by default: closed).
    dicom_ae_title: str = "XRAYTRIAGE"
    dicom_allowed_aes: tuple[str, ...] = ()
    # Where export returns the SR and the heatmap: the hospital PACS's DICOMweb base (unset: export skips, counted).
    pacs_stow_url: str = ""
    # Or by C-STORE (export_method cstore): the PACS's SCP (host, port, AE title) and export's calling AE title.
    export_method: str = "stow"
    pacs_host: str = ""
    pacs_port: int = 4242
    pacs_ae_title: str = "ORTHANC"
    export_ae_title: str = "XRAYTRIAGE"

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(f"{PROJECT}-node{i + 1}-{self.suffix}" for i in range(self.node_count))

    @property
    def node_ips(self) -> tuple[str, ...]:
        net = ipaddress.ip_network(self.network_cidr)
        return tuple(str(net.network_address + self.first_node_host + i) for i in range(self.node_count))


Getter = Callable[[str], str | None]


def _error(key: str, problem: str) -> InfraConfigError:
    return InfraConfigError(f"config key '{PROJECT}:{key}': {problem}")


def _int(get: Getter, key: str, default: int, minimum: int) -> int:
    raw = get(key)
    if raw in (None, ""):
        return default
    try:
        value = int(str(raw))
    except ValueError:
        raise _error(key, f"{raw!r} is not a whole number") from None
    if value < minimum:
        raise _error(key, f"{value} is below the minimum {minimum}")
    return value


def _list(get: Getter, key: str, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """A list value: a YAML list in the stack file (Pulumi stores it as JSON) or a comma-separated string."""
    raw = get(key)
    if raw in (None, ""):
        return default
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = [part.strip() for part in str(raw).split(",") if part.strip()]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _error(key, "must be a list of strings")
    return tuple(value)


def _cidrs(key: str, values: tuple[str, ...]) -> tuple[str, ...]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=True))
        except ValueError as exc:
            raise _error(key, f"{value!r} is not a CIDR ({exc})") from None
    for i, a in enumerate(networks):
        for b in networks[i + 1 :]:
            if a.version == b.version and a.overlaps(b):
                raise _error(key, f"CIDRs {a} and {b} overlap")
    return tuple(str(n) for n in networks)


def _ae_titles(key: str, values: tuple[str, ...]) -> tuple[str, ...]:
    """DICOM AE titles: 1 to 16 printable ASCII characters, no backslash (PS3.5), spaces trimmed."""
    titles = tuple(value.strip() for value in values)
    for title in titles:
        if not AE_TITLE.fullmatch(title):
            raise _error(key, f"{title!r} is not an AE title (1 to 16 printable ASCII characters, no backslash)")
    return titles


def load_config(get: Getter, stack: str, has_secret: Callable[[str], bool]) -> InfraConfig:
    """Validate every key; raise `InfraConfigError` naming the first bad key. Creates nothing."""
    for key in REQUIRED_KEYS:
        if get(key) in (None, ""):
            raise _error(key, "is required but not set (see Pulumi.example.yaml)")
    for key in REQUIRED_SECRET_KEYS:
        if not has_secret(key):
            raise _error(key, f"is required; set it with `pulumi config set --secret {key} ...`")

    suffix = get("suffix") or stack
    if not _NAME.match(suffix):
        raise _error("suffix", f"{suffix!r} must be lowercase letters, digits and '-' (at most 32)")
    node_count = _int(get, "node_count", 3, minimum=1)
    network_cidr = _cidrs("network_cidr", (get("network_cidr") or "192.168.1.0/24",))[0]
    network = ipaddress.ip_network(network_cidr)
    if network.version != 4:
        raise _error("network_cidr", "must be an IPv4 network")
    for cluster_key, cluster_cidr in (("k3s cluster", K3S_CLUSTER_CIDR), ("k3s service", K3S_SERVICE_CIDR)):
        if network.overlaps(ipaddress.ip_network(cluster_cidr)):
            raise _error("network_cidr", f"{network_cidr} overlaps the {cluster_key} network {cluster_cidr}")
    first_host = _int(get, "first_node_host", 11, minimum=2)  # .1 is the router
    if first_host + node_count >= network.num_addresses - 1:
        raise _error("node_count", f"{node_count} nodes from host {first_host} do not fit in {network_cidr}")

    admin = _cidrs("admin_cidrs", _list(get, "admin_cidrs", ()) or ())
    if not admin:
        raise _error("admin_cidrs", "must list at least one CIDR (the operators' addresses)")
    public = _cidrs("public_cidrs", _list(get, "public_cidrs", ("0.0.0.0/0", "::/0")) or ())
    cidrs: dict[str, tuple[str, ...]] = {}
    for service in ADMIN_SERVICES + PUBLIC_SERVICES:
        key = f"{service}_cidrs"
        default = public if service in PUBLIC_SERVICES else admin
        cidrs[service] = _cidrs(key, _list(get, key, default) or ())
    cidrs["dicom"] = _cidrs("dicom_cidrs", _list(get, "dicom_cidrs", ()) or ())  # never a default: hospitals only
    dicom_ae_title, *_ = _ae_titles("dicom_ae_title", (get("dicom_ae_title") or "XRAYTRIAGE",))
    dicom_allowed_aes = _ae_titles("dicom_allowed_aes", _list(get, "dicom_allowed_aes", ()) or ())
    pacs_stow_url = (get("pacs_stow_url") or "").strip()
    if pacs_stow_url and not re.match(r"^https?://[^\s/]+(/\S*)?$", pacs_stow_url):
        raise _error("pacs_stow_url", f"{pacs_stow_url!r} is not an http(s) URL (the PACS's DICOMweb base)")
    export_method = (get("export_method") or "stow").strip()
    if export_method not in EXPORT_METHODS:
        raise _error("export_method", f"{export_method!r} is not one of {', '.join(EXPORT_METHODS)}")
    pacs_host = (get("pacs_host") or "").strip()
    if pacs_host and not _HOST.match(pacs_host):
        raise _error("pacs_host", f"{pacs_host!r} is not a host name or IP address (the PACS's C-STORE SCP)")
    if export_method == "cstore" and not pacs_host:
        raise _error("pacs_host", "is required when export_method is cstore (the PACS's C-STORE SCP)")
    pacs_port = _int(get, "pacs_port", 4242, minimum=1)
    if pacs_port > 65535:
        raise _error("pacs_port", f"{pacs_port} is not a port number")
    pacs_ae_title, *_ = _ae_titles("pacs_ae_title", (get("pacs_ae_title") or "ORTHANC",))
    export_ae_title, *_ = _ae_titles("export_ae_title", (get("export_ae_title") or "XRAYTRIAGE",))

    versions = dict(DEFAULT_VERSIONS)
    for key in DEFAULT_VERSIONS:
        raw = get(key)
        if raw is not None:
            versions[key] = raw.strip()
        if not _PINNED.match(versions[key]):
            raise _error(key, f"{versions[key]!r} is not a pinned version (expected e.g. {DEFAULT_VERSIONS[key]!r})")

    image_tag = str(get("image_tag")).strip()
    if not _IMAGE_TAG.match(image_tag):
        raise _error("image_tag", f"{image_tag!r} is not pinned: use a version, a git commit or a sha256 digest")
    image_repository = str(get("image_repository")).strip()
    if ":" in image_repository.rsplit("/", 1)[-1] or not re.match(r"^[a-z0-9.\-_/:]+$", image_repository):
        raise _error("image_repository", f"{image_repository!r} must be a repository without tag, e.g. ghcr.io/org/app")

    tls = (get("tls") or "false").strip().lower()
    if tls not in ("true", "false"):
        raise _error("tls", f"{tls!r} must be true or false")
    acme_email = get("acme_email") or None
    if tls == "true" and not acme_email:
        raise _error("acme_email", "is required when tls is true (the ACME account's contact)")
    domain = get("domain") or None
    if domain is not None and not re.match(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,}$", domain):
        raise _error("domain", f"{domain!r} is not a DNS domain")
    namespace = get("namespace") or "xray-triage"
    if not _NAME.match(namespace):
        raise _error("namespace", f"{namespace!r} is not a Kubernetes namespace name")
    dns = _list(get, "dns_nameservers", ("8.8.8.8", "8.8.4.4")) or ()
    for server in dns:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise _error("dns_nameservers", f"{server!r} is not an IP address") from None

    return InfraConfig(
        suffix=suffix,
        key_pair=str(get("key_pair")),
        image_repository=image_repository,
        image_tag=image_tag,
        ssh_user=get("ssh_user") or "cc",
        external_network=get("external_network") or "public",
        flavor=get("flavor") or "m1.xlarge",
        image=get("image") or "CC-Ubuntu24.04",
        node_count=node_count,
        network_cidr=network_cidr,
        first_node_host=first_host,
        dns_nameservers=dns,
        volume_size_gb=_int(get, "volume_size_gb", 100, minimum=10),
        cidrs=cidrs,
        versions=versions,
        namespace=namespace,
        domain=domain,
        tls=tls == "true",
        acme_email=acme_email,
        acme_server=get("acme_server") or "https://acme-v02.api.letsencrypt.org/directory",
        model_uri=get("model_uri") or "models:/xray-vit@champion",
        max_scale=_int(get, "max_scale", 5, minimum=1),
        target_concurrency=_int(get, "target_concurrency", 4, minimum=1),
        dicom_ae_title=dicom_ae_title,
        dicom_allowed_aes=dicom_allowed_aes,
        pacs_stow_url=pacs_stow_url,
        export_method=export_method,
        pacs_host=pacs_host,
        pacs_port=pacs_port,
        pacs_ae_title=pacs_ae_title,
        export_ae_title=export_ae_title,
    )


@dataclass(frozen=True)
class StackSecrets:
    """Secret config values as `pulumi.Output`s (None: generated by pulumi-random in the program)."""

    ssh_private_key: Any
    provided: Mapping[str, Any]


def from_pulumi() -> tuple[InfraConfig, StackSecrets]:
    """Read and validate the current stack's configuration (the one place the program reads config)."""
    import pulumi

    cfg = pulumi.Config(PROJECT)
    secret_values = {key: cfg.get_secret(key) for key in REQUIRED_SECRET_KEYS + OPTIONAL_SECRET_KEYS}

    def get(key: str) -> str | None:
        if key in secret_values:
            raise AssertionError(f"secret key {key} must not be read in clear")
        return cfg.get(key)

    config = load_config(get, pulumi.get_stack(), lambda key: secret_values.get(key) is not None)
    provided = {key: value for key, value in secret_values.items() if value is not None and key in OPTIONAL_SECRET_KEYS}
    return config, StackSecrets(ssh_private_key=secret_values["ssh_private_key"], provided=provided)
