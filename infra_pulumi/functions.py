"""The functions on the cluster: Knative Services (min-scale 0) with their RBAC, the Broker, a Trigger per
subscription of the topology with retries and a dead-letter sink, PingSources and the SinkBinding for K_SINK.

Who owns what on the model-serving Services (predict, explain, ingest — the canary's `CANARY_SERVICES`):
Pulumi owns the Service and its `spec.template` (image, resources, env with MODEL_URI the registry alias
`models:/xray-vit@champion`, which a new revision resolves at start, so a re-apply after a promotion serves the
promoted champion); the canary (`shared/canary/knative.py`) owns `spec.traffic`, which the manifests never set.
Those Services are therefore applied one resource each, apart from the ConfigGroup, with `ignore_changes` on
`spec.traffic` (no diff, and no refresh writes the canary's split into the state) and `pulumi.com/patchForce`
(the template is Pulumi's, even after the canary's merge patch of a challenger's MODEL_URI).
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as kubernetes

from infra_pulumi.kubernetes_objects import KubernetesObjects
from infra_pulumi.manifests import FUNCTIONS, ManifestSettings, function_objects, function_url, knative_service
from infra_pulumi.manifests.basics import PATCH_FORCE
from shared.config import CANARY_SERVICES

__all__ = ["CANARY_OWNED_FIELDS", "MODEL_SERVING", "Functions"]

MODEL_SERVING = frozenset(CANARY_SERVICES)  # the Services a model version is a revision of
CANARY_OWNED_FIELDS = ("spec.traffic",)  # what the canary moves; the template stays Pulumi's


def _is_model_service(obj: dict) -> bool:
    return obj["kind"] == "Service" and obj["metadata"]["name"] in MODEL_SERVING


class Functions(KubernetesObjects):
    """Outputs `urls`: function name -> URL (public ones on the sslip.io / own domain); `model_services`: name ->
    the Knative Service resource of each model-serving function."""

    type_token = "xray-triage:infra:Functions"

    def objects_of(self, settings: ManifestSettings) -> list[dict]:
        return [obj for obj in function_objects(settings) if not _is_model_service(obj)]

    def apply_apart(self, name: str, settings: ManifestSettings, children: pulumi.ResourceOptions) -> None:
        canary_owned = pulumi.ResourceOptions(ignore_changes=list(CANARY_OWNED_FIELDS))
        self.model_services: dict[str, kubernetes.apiextensions.CustomResource] = {}
        for fn in FUNCTIONS:
            if fn.name not in MODEL_SERVING:
                continue
            service = knative_service(settings, fn)
            metadata = service["metadata"]
            metadata = {**metadata, "annotations": {**metadata.get("annotations", {}), **PATCH_FORCE}}
            self.model_services[fn.name] = kubernetes.apiextensions.CustomResource(
                f"{name}-{fn.name}",
                api_version=service["apiVersion"],
                kind=service["kind"],
                metadata=metadata,
                spec=service["spec"],
                opts=pulumi.ResourceOptions.merge(children, canary_owned),
            )

    def outputs_of(self, settings: ManifestSettings) -> dict[str, pulumi.Input]:
        domain = pulumi.Output.from_input(settings.domain)
        self.urls = {fn.name: domain.apply(lambda d, fn=fn: function_url(settings, fn, d)) for fn in FUNCTIONS}
        return {"urls": self.urls}
