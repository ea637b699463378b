"""The base of the components that apply one concern's Kubernetes objects (object store, registry, monitoring,
functions): one ConfigGroup of the objects `infra_pulumi.manifests` builds, a child of the component."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import pulumi
import pulumi_kubernetes as kubernetes

from infra_pulumi.manifests import ManifestSettings

__all__ = ["KubernetesObjects", "KubernetesObjectsArgs"]


class KubernetesObjectsArgs:
    """Inputs of a concern's component: the cluster's provider, the manifest settings, what must exist first."""

    def __init__(
        self,
        *,
        provider: kubernetes.Provider,
        settings: ManifestSettings,
        depends_on: Sequence[pulumi.Resource] = (),
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.depends_on = list(depends_on)


class KubernetesObjects(pulumi.ComponentResource):
    """Applies `objects_of(settings)` as `<name>-objects`; a subclass names its type token and its builder."""

    type_token: ClassVar[str]

    def __init__(self, name: str, args: KubernetesObjectsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(self.type_token, name, None, opts)
        children = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on)
        self.objects = kubernetes.yaml.v2.ConfigGroup(f"{name}-objects", objs=self.objects_of(args.settings),
                                                      opts=children)
        self.apply_apart(name, args.settings, children)
        self.register_outputs(self.outputs_of(args.settings))

    def objects_of(self, settings: ManifestSettings) -> list[dict]:
        raise NotImplementedError

    def apply_apart(self, name: str, settings: ManifestSettings, children: pulumi.ResourceOptions) -> None:
        """Objects that need resource options of their own, each its own resource (none unless a subclass says so).

        A ConfigGroup's options do not reach the objects inside it (pulumi/pulumi-kubernetes#2666)."""

    def outputs_of(self, settings: ManifestSettings) -> dict[str, pulumi.Input]:
        """The component's outputs (none unless a subclass says so)."""
        return {}
