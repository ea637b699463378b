"""Validate Kubernetes objects against real schemas; unknown kinds and unknown fields are errors.

- Core kinds: `kubernetes-validate` (the upstream OpenAPI schemas) in strict mode.
- Knative and cert-manager kinds: JSON Schema of the cloudcoil model packages from PyPI
  (cloudcoil-models-knative-serving 1.17.0.1, -knative-eventing 1.17.1.1, -cert-manager 1.17.1.0), which are
  generated from those projects' CRD OpenAPI schemas of the same release as the pinned platform versions.
  Every object schema that lists its properties is closed (additionalProperties: false), which is what
  the API server's strict field validation does with a structural CRD schema: unknown fields are rejected.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any

import jsonschema
import kubernetes_validate

KUBERNETES_VERSION = "1.33.0"  # the minor of the pinned k3s
CRD_MODELS: dict[tuple[str, str], tuple[str, str]] = {
    ("serving.knative.dev/v1", "Service"): ("cloudcoil.models.knative_serving.serving.v1", "Service"),
    ("eventing.knative.dev/v1", "Broker"): ("cloudcoil.models.knative_eventing.eventing.v1", "Broker"),
    ("eventing.knative.dev/v1", "Trigger"): ("cloudcoil.models.knative_eventing.eventing.v1", "Trigger"),
    ("sources.knative.dev/v1", "PingSource"): ("cloudcoil.models.knative_eventing.sources.v1", "PingSource"),
    ("sources.knative.dev/v1", "SinkBinding"): ("cloudcoil.models.knative_eventing.sources.v1", "SinkBinding"),
    ("cert-manager.io/v1", "ClusterIssuer"): ("cloudcoil.models.cert_manager.v1", "ClusterIssuer"),
}


def _closed(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {key: _closed(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    module_name, class_name = CRD_MODELS[(api_version, kind)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generated models shadow a few pydantic attributes
        model = getattr(importlib.import_module(module_name), class_name)
    schema = _closed(model.model_json_schema(by_alias=True, mode="validation"))
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return jsonschema.Draft202012Validator(schema)


def validation_errors(obj: dict) -> list[str]:
    """Every schema error of one object, as 'Kind/name: path: message'; empty when it is valid."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    name = f"{kind}/{obj.get('metadata', {}).get('name', '?')}"
    if (api_version, kind) in CRD_MODELS:
        errors = crd_validator(api_version, kind).iter_errors(obj)
        return [f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{name}: no schema for {api_version} {kind} (unknown kind)"]
    except kubernetes_validate.ValidationError as exc:
        return [f"{name}: {'/'.join(map(str, exc.path))}: {exc.message}"]
    return []
