"""The project's Prometheus alerting and recording rules (`xray-triage.rules.yml`), rendered for one timezone.

The platform's Prometheus (a ConfigMap, `infra_pulumi.manifests.monitoring`) and the local stack's
(`triage.stack.prometheus`) load the same file; only the working-hours offset from UTC differs, and it lives in
one recording rule, `triage:alert_utc_offset_seconds`, whose expression `render_rules` sets.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

__all__ = ["OFFSET_RECORD", "RULES_FILE", "RULES_FILE_NAME", "render_rules"]

RULES_FILE_NAME = "xray-triage.rules.yml"
RULES_FILE = Path(__file__).with_name(RULES_FILE_NAME)
OFFSET_RECORD = "triage:alert_utc_offset_seconds"


def render_rules(utc_offset_hours: float = 0.0) -> str:
    """The rules file as YAML text, with working hours (Mon-Fri 07-19) at `utc_offset_hours` from UTC."""
    if not (math.isfinite(utc_offset_hours) and -14 <= utc_offset_hours <= 14):
        raise ValueError(f"utc_offset_hours={utc_offset_hours!r}: expected an offset from UTC in [-14, 14] hours")
    rules = yaml.safe_load(RULES_FILE.read_text())
    offsets = [rule for group in rules["groups"] for rule in group["rules"] if rule.get("record") == OFFSET_RECORD]
    if len(offsets) != 1:
        raise ValueError(f"{RULES_FILE_NAME}: expected one {OFFSET_RECORD} rule, found {len(offsets)}")
    seconds = round(utc_offset_hours * 3600)
    offsets[0]["expr"] = f"vector({seconds})"
    # Inline the offset: rules of one evaluation do not see each other's results in a fixed order across groups.
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace(f"scalar({OFFSET_RECORD})", f"({seconds})")
    return yaml.safe_dump(rules, sort_keys=False, width=120)
