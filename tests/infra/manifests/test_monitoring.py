"""Prometheus and Grafana: the dashboard has the project's panels; the production Prometheus config passes
`promtool check config` (Debian package prometheus).

Debian builds Prometheus without Kubernetes service discovery, so its promtool rejects `kubernetes_sd_configs`
as an unknown field. With such a promtool the test checks everything else (relabelling regexes, actions,
intervals) by swapping each Kubernetes discovery block for an empty static one; an upstream promtool checks
the file as it is.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from infra_pulumi import manifests
from tests.infra.manifests.example import SETTINGS, by_kind
from tests.system_tools import require_tool

NO_KUBERNETES_SD = "field kubernetes_sd_configs not found"


def test_grafana_dashboard_has_the_project_panels(objects: list[dict]) -> None:
    maps = {c["metadata"]["name"]: c for c in by_kind(objects, "ConfigMap")}
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


def _promtool_check(config: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    promtool = require_tool("promtool", "apt-get install -y prometheus")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)


def _without_kubernetes_sd(config: dict) -> dict:
    jobs = []
    for job in config["scrape_configs"]:
        job = dict(job)
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": []}]
        jobs.append(job)
    return {**config, "scrape_configs": jobs}


def test_production_scrape_config_passes_promtool(tmp_path: Path) -> None:
    config = yaml.safe_load(manifests.prometheus_config(SETTINGS))
    result = _promtool_check(config, tmp_path)
    if result.returncode != 0 and NO_KUBERNETES_SD in result.stdout + result.stderr:
        pods = [job for job in config["scrape_configs"] if "kubernetes_sd_configs" in job]
        assert pods and all(sd["role"] == "pod" for job in pods for sd in job["kubernetes_sd_configs"])
        result = _promtool_check(_without_kubernetes_sd(config), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_relabel_regex(tmp_path: Path) -> None:
    config = _without_kubernetes_sd(yaml.safe_load(manifests.prometheus_config(SETTINGS)))
    job = next(job for job in config["scrape_configs"] if job.get("relabel_configs"))
    job["relabel_configs"][0]["regex"] = "(unclosed"
    assert _promtool_check(config, tmp_path).returncode != 0
