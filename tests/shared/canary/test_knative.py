"""Knative traffic: the revisions found, the exact traffic block patched, a new revision of the new model."""

from __future__ import annotations

import json

import httpx
import pytest

from shared.canary.errors import CanaryError
from shared.canary.knative import KnativeTraffic
from shared.kubernetes import KubernetesAPI


def knative_api(services: dict[str, dict], revisions: dict[str, list[tuple[str, int]]], patches: list) -> KubernetesAPI:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t0ken"
        path = request.url.path
        if request.method == "PATCH":
            assert request.headers["Content-Type"] == "application/merge-patch+json"
            patches.append((path.rsplit("/", 1)[1], json.loads(request.content)))
            return httpx.Response(200, json={})
        if path.endswith("/revisions"):
            service = request.url.params["labelSelector"].split("=")[1]
            items = [{"metadata": {"name": name, "labels": {"serving.knative.dev/configurationGeneration": str(g)}}}
                     for name, g in revisions.get(service, [])]
            return httpx.Response(200, json={"items": items})
        name = path.rsplit("/", 1)[1]
        if name not in services:
            return httpx.Response(404, json={"kind": "Status"})
        return httpx.Response(200, json=services[name])

    return KubernetesAPI("https://k8s.example:6443", token="t0ken", transport=httpx.MockTransport(handle))


def test_knative_traffic_finds_the_revisions_and_patches_the_exact_traffic_block():
    services = {
        "predict": {"spec": {}, "status": {"latestReadyRevisionName": "predict-00003"}},
        "explain": {"spec": {"traffic": [{"revisionName": "explain-00001", "percent": 100, "tag": "champion"}]},
                    "status": {"latestReadyRevisionName": "explain-00002"}},
        "ingest": {"spec": {"traffic": [{"revisionName": "ingest-00004", "percent": 100, "tag": "champion"}]},
                   "status": {"latestReadyRevisionName": "ingest-00004"}},  # already promoted: nothing to do
    }
    revisions = {"predict": [("predict-00001", 1), ("predict-00002", 2), ("predict-00003", 3)]}
    patches: list = []
    traffic = KnativeTraffic(knative_api(services, revisions, patches), "xray-triage")
    found = traffic.revisions()
    assert found == {"predict": {"champion": "predict-00002", "challenger": "predict-00003"},
                     "explain": {"champion": "explain-00001", "challenger": "explain-00002"}}
    traffic.set_weight(25, found)
    assert patches == [
        ("predict", {"spec": {"traffic": [{"revisionName": "predict-00002", "percent": 75, "tag": "champion"},
                                          {"revisionName": "predict-00003", "percent": 25, "tag": "challenger"}]}}),
        ("explain", {"spec": {"traffic": [{"revisionName": "explain-00001", "percent": 75, "tag": "champion"},
                                          {"revisionName": "explain-00002", "percent": 25, "tag": "challenger"}]}}),
    ]
    patches.clear()
    traffic.set_weight(100, {"predict": found["predict"]}, promote=True)
    assert patches == [("predict", {"spec": {"traffic": [
        {"revisionName": "predict-00003", "percent": 100, "tag": "champion"}]}})]
    with pytest.raises(CanaryError, match="answered 404 to GET"):
        KnativeTraffic(knative_api({}, {}, []), "xray-triage", ["predict"]).revisions()


def test_knative_prepare_creates_a_challenger_revision_of_the_new_model_pinning_the_champion():
    template = {"spec": {"containers": [{"name": "function", "image": "repo/predict:abc",
                                         "env": [{"name": "MODEL_URI", "value": "models:/xray-vit@champion"},
                                                 {"name": "AWS_REGION", "value": "us-east-1"}]}]}}
    services = {"predict": {"spec": {"template": template}, "status": {"latestReadyRevisionName": "predict-00004"}}}
    patches: list = []
    KnativeTraffic(knative_api(services, {}, patches), "xray-triage", ["predict"],
                   model_uri="models:/xray-vit/{version}").prepare("9")
    assert patches == [("predict", {"spec": {
        "template": {"spec": {"containers": [{"name": "function", "image": "repo/predict:abc", "env": [
            {"name": "AWS_REGION", "value": "us-east-1"}, {"name": "MODEL_URI", "value": "models:/xray-vit/9"}]}]}},
        "traffic": [{"revisionName": "predict-00004", "percent": 100, "tag": "champion"}],
    }})]
    patches.clear()
    KnativeTraffic(knative_api(services, {}, patches), "xray-triage", ["predict"]).prepare("9")
    assert patches == []  # without a model URI template (the CLI after a deploy) nothing is created
