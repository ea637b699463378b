"""The metric families the code exports and the ones a PromQL expression reads, for the dashboard and rule tests."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY

import shared.canary.controller  # noqa: F401 - registers the canary's metrics
import shared.metrics  # noqa: F401 - registers the functions' metrics
import shared.monitor  # noqa: F401 - registers the monitor's metrics

__all__ = ["exported_families", "queried_families"]

SUFFIXES = re.compile(r"_(bucket|count|sum|total|created)$")
RECORDED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*:[A-Za-z0-9_:]*")  # recording-rule names have a colon


def exported_families() -> set[str]:
    return {SUFFIXES.sub("", family.name) for family in REGISTRY.collect()}


def queried_families(expr: str) -> set[str]:
    """The project's metric families (`triage_*`) that `expr` reads; recording rules' own names left out."""
    return {SUFFIXES.sub("", name) for name in re.findall(r"\btriage_[a-z0-9_]+", RECORDED.sub(" ", expr))}
