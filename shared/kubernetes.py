"""The one Kubernetes API client (canary's Knative patches, retrain's training Jobs): a bearer token or client
certificate over TLS, from a kubeconfig's current context or the pod's service account.

Where it connects comes from `Settings` (KUBECONFIG, KUBERNETES_SERVICE_HOST / _PORT), never from the process
environment here. The service-account folder and the httpx transport are parameters, so tests hand in their own.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from shared.config import Settings
from shared.errors import TriageError, UserError

__all__ = ["SERVICE_ACCOUNT_DIR", "KubernetesAPI", "KubernetesError"]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubernetesError(TriageError):
    """The API server was unreachable or answered non-2xx (`status_code`, None when unreachable): our side, 502."""

    status = 502
    code = "kubernetes_api_failed"

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def _tls_context(cluster: Mapping[str, Any], user: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context of a kubeconfig cluster (CA) and user (client certificate, as k3s writes them)."""
    tls = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    elif cluster.get("certificate-authority-data"):
        tls = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif cluster.get("certificate-authority"):
        tls = ssl.create_default_context(cafile=cluster["certificate-authority"])
    if user.get("client-certificate-data") and user.get("client-key-data"):
        # ssl loads a client key only from a file: a private directory (0700), removed once loaded.
        with tempfile.TemporaryDirectory(prefix="triage-kube-") as folder:
            cert_file, key_file = Path(folder) / "client.crt", Path(folder) / "client.key"
            cert_file.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key_file.touch(mode=0o600)
            key_file.write_bytes(base64.b64decode(user["client-key-data"]))
            tls.load_cert_chain(cert_file, key_file)
    elif user.get("client-certificate") and user.get("client-key"):
        tls.load_cert_chain(user["client-certificate"], user["client-key"])
    return tls


class KubernetesAPI:
    """A small Kubernetes API client: `request` answers the JSON of a 2xx, else raises `KubernetesError`.

    `namespace` is the service account's own namespace (None outside a pod).
    """

    def __init__(self, server: str, *, token: str | None = None, verify: ssl.SSLContext | bool = True,
                 transport: httpx.BaseTransport | None = None, namespace: str | None = None,
                 timeout_s: float = 15.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs: dict[str, Any] = {"transport": transport} if transport else {"verify": verify}
        self.server = server.rstrip("/")
        self.namespace = namespace
        self.client = httpx.Client(headers=headers, timeout=timeout_s, **kwargs)

    @classmethod
    def in_cluster(cls, server: str, *, service_account_dir: Path = SERVICE_ACCOUNT_DIR,
                   transport: httpx.BaseTransport | None = None, timeout_s: float = 15.0) -> KubernetesAPI:
        """`server` with the pod's service-account token, CA (when present) and namespace."""
        token_file, ca_file = service_account_dir / "token", service_account_dir / "ca.crt"
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise KubernetesError(f"cannot read {token_file} (not running in a pod?)") from exc
        try:
            namespace: str | None = (service_account_dir / "namespace").read_text().strip() or None
        except OSError:
            namespace = None
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file.is_file() else True
        return cls(server, token=token, verify=verify, transport=transport, namespace=namespace, timeout_s=timeout_s)

    @classmethod
    def from_kubeconfig(cls, path: str | Path, *, transport: httpx.BaseTransport | None = None) -> KubernetesAPI:
        """Server, CA and credentials (bearer token or client certificate data) of the current context."""
        path = Path(path)
        try:
            config = yaml.safe_load(path.read_text())
            current = config.get("current-context")
            context = next(c["context"] for c in config["contexts"] if c["name"] == current)
            cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
            user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
            return cls(cluster["server"], token=user.get("token"), verify=_tls_context(cluster, user),
                       transport=transport)
        except (OSError, yaml.YAMLError, KeyError, TypeError, StopIteration, AttributeError, ValueError,
                ssl.SSLError) as exc:
            raise UserError(f"{path}: not a usable kubeconfig ({type(exc).__name__})") from exc

    @classmethod
    def from_settings(cls, settings: Settings, *, server: str | None = None,
                      service_account_dir: Path = SERVICE_ACCOUNT_DIR,
                      transport: httpx.BaseTransport | None = None) -> KubernetesAPI:
        """KUBECONFIG's current context, else the in-cluster service account, else `server` as it is."""
        if settings.kubeconfig:
            return cls.from_kubeconfig(settings.kubeconfig, transport=transport)
        if settings.kubernetes_service_host:
            host, port = settings.kubernetes_service_host, settings.kubernetes_service_port
            return cls.in_cluster(f"https://{host}:{port}", service_account_dir=service_account_dir,
                                  transport=transport)
        if server:
            return cls(server, transport=transport)
        raise UserError("kubernetes API: set KUBECONFIG, or run inside the cluster (KUBERNETES_SERVICE_HOST)")

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON answer of `method path` (kwargs as httpx's); KubernetesError when unreachable or non-2xx."""
        try:
            response = self.client.request(method, self.server + path, **kwargs)
        except httpx.HTTPError as exc:
            raise KubernetesError(f"kubernetes API {self.server} unreachable: {type(exc).__name__}") from exc
        if not response.is_success:
            raise KubernetesError(f"kubernetes API answered {response.status_code} to {method} {path}",
                                  status_code=response.status_code)
        return response.json() if response.content else {}

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> KubernetesAPI:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
