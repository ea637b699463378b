"""Platform basics on the cluster: the Kubernetes provider, the secret values (stack config, else pulumi-random),
the namespace and Secrets, Knative's settings and the ACME issuer. The other components build on `provider`,
`settings` (with the secret values) and `ready`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_kubernetes as kubernetes
import pulumi_random as random

from infra_pulumi.manifests import SECRET_KEYS, ManifestSettings, knative_objects, namespace_objects, secret_objects

__all__ = ["Platform", "PlatformArgs"]


class PlatformArgs:
    """Inputs of `Platform`: the kubeconfig (secret), the manifest settings and the secrets the stack set."""

    def __init__(
        self,
        *,
        kubeconfig: pulumi.Input[str],
        settings: ManifestSettings,
        provided_secrets: Mapping[str, pulumi.Input[str]],
    ) -> None:
        self.kubeconfig = kubeconfig
        self.settings = settings
        self.provided_secrets = dict(provided_secrets)


class Platform(pulumi.ComponentResource):
    """Outputs `provider`, `settings` (secrets filled in) and `ready` (what the other components wait for)."""

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("xray-triage:infra:Platform", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.settings = dataclasses.replace(args.settings, secrets=self._secret_values(name, args, child))
        self.provider = kubernetes.Provider(
            f"{name}-k3s",
            kubeconfig=pulumi.Output.secret(args.kubeconfig),
            enable_server_side_apply=True,
            opts=child,
        )
        with_provider = pulumi.ResourceOptions(parent=self, provider=self.provider)
        self.base = kubernetes.yaml.v2.ConfigGroup(
            f"{name}-base",
            objs=namespace_objects(self.settings) + secret_objects(self.settings),
            opts=with_provider,
        )
        self.ready: list[pulumi.Resource] = [self.base]
        knative = knative_objects(self.settings)
        if knative:
            self.knative = kubernetes.yaml.v2.ConfigGroup(
                f"{name}-knative",
                objs=knative,
                opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[self.base]),
            )
            self.ready.append(self.knative)
        self.register_outputs({})

    @staticmethod
    def _secret_values(name: str, args: PlatformArgs, child: pulumi.ResourceOptions) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key in SECRET_KEYS:
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
        return values
