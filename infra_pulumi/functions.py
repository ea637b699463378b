"""The functions on the cluster: Knative Services (min-scale 0) with their RBAC, the Broker, a Trigger per
subscription of the topology with retries and a dead-letter sink, PingSources and the SinkBinding for K_SINK."""

from __future__ import annotations

import pulumi

from infra_pulumi.kubernetes_objects import KubernetesObjects
from infra_pulumi.manifests import FUNCTIONS, ManifestSettings, function_objects, function_url

__all__ = ["Functions"]


class Functions(KubernetesObjects):
    """Output `urls`: function name -> URL (public ones on the sslip.io / own domain)."""

    type_token = "xray-triage:infra:Functions"

    def objects_of(self, settings: ManifestSettings) -> list[dict]:
        return function_objects(settings)

    def outputs_of(self, settings: ManifestSettings) -> dict[str, pulumi.Input]:
        domain = pulumi.Output.from_input(settings.domain)
        self.urls = {fn.name: domain.apply(lambda d, fn=fn: function_url(settings, fn, d)) for fn in FUNCTIONS}
        return {"urls": self.urls}
