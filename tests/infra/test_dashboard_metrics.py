"""Every metric the Grafana dashboard queries is one the functions export (no panel silently empty)."""

from __future__ import annotations

import json

from infra_pulumi.manifests import DASHBOARD
from tests.infra.metric_names import exported_families, queried_families


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def test_every_triage_metric_on_the_dashboard_is_exported() -> None:
    queried = set().union(*(queried_families(expr) for expr in _dashboard_exprs()))
    assert {"triage_request_duration_seconds", "triage_monitor_live_accuracy"} <= queried
    assert queried - exported_families() == set()


def test_the_dashboard_shows_the_alerts_series() -> None:
    """The business metric, dead letters, export failures, not-assessable answers and canary decisions have panels."""
    exprs = " ".join(_dashboard_exprs())
    for series in ("triage:urgent_flagged_within_60s:ratio_1h", "triage_urgent_flagged_total",
                   "triage_dead_letters_total", "triage_export_failures_total", "triage_not_assessable_total",
                   "triage_canary_decisions_total", "function:triage_request_errors:ratio_rate5m", "ALERTS"):
        assert series in exprs, series
