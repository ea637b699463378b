"""The broker's configuration: Knative's Trigger (attribute filters → subscriber) and delivery spec (retries,
backoff, timeout), and the JSON file the local stack writes them to (with the PingSources)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triage.stack.pings import PingSource

__all__ = ["DeliverySpec", "Trigger", "load_config", "load_full_config"]


@dataclass(frozen=True)
class DeliverySpec:
    """Knative's delivery spec: `retry` retries after the first try, then the dead-letter sink."""

    retry: int = 5
    backoff_policy: str = "exponential"  # exponential | linear
    backoff_delay_s: float = 0.2
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.backoff_policy not in ("exponential", "linear"):
            raise ValueError(f"delivery.backoff_policy must be exponential or linear, not {self.backoff_policy!r}")
        if self.retry < 0 or self.backoff_delay_s < 0 or self.timeout_s <= 0:
            raise ValueError("delivery.retry and delivery.backoff_delay_s must be >= 0, delivery.timeout_s > 0")

    def delay_after(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt (1-based), as Knative computes it."""
        if self.backoff_policy == "linear":
            return self.backoff_delay_s * failures
        return self.backoff_delay_s * 2 ** (failures - 1)


@dataclass(frozen=True)
class Trigger:
    """Deliver events whose attributes equal every `filters` entry (type, source or an extension) to `subscriber`."""

    name: str
    subscriber: str
    filters: Mapping[str, str] = field(default_factory=dict)
    delivery: DeliverySpec | None = None  # overrides the broker's, as a Knative Trigger's `delivery` does

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return all(str(attributes.get(key)) == str(value) for key, value in self.filters.items())


def load_config(path: Path) -> tuple[list[Trigger], DeliverySpec]:
    """`{"triggers": [{"name", "subscriber", "filter", "delivery"?}], "delivery": {...}}` → triggers, default spec."""
    triggers, delivery, _pings = load_full_config(path)
    return triggers, delivery


def load_full_config(path: Path) -> tuple[list[Trigger], DeliverySpec, list[PingSource]]:
    """`load_config` plus `"pings": [{"name", "every_s"}]`, the PingSource stand-ins."""
    try:
        raw = json.loads(Path(path).read_text())
        triggers = [Trigger(t["name"], t["subscriber"], dict(t.get("filter", {})),
                            DeliverySpec(**t["delivery"]) if t.get("delivery") else None) for t in raw["triggers"]]
        delivery = DeliverySpec(**raw.get("delivery", {}))
        pings = [PingSource(p["name"], float(p["every_s"])) for p in raw.get("pings", [])]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: invalid broker config: {exc}") from exc
    return triggers, delivery, pings
