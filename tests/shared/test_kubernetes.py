"""The one Kubernetes API client: kubeconfig contexts (bearer token, k3s client certificates, broken files)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.errors import UserError
from shared.kubernetes import KubernetesAPI

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_kubeconfig_with_a_bearer_token_and_a_broken_one(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "current-context": "ci",
        "contexts": [{"name": "ci", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "abc"}}],
    }))
    api = KubernetesAPI.from_kubeconfig(path)
    assert api.server == "https://10.0.0.1:6443" and api.client.headers["Authorization"] == "Bearer abc"
    path.write_text("current-context: nowhere\ncontexts: []\n")
    with pytest.raises(UserError, match="kubeconfig: not a usable kubeconfig"):
        KubernetesAPI.from_kubeconfig(path)


def self_signed_pem() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k3s-test")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_kubeconfig_with_client_certificate_data_like_k3s(tmp_path):
    cert, key = self_signed_pem()
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "current-context": "default",
        "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
        "clusters": [{"name": "default", "cluster": {"server": "https://203.0.113.7:6443",
                                                     "certificate-authority-data": b64(cert)}}],
        "users": [{"name": "default", "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
    }))
    api = KubernetesAPI.from_kubeconfig(path)
    assert api.server == "https://203.0.113.7:6443" and "Authorization" not in api.client.headers


def test_a_kubeconfig_with_a_corrupt_ca_names_the_file(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://x", "certificate-authority-data": "bm90IGEgY2E="}}],
        "users": [{"name": "u", "user": {}}],
    }))
    with pytest.raises(UserError, match=f"{path}: not a usable kubeconfig"):
        KubernetesAPI.from_kubeconfig(path)
