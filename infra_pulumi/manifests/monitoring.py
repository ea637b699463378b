"""Monitoring: Prometheus (scrapes every function pod and MinIO, evaluates the project's alerting rules) and Grafana
with the project's dashboard."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from infra_pulumi.alerts import RULES_FILE_NAME, render_rules
from infra_pulumi.manifests.kube import (
    config_map,
    deployment,
    persistent_volume_claim,
    resources,
    secret_env,
    service,
    service_account_with_role,
)
from infra_pulumi.manifests.settings import ManifestSettings

__all__ = ["DASHBOARD", "RULES_DIR", "monitoring_objects", "prometheus_config"]

DASHBOARD = Path(__file__).parents[1] / "dashboards" / "xray-triage.json"
RULES_DIR = "/etc/prometheus-rules"  # the prometheus-rules ConfigMap (infra_pulumi/alerts), beside the config


def prometheus_config(s: ManifestSettings) -> str:
    """Scrape every function pod that carries the prometheus.io annotations, plus Prometheus itself; load the rules."""
    pod_label = "__meta_kubernetes_pod_label_serving_knative_dev_"
    functions = {
        "job_name": "functions",
        "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [s.namespace]}}],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                "action": "keep",
                "regex": "true",
            },
            {
                "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
                "action": "replace",
                "target_label": "__metrics_path__",
                "regex": "(.+)",
            },
            {
                "source_labels": ["__meta_kubernetes_pod_ip", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                "action": "replace",
                "target_label": "__address__",
                "regex": "(.+);(.+)",
                "replacement": "$1:$2",
            },
            {"source_labels": [f"{pod_label}service"], "target_label": "function"},
            {"source_labels": [f"{pod_label}revision"], "target_label": "revision"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }
    config = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": [f"{RULES_DIR}/*.yml"],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": ["localhost:9090"]}]},
            functions,
            {
                "job_name": "minio",
                "metrics_path": "/minio/v2/metrics/cluster",
                "static_configs": [{"targets": [f"minio.{s.namespace}.svc.cluster.local:9000"]}],
            },
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _prometheus_pod(s: ManifestSettings) -> dict:
    return {
        "serviceAccountName": "prometheus",
        "securityContext": {"fsGroup": 65534, "runAsUser": 65534, "runAsNonRoot": True},
        "containers": [
            {
                "name": "prometheus",
                "image": f"prom/prometheus:{s.versions['prometheus_version']}",
                "args": [
                    "--config.file=/etc/prometheus/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    "--storage.tsdb.retention.time=30d",
                ],
                "ports": [{"containerPort": 9090, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/-/ready", "port": 9090}, "periodSeconds": 10},
                "resources": resources(("100m", "1"), ("256Mi", "1Gi")),
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/prometheus"},
                    {"name": "rules", "mountPath": RULES_DIR},
                    {"name": "data", "mountPath": "/prometheus"},
                ],
            }
        ],
        "volumes": [
            {"name": "config", "configMap": {"name": "prometheus-config"}},
            {"name": "rules", "configMap": {"name": "prometheus-rules"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "prometheus-data"}},
        ],
    }


def _grafana_pod(s: ManifestSettings) -> dict:
    return {
        "containers": [
            {
                "name": "grafana",
                "image": f"grafana/grafana:{s.versions['grafana_version']}",
                "env": [
                    {"name": "GF_SECURITY_ADMIN_USER", "value": "admin"},
                    secret_env("GF_SECURITY_ADMIN_PASSWORD", "grafana_admin_password"),
                    {"name": "GF_USERS_ALLOW_SIGN_UP", "value": "false"},
                    {"name": "GF_ANALYTICS_REPORTING_ENABLED", "value": "false"},
                ],
                "ports": [{"containerPort": 3000, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/api/health", "port": 3000}, "periodSeconds": 10},
                "resources": resources(("100m", "500m"), ("128Mi", "512Mi")),
                "volumeMounts": [
                    {"name": "datasources", "mountPath": "/etc/grafana/provisioning/datasources"},
                    {"name": "providers", "mountPath": "/etc/grafana/provisioning/dashboards"},
                    {"name": "dashboards", "mountPath": "/var/lib/grafana/dashboards"},
                ],
            }
        ],
        "volumes": [
            {"name": "datasources", "configMap": {"name": "grafana-datasources"}},
            {"name": "providers", "configMap": {"name": "grafana-dashboard-providers"}},
            {"name": "dashboards", "configMap": {"name": "grafana-dashboards"}},
        ],
    }


def _grafana_provisioning(s: ManifestSettings) -> tuple[dict, dict]:
    """Grafana's datasource (the Prometheus above) and its dashboard provider (the dashboards ConfigMap)."""
    datasource = {
        "name": "Prometheus",
        "uid": "prometheus",
        "type": "prometheus",
        "access": "proxy",
        "url": s.internal_url("prometheus", 9090),
        "isDefault": True,
    }
    provider = {
        "name": "xray-triage",
        "folder": "xray-triage",
        "type": "file",
        "options": {"path": "/var/lib/grafana/dashboards"},
    }
    return {"apiVersion": 1, "datasources": [datasource]}, {"apiVersion": 1, "providers": [provider]}


def monitoring_objects(s: ManifestSettings) -> list[dict]:
    ns = s.namespace
    read_pods = [{"apiGroups": [""], "resources": ["pods", "services", "endpoints"], "verbs": ["get", "list", "watch"]}]
    datasources, providers = _grafana_provisioning(s)
    config, rules = prometheus_config(s), render_rules(s.alert_utc_offset_hours)
    prometheus = deployment(s, "prometheus", _prometheus_pod(s), on_data_node=True)
    # Prometheus reads its files at start: a changed config or rule file rolls the pod.
    checksum = hashlib.sha256((config + rules).encode()).hexdigest()
    prometheus["spec"]["template"]["metadata"]["annotations"] = {"xray-triage/config-sha256": checksum}
    return [
        *service_account_with_role("prometheus", ns, read_pods),
        config_map("prometheus-config", ns, {"prometheus.yml": config}),
        config_map("prometheus-rules", ns, {RULES_FILE_NAME: rules}),
        persistent_volume_claim(s, "prometheus-data", "10Gi"),
        prometheus,
        service(s, "prometheus", {"http": 9090}, admin=True),
        config_map("grafana-datasources", ns, {"prometheus.yaml": yaml.safe_dump(datasources, sort_keys=False)}),
        config_map("grafana-dashboard-providers", ns, {"xray-triage.yaml": yaml.safe_dump(providers, sort_keys=False)}),
        config_map("grafana-dashboards", ns, {"xray-triage.json": DASHBOARD.read_text()}),
        deployment(s, "grafana", _grafana_pod(s), on_data_node=False),
        service(s, "grafana", {"http": 3000}, admin=True),
    ]
