"""Pulumi and the canary own different fields of the model-serving Knative Services: a `pulumi up` after a
promotion must not roll it back (issue 13, item 7)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pulumi.runtime import mocks as pulumi_mocks

from infra_pulumi.functions import CANARY_OWNED_FIELDS, MODEL_SERVING
from infra_pulumi.manifests import FUNCTIONS
from shared.canary.knative import KnativeTraffic
from shared.config import CANARY_SERVICES
from tests.infra.test_program import BASE_CONFIG, STACK_SECRETS, config_group_objects, run_program

SERVICE_TYPE = "kubernetes:serving.knative.dev/v1:Service"
ALIAS = "models:/xray-vit@champion"


@pytest.fixture(scope="module")
def deployed() -> tuple[Any, dict[tuple[str, str], list[str]]]:
    """The program under mocks, with the `ignoreChanges` each registration sends the engine."""
    ignored: dict[tuple[str, str], list[str]] = {}
    register = pulumi_mocks.MockMonitor.RegisterResource

    def recording(monitor: Any, request: Any) -> Any:
        ignored[(request.type, request.name)] = list(request.ignoreChanges)
        return register(monitor, request)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pulumi_mocks.MockMonitor, "RegisterResource", recording)
        mocks, _ = run_program(BASE_CONFIG, STACK_SECRETS)
    return mocks, ignored


def _model_services(mocks: Any) -> dict[str, dict]:
    return {r.inputs["metadata"]["name"]: r.inputs for r in mocks.of_type(SERVICE_TYPE)}


def _env(service: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in service["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_model_serving_services_are_the_canarys(deployed) -> None:
    assert MODEL_SERVING == set(CANARY_SERVICES) == {"predict", "explain", "ingest"}
    mocks, _ = deployed
    assert set(_model_services(mocks)) == MODEL_SERVING
    objects = config_group_objects(mocks, "functions-objects")
    in_group = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    assert in_group == {f.name for f in FUNCTIONS} - MODEL_SERVING  # each Service applied exactly once


def test_model_serving_services_ignore_the_traffic_and_only_they_do(deployed) -> None:
    mocks, ignored = deployed
    for resource in mocks.of_type(SERVICE_TYPE):
        assert ignored[(SERVICE_TYPE, resource.name)] == ["spec.traffic"], resource.name
    assert CANARY_OWNED_FIELDS == ("spec.traffic",)
    others = {key: fields for key, fields in ignored.items() if key[0] != SERVICE_TYPE}
    assert others and all(fields == [] for fields in others.values())  # the ConfigGroup of the rest included


def test_pulumi_takes_the_template_back_but_never_sets_traffic(deployed) -> None:
    mocks, _ = deployed
    for name, service in _model_services(mocks).items():
        assert service["metadata"]["annotations"]["pulumi.com/patchForce"] == "true", name
        assert "traffic" not in service["spec"], name  # so Pulumi's field manager never owns spec.traffic
    for obj in config_group_objects(mocks, "functions-objects"):
        if obj["kind"] == "Service":
            assert "traffic" not in obj["spec"] and "pulumi.com/patchForce" not in obj["metadata"].get(
                "annotations", {})


def test_the_manifests_serve_the_champion_alias(deployed) -> None:
    mocks, _ = deployed
    for name, service in _model_services(mocks).items():
        assert _env(service)["MODEL_URI"] == ALIAS, name


class _RecordingAPI:
    """The Kubernetes API the canary talks to: one live Service (as Pulumi applied it) and the patches sent."""

    def __init__(self, service: dict) -> None:
        self.live = {**copy.deepcopy(service), "status": {"latestReadyRevisionName": "predict-00001"}}
        self.patches: list[dict] = []

    def request(self, method: str, path: str, **kwargs: Any) -> dict:
        if method == "PATCH":
            self.patches.append(json.loads(kwargs["content"]))
        return self.live


def _leaf_paths(patch: dict, prefix: str = "") -> set[str]:
    """The fields a merge patch sets: dicts are merged key by key, anything else (lists too) replaced whole."""
    paths: set[str] = set()
    for key, value in patch.items():
        path = f"{prefix}{key}"
        paths |= _leaf_paths(value, f"{path}.") if isinstance(value, dict) else {path}
    return paths


def test_a_pulumi_up_after_a_promotion_does_not_roll_it_back(deployed) -> None:
    """Each field a canary and its promotion patch is either ignored by Pulumi (the traffic) or a template field
    whose Pulumi value differs only in MODEL_URI, which Pulumi sets to the alias the promotion moved."""
    mocks, _ = deployed
    applied = _model_services(mocks)["predict"]
    api = _RecordingAPI(applied)
    traffic = KnativeTraffic(api, "xray-triage", ["predict"], model_uri="models:/xray-vit/{version}")
    traffic.prepare("7")
    traffic.set_weight(50, {"predict": {"champion": "predict-00001", "challenger": "predict-00002"}})
    traffic.set_weight(100, {"predict": {"champion": "predict-00001", "challenger": "predict-00002"}}, promote=True)
    assert len(api.patches) == 3
    moved = set().union(*(_leaf_paths(p) for p in api.patches))
    assert moved == {"spec.traffic", "spec.template.spec.containers"}
    assert moved - set(CANARY_OWNED_FIELDS) == {"spec.template.spec.containers"}
    (containers,) = [p["spec"]["template"]["spec"]["containers"] for p in api.patches if "template" in p["spec"]]
    ours = applied["spec"]["template"]["spec"]["containers"]
    strip = [{**c, "env": [e for e in c["env"] if e["name"] != "MODEL_URI"]} for c in containers]
    assert strip == [{**c, "env": [e for e in c["env"] if e["name"] != "MODEL_URI"]} for c in ours]
    assert {e["name"]: e["value"] for e in containers[0]["env"] if "value" in e}["MODEL_URI"] == "models:/xray-vit/7"
    assert _env(applied)["MODEL_URI"] == ALIAS  # what a re-apply writes back: the champion, i.e. version 7
