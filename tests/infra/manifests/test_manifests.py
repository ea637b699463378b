"""Every Kubernetes / Knative object of the platform is valid against the real schemas."""

from __future__ import annotations

import copy

from tests.infra.kubernetes_schemas import validation_errors
from tests.infra.manifests.example import by_kind, knative_services


def test_every_object_validates_against_its_schema(objects: list[dict]) -> None:
    errors = [error for obj in objects for error in validation_errors(obj)]
    assert errors == []
    kinds = {o["kind"] for o in objects}
    assert {"Service", "Trigger", "Broker", "PingSource", "SinkBinding", "ClusterIssuer", "Deployment", "Job"} <= kinds


def test_an_unknown_field_fails_validation(objects: list[dict]) -> None:
    knative = copy.deepcopy(knative_services(objects)[0])
    knative["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo
    assert any("readinesProbe" in e for e in validation_errors(knative))
    trigger = copy.deepcopy(by_kind(objects, "Trigger")[0])
    trigger["spec"]["delivery"]["deadLetterSnk"] = trigger["spec"]["delivery"].pop("deadLetterSink")
    assert any("deadLetterSnk" in e for e in validation_errors(trigger))
    deployment = copy.deepcopy(by_kind(objects, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert validation_errors(deployment)
    issuer = copy.deepcopy(by_kind(objects, "ClusterIssuer")[0])
    issuer["spec"]["acme"]["emial"] = "x@example.org"
    assert validation_errors(issuer)


def test_an_unknown_kind_or_a_wrong_type_fails_validation() -> None:
    assert validation_errors({"apiVersion": "v1", "kind": "Servce", "metadata": {"name": "x"}})
    assert validation_errors({"apiVersion": "serving.knative.dev/v2", "kind": "Service", "metadata": {"name": "x"}})
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": {"backoffLimit": "six"}}
    assert validation_errors(job)
