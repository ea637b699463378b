"""`triage manifests`: write the platform's Kubernetes / Knative objects as YAML for `kubectl apply -f DIR`.

The objects are the ones the Pulumi program applies (`infra_pulumi.manifests`), for any cluster that already
runs Knative Serving + Eventing (and cert-manager when TLS is on). The CLI has no secret store: fresh random
secret values go only into the 0600 secrets file.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import yaml

from infra_pulumi.manifests import (
    SECRET_KEYS,
    ManifestSettings,
    function_objects,
    namespace_objects,
    platform_objects,
    secret_objects,
)
from shared.errors import UserError

__all__ = ["FILES", "add_arguments", "run", "settings_from_args", "write_manifests"]

FILES = (
    ("00-namespace.yaml", namespace_objects),
    ("10-secrets.yaml", secret_objects),
    ("20-platform.yaml", platform_objects),
    ("30-functions.yaml", function_objects),
)


def write_manifests(settings: ManifestSettings, out: Path) -> list[Path]:
    """Write the YAML files into `out` (created); each file appears whole or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".manifests-", dir=out))
    written = []
    try:
        for name, build in FILES:
            path = staging / name
            path.write_text(yaml.safe_dump_all(build(settings), sort_keys=False))
            if name == "10-secrets.yaml":
                path.chmod(0o600)
        for name, _ in FILES:
            os.replace(staging / name, out / name)
            written.append(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="directory for the YAML files (created)")
    parser.add_argument("--domain", required=True, help="Knative domain, e.g. 203.0.113.7.sslip.io or example.org")
    parser.add_argument("--image-repository", required=True, help="function images are REPOSITORY/<function>:TAG")
    parser.add_argument("--image-tag", required=True, help="pinned image tag (version, git commit or sha256:...)")
    parser.add_argument("--namespace", default="xray-triage")
    parser.add_argument("--model-uri", default="models:/xray-vit@champion")
    parser.add_argument("--max-scale", type=int, default=5)
    parser.add_argument("--target-concurrency", type=int, default=4)
    parser.add_argument("--tls", action="store_true", help="HTTPS through cert-manager (needs --acme-email)")
    parser.add_argument("--acme-email", default=None)
    parser.add_argument("--storage-class", default=None, help="storage class of the PVCs (default: the cluster's)")
    parser.add_argument(
        "--keep-knative-config",
        action="store_true",
        help="leave the cluster's Knative ConfigMaps (domain, ingress class, autoscaler) as they are",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")


def settings_from_args(args: argparse.Namespace) -> ManifestSettings:
    """Validate the CLI values through the same checks as the stack config."""
    from infra_pulumi.config import load_config

    values = {
        "key_pair": "unused",
        "admin_cidrs": "127.0.0.1/32",
        "image_repository": args.image_repository,
        "image_tag": args.image_tag,
        "namespace": args.namespace,
        "domain": args.domain,
        "model_uri": args.model_uri,
        "max_scale": str(args.max_scale),
        "target_concurrency": str(args.target_concurrency),
        "tls": "true" if args.tls else "false",
        "acme_email": args.acme_email,
    }
    cfg = load_config(values.get, "manifests", lambda key: True)
    generated = {key: secrets.token_urlsafe(24) for key in SECRET_KEYS}
    generated["minio_root_user"] = "xray-" + secrets.token_hex(6)
    generated["reviewer_tokens"] = f"reviewer:{secrets.token_urlsafe(24)}"
    return ManifestSettings.from_config(
        cfg,
        domain=cfg.domain,
        secrets=generated,
        storage_class=args.storage_class,
        expose_admin=False,  # on someone else's cluster, admin UIs stay inside (kubectl port-forward)
        configure_knative=not args.keep_knative_config,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out}: exists and is not a directory")
    files = write_manifests(settings, args.out)
    count = sum(len(build(settings)) for _, build in FILES)
    print(f"wrote {count} objects to {args.out} ({', '.join(p.name for p in files)})")
    print(f"secrets were generated into {args.out / '10-secrets.yaml'} (mode 0600): keep it out of version control")
    print(f"apply with: kubectl apply -f {args.out}")
    if args.json:
        print(json.dumps({"out": str(args.out), "files": [p.name for p in files], "objects": count}))
    return 0
