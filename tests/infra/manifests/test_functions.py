"""The functions' Knative Services: scale to zero, limits, secrets by reference, the topology's env contract."""

from __future__ import annotations

from infra_pulumi import manifests
from shared import topology
from tests.infra.manifests.example import SETTINGS, knative_services


def test_functions_scale_to_zero_with_limits_and_secret_references(objects: list[dict]) -> None:
    services = {s["metadata"]["name"]: s for s in knative_services(objects)}
    assert set(services) == {f.name for f in manifests.FUNCTIONS}
    for service in services.values():
        annotations = service["spec"]["template"]["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/min-scale"] == "0"
        assert int(annotations["autoscaling.knative.dev/max-scale"]) >= 1
        container = service["spec"]["template"]["spec"]["containers"][0]
        assert {"requests", "limits"} <= set(container["resources"])
        env = {e["name"]: e for e in container["env"]}
        assert env["MODEL_URI"]["value"] == "models:/xray-vit@champion"
        assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == manifests.SECRET_NAME
    # Only the clinician-facing functions are reachable from outside.
    public = {n for n, s in services.items() if "networking.knative.dev/visibility" not in s["metadata"]["labels"]}
    assert public == {"predict", "explain", "feedback", "review", "dicomweb"}  # review: the worklist; STOW-RS
    webhook_env = {e["name"] for e in services["minio-source"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "WEBHOOK_TOKEN" in webhook_env


def test_every_function_of_the_topology_is_a_service_with_its_env_contract() -> None:
    assert [fn.name for fn in manifests.FUNCTIONS] == [fn.name for fn in topology.FUNCTIONS]
    for fn in manifests.FUNCTIONS:
        container = manifests.knative_service(SETTINGS, fn)["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        # K_SINK comes from the SinkBinding, the gateway URL is the local stack's; every other variable is set.
        expected = {var.name for var in fn.function.env} - {"K_SINK", "CANARY_GATEWAY_URL"}
        assert set(env) == expected, fn.name
        for var in fn.function.env:
            if var.secret:
                assert env[var.name]["valueFrom"]["secretKeyRef"] == {"name": manifests.SECRET_NAME, "key": var.value}
    retrain = manifests.knative_service(SETTINGS, next(f for f in manifests.FUNCTIONS if f.name == "retrain"))
    env = {e["name"]: e.get("value") for e in retrain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RETRAIN_BACKEND"] == "kubernetes"
    assert env["TRAINING_IMAGE"] == "ghcr.io/example/xray-triage/training:0.3.1"


def test_the_review_worklist_is_a_public_scale_to_zero_service_that_validates(objects: list[dict]) -> None:
    from tests.infra.kubernetes_schemas import validation_errors

    review = {s["metadata"]["name"]: s for s in knative_services(objects)}["review"]
    assert validation_errors(review) == []
    labels = review["metadata"]["labels"]
    assert "networking.knative.dev/visibility" not in labels and labels["xray-triage/emits-events"] == "true"
    template = review["spec"]["template"]
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "0"
    container = template["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["REVIEWER_TOKENS"]["valueFrom"]["secretKeyRef"] == {"name": manifests.SECRET_NAME,
                                                                   "key": "reviewer_tokens"}
    assert container["image"].endswith("/review:0.3.1") and container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_measured_functions_get_their_knative_scaling_and_the_rest_the_stacks() -> None:
    assert "predict" in topology.AUTOSCALING
    for fn in manifests.FUNCTIONS:
        template = manifests.knative_service(SETTINGS, fn)["spec"]["template"]
        annotations, spec = template["metadata"]["annotations"], template["spec"]
        scaling = topology.AUTOSCALING.get(fn.name)
        if scaling is None:
            assert spec["containerConcurrency"] == 0, fn.name  # the soft target alone
            assert annotations["autoscaling.knative.dev/target"] == str(SETTINGS.target_concurrency)
            assert annotations["autoscaling.knative.dev/max-scale"] == str(fn.max_scale or SETTINGS.max_scale)
            continue
        assert spec["containerConcurrency"] == scaling.container_concurrency
        assert annotations["autoscaling.knative.dev/target"] == str(scaling.target)
        assert annotations["autoscaling.knative.dev/max-scale"] == str(scaling.max_scale)
        assert annotations["autoscaling.knative.dev/metric"] == "concurrency"
        assert 1 <= scaling.target <= scaling.container_concurrency  # a soft target under the hard limit
