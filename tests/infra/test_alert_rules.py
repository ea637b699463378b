"""The alerting rules (infra_pulumi/alerts): `promtool check rules`, one `promtool test rules` run per alert (each
fires when it should and stays quiet when it should not, tests/infra/alert_rules*.test.yml), and every metric a
rule reads is one the code exports."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from infra_pulumi.alerts import OFFSET_RECORD, RULES_FILE, render_rules
from infra_pulumi.manifests import DASHBOARD
from tests.infra.metric_names import exported_families, queried_families
from tests.system_tools import require_tool

HERE = Path(__file__).parent
# Each promtool test file, with the working-hours offset from UTC its rules are rendered at.
TEST_FILES = {"alert_rules.test.yml": 0.0, "alert_rules_working_hours.test.yml": 0.0,
              "alert_rules_utc+5.5.test.yml": 5.5}
RULES = yaml.safe_load(RULES_FILE.read_text())
ALERTS = sorted(rule["alert"] for group in RULES["groups"] for rule in group["rules"] if "alert" in rule)


def _promtool() -> str:
    return require_tool("promtool", "apt-get install prometheus")


def _cases(alert: str) -> list[tuple[str, dict]]:
    """(test file, its test groups narrowed to `alert`'s checks) for every group that checks `alert`."""
    found = []
    for name in TEST_FILES:
        for group in yaml.safe_load((HERE / name).read_text())["tests"]:
            checks = [check for check in group.get("alert_rule_test", []) if check["alertname"] == alert]
            if checks:
                found.append((name, {**group, "alert_rule_test": checks}))
    return found


def _rules_without_annotations(offset_hours: float) -> dict:
    """The rendered rules; annotations dropped so the unit tests compare labels only (`check rules` sees them)."""
    rules = yaml.safe_load(render_rules(offset_hours))
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return rules


def _promtool_test(tmp_path: Path, file_name: str, groups: list[dict], rules: dict | None = None) -> str:
    """Run `promtool test rules` on `groups` against the rules; returns its output, failing the test on an error."""
    rules_path = tmp_path / f"rules-{file_name}"
    rules_path.write_text(yaml.safe_dump(rules or _rules_without_annotations(TEST_FILES[file_name])))
    header = yaml.safe_load((HERE / file_name).read_text())
    test_path = tmp_path / f"test-{len(list(tmp_path.iterdir()))}.yml"
    test_path.write_text(yaml.safe_dump({**header, "rule_files": [str(rules_path)], "tests": groups}))
    result = subprocess.run([_promtool(), "test", "rules", str(test_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("offset_hours", [0.0, 5.5, -5.0])
def test_the_rendered_rules_pass_promtool_check(tmp_path: Path, offset_hours: float) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(render_rules(offset_hours))
    result = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS) + 7} rules found" in result.stdout


def test_the_rules_cover_every_alert_of_the_issue() -> None:
    assert sorted([
        "TriageHighErrorRatio", "TriagePredictLatencyHigh", "TriageUrgentCaseLate", "TriagePredictionDrift",
        "TriageInputDrift", "TriageLiveAccuracyLow", "TriageLiveSensitivityLow", "TriageDeadLetters",
        "TriageCanaryRolledBack", "TriageNotAssessableShareHigh", "TriagePacsExportFailing",
        "TriageNoPredictionsInWorkingHours", "TriageDicomStoreFailing",
    ]) == ALERTS


@pytest.mark.parametrize("alert", ALERTS)
def test_each_alert_has_a_case_where_it_fires_and_one_where_it_stays_quiet(alert: str) -> None:
    checks = [check for _, group in _cases(alert) for check in group["alert_rule_test"]]
    assert any(check["exp_alerts"] for check in checks), f"{alert}: no case where it fires"
    assert any(not check["exp_alerts"] for check in checks), f"{alert}: no case where it stays quiet"


@pytest.mark.parametrize("alert", ALERTS)
def test_promtool_unit_tests_of_each_alert(tmp_path: Path, alert: str) -> None:
    for file_name in TEST_FILES:
        groups = [group for name, group in _cases(alert) if name == file_name]
        if groups:
            out = _promtool_test(tmp_path, file_name, groups)
            assert "SUCCESS" in out


def test_promtool_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    """The unit tests are live: with the error-ratio threshold at 50 %, its firing case fails."""
    rules = _rules_without_annotations(0.0)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "TriageHighErrorRatio":
                rule["expr"] = rule["expr"].replace("> 0.05", "> 0.5")
    groups = [group for _, group in _cases("TriageHighErrorRatio")]
    with pytest.raises(AssertionError, match="TriageHighErrorRatio"):
        _promtool_test(tmp_path, "alert_rules.test.yml", groups, rules)


def test_render_rules_sets_the_working_hours_offset_and_refuses_a_wrong_one() -> None:
    rendered = yaml.safe_load(render_rules(-3.5))
    offset = [rule for group in rendered["groups"] for rule in group["rules"] if rule.get("record") == OFFSET_RECORD]
    assert [rule["expr"] for rule in offset] == ["vector(-12600)"]
    # The offset is written into every expression that reads it (no rule waits on another group's evaluation);
    # otherwise the alerts are the file's.
    assert not any(OFFSET_RECORD in rule["expr"] for group in rendered["groups"] for rule in group["rules"])
    assert "(-12600)" in next(r["expr"] for r in rendered["groups"][1]["rules"]
                              if r["alert"] == "TriageNoPredictionsInWorkingHours")
    inlined = yaml.safe_load(RULES_FILE.read_text().replace(f"scalar({OFFSET_RECORD})", "(0)"))
    assert yaml.safe_load(render_rules())["groups"][1] == inlined["groups"][1]
    for wrong in (15.0, float("nan")):
        with pytest.raises(ValueError, match="utc_offset_hours"):
            render_rules(wrong)


def test_every_metric_a_rule_reads_is_exported_by_the_code() -> None:
    exprs = [rule["expr"] for group in RULES["groups"] for rule in group["rules"]]
    queried = set().union(*(queried_families(expr) for expr in exprs))
    assert {"triage_urgent_flagged", "triage_not_assessable", "triage_export_failures", "triage_dead_letters",
            "triage_canary_decisions", "triage_monitor_live_sensitivity"} <= queried
    assert queried - exported_families() == set()


def test_every_recording_rule_the_dashboard_reads_is_defined() -> None:
    recorded = {rule["record"] for group in RULES["groups"] for rule in group["rules"] if "record" in rule}
    panels = json.loads(DASHBOARD.read_text())["panels"]
    used = {word for p in panels for t in p["targets"] for word in t["expr"].replace("(", " ").split() if ":" in word}
    assert used and used <= recorded
