"""The functions as Knative Services (min-scale 0), the Broker, a Trigger per subscription of design §4
with retries and a dead-letter sink, PingSources for canary and monitor, and the SinkBinding for K_SINK."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_kubernetes as kubernetes

from infra_pulumi import manifests


class FunctionsArgs:
    """Inputs of `Functions`: the cluster's provider, the manifest settings, what must exist first."""

    def __init__(
        self,
        *,
        provider: kubernetes.Provider,
        settings: manifests.ManifestSettings,
        depends_on: Sequence[pulumi.Resource] = (),
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.depends_on = list(depends_on)


class Functions(pulumi.ComponentResource):
    """Output `urls`: function name -> URL (public ones on the sslip.io / own domain)."""

    def __init__(self, name: str, args: FunctionsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("xray-triage:infra:Functions", name, None, opts)
        s = args.settings
        self.objects = kubernetes.yaml.v2.ConfigGroup(
            f"{name}-objects",
            objs=manifests.function_objects(s),
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on),
        )
        self.urls = {
            fn.name: pulumi.Output.from_input(s.domain).apply(lambda d, fn=fn: manifests.function_url(s, fn, d))
            for fn in manifests.FUNCTIONS
        }
        self.register_outputs({"urls": self.urls})
