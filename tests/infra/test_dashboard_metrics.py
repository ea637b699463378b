"""Every metric the Grafana dashboard queries is one the functions export (no panel silently empty)."""

from __future__ import annotations

import json
import re

from prometheus_client import REGISTRY

import shared.metrics  # noqa: F401 - registers the functions' metrics
import shared.monitor  # noqa: F401 - registers the monitor's metrics
from infra_pulumi.manifests import DASHBOARD

SUFFIXES = re.compile(r"_(bucket|count|sum|total|created)$")


def exported_families() -> set[str]:
    return {SUFFIXES.sub("", family.name) for family in REGISTRY.collect()}


def test_every_triage_metric_on_the_dashboard_is_exported() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queried = {SUFFIXES.sub("", name) for p in panels for t in p["targets"]
               for name in re.findall(r"\btriage_[a-z_]+", t["expr"])}
    assert {"triage_request_duration_seconds", "triage_monitor_live_accuracy"} <= queried
    assert queried - exported_families() == set()
