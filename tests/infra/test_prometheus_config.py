"""Both Prometheus servers load the project's alerting rules: the platform's (rule_files + the prometheus-rules
ConfigMap mounted into its pod) and the local stack's (the same rules written beside its prometheus.yml)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import yaml

from infra_pulumi.alerts import OFFSET_RECORD, RULES_FILE, RULES_FILE_NAME
from infra_pulumi.manifests import monitoring_objects, prometheus_config
from infra_pulumi.manifests.monitoring import RULES_DIR
from tests.infra.manifests.example import SETTINGS, by_kind
from tests.system_tools import require_tool
from triage.stack import prometheus


def _offset_expr(rules_text: str) -> str:
    rules = yaml.safe_load(rules_text)
    return next(r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("record") == OFFSET_RECORD)


def _prometheus_deployment(objects: list[dict]) -> dict:
    return next(d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == "prometheus")


def test_the_platform_prometheus_loads_the_rules_from_a_mounted_config_map() -> None:
    settings = dataclasses.replace(SETTINGS, alert_utc_offset_hours=2.0)
    objects = monitoring_objects(settings)
    assert yaml.safe_load(prometheus_config(settings))["rule_files"] == [f"{RULES_DIR}/*.yml"]
    maps = {c["metadata"]["name"]: c for c in by_kind(objects, "ConfigMap")}
    rules_text = maps["prometheus-rules"]["data"][RULES_FILE_NAME]
    assert "alert: TriageUrgentCaseLate" in rules_text and _offset_expr(rules_text) == "vector(7200)"
    pod = _prometheus_deployment(objects)["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v.get("configMap", {}).get("name") for v in pod["volumes"]}
    assert mounts["rules"] == RULES_DIR and volumes["rules"] == "prometheus-rules"
    assert not RULES_DIR.startswith(mounts["config"] + "/")  # never nested in the read-only config mount


def test_a_changed_rule_rolls_the_prometheus_pod() -> None:
    def checksum(offset: float) -> str:
        deployment = _prometheus_deployment(monitoring_objects(dataclasses.replace(SETTINGS,
                                                                                    alert_utc_offset_hours=offset)))
        return deployment["spec"]["template"]["metadata"]["annotations"]["xray-triage/config-sha256"]

    assert checksum(0.0) == checksum(0.0) != checksum(1.0)


def test_the_local_prometheus_loads_the_same_rules(tmp_path: Path) -> None:
    spec = prometheus.prometheus_spec(tmp_path, 9090, {"predict": "127.0.0.1:8100"}, utc_offset_hours=-5.0)
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    rules_path = Path(config["rule_files"][0])
    assert rules_path.is_absolute() and rules_path == (tmp_path / RULES_FILE_NAME).resolve()
    assert _offset_expr(rules_path.read_text()) == "vector(-18000)"
    assert config["global"]["evaluation_interval"] == config["global"]["scrape_interval"]
    assert spec is None or any(arg.endswith("prometheus.yml") for arg in spec.argv)


def test_the_local_config_with_its_rules_passes_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    prometheus.prometheus_spec(tmp_path, 9090, {"predict": "127.0.0.1:8100"})
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load(RULES_FILE.read_text())["groups"]
    assert f"SUCCESS: {sum(len(group['rules']) for group in rules)} rules found" in result.stdout  # every one loaded
