"""The project's platform objects on the cluster: namespace, secrets, Knative settings, TLS issuer, MinIO,
PostgreSQL + MLflow, Prometheus + Grafana — applied with pulumi-kubernetes from `manifests.py`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_kubernetes as kubernetes
import pulumi_random as random

from infra_pulumi import manifests


class PlatformArgs:
    """Inputs of `Platform`: the kubeconfig (secret), the manifest settings and the secrets the stack set."""

    def __init__(
        self,
        *,
        kubeconfig: pulumi.Input[str],
        settings: manifests.ManifestSettings,
        provided_secrets: Mapping[str, pulumi.Input[str]],
    ) -> None:
        self.kubeconfig = kubeconfig
        self.settings = settings
        self.provided_secrets = dict(provided_secrets)


class Platform(pulumi.ComponentResource):
    """Outputs `provider` (for the functions) and `ready` (the platform objects, to depend on)."""

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("xray-triage:infra:Platform", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        values: dict[str, Any] = {}
        for key in manifests.SECRET_KEYS:
            if key in args.provided_secrets:
                values[key] = pulumi.Output.secret(args.provided_secrets[key])
                continue
            # pulumi-random keeps the value in the encrypted state; the explicit secret() keeps it marked
            # secret in every object built from it, whatever the engine does with additional outputs.
            generated = random.RandomPassword(f"{name}-{key.replace('_', '-')}", length=32, special=False, opts=child)
            if key == "minio_root_user":
                values[key] = pulumi.Output.secret(generated.result.apply(lambda v: "xray-" + v[:12].lower()))
            elif key == "reviewer_tokens":
                values[key] = pulumi.Output.secret(generated.result.apply(lambda v: f"reviewer:{v}"))
            else:
                values[key] = pulumi.Output.secret(generated.result)
        settings = dataclasses.replace(args.settings, secrets=values)

        self.provider = kubernetes.Provider(
            f"{name}-k3s",
            kubeconfig=pulumi.Output.secret(args.kubeconfig),
            enable_server_side_apply=True,
            opts=child,
        )
        with_provider = pulumi.ResourceOptions(parent=self, provider=self.provider)
        self.base = kubernetes.yaml.v2.ConfigGroup(
            f"{name}-base",
            objs=manifests.namespace_objects(settings) + manifests.secret_objects(settings),
            opts=with_provider,
        )
        self.objects = kubernetes.yaml.v2.ConfigGroup(
            f"{name}-objects",
            objs=manifests.platform_objects(settings),
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[self.base]),
        )
        self.register_outputs({})
