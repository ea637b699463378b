"""Scale and cost: where one predict process saturates, the Knative scaling that implies, and what it costs.

Pure functions (tested without a stack); `triage scale-report` (`triage/scale.py`) measures and writes the report.

**Saturation and the Knative numbers** (`derive_autoscaling`), from closed-loop runs at concurrency 1, 2, 4 ... 32
(`load_tests.loadtest.run_load`; throughput and p99 at each):

- `containerConcurrency` = the saturation concurrency: the smallest c whose throughput is within `plateau` (90%)
  of the best measured: past it, more requests in flight only wait in the pod (p99 grows, throughput does not);
  lowered to the largest c whose p99 stays within `p99_budget_ms` (the 500 ms alert) if that is smaller.
- `target` = floor(0.7 x containerConcurrency), at least 1: Knative's default target utilization (70%), so the
  autoscaler adds a pod before requests queue at the hard limit.
- `max-scale` = ceil(headroom x peak rate / the throughput one pod gives at `target`), at least 2 (a rollout or a
  lost node never leaves no capacity).

**Cost per 1,000 predictions vs daily volume** (`cost_row`): V predictions a day arrive as a Poisson stream over
`active_hours` (rate λ). Scaled to zero, a pod is up while a request arrived within the scale-down delay d
(Knative's stable window + scale-to-zero grace, 60 + 30 s): up a share 1 - exp(-λd) of the active window, and an
arrival finds no pod (a cold start) with probability exp(-λd). Up pods are billed their CPU request (enough of
them that the work fits at `utilization`), plus each cold start's seconds. The always-on VM is billed 24 h a day
(as many VMs as the peak needs). A vCPU-second costs the VM's price / its vCPUs / 3600 in both (times
`serverless_premium` for the pods: 1 on self-hosted Knative, more on a managed serverless platform).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from shared.topology import Autoscaling

__all__ = ["MEASURED_PREDICT", "CostInputs", "Level", "always_on_per_day", "break_even_volume", "cost_row",
           "cost_table", "derive_autoscaling", "saturation_concurrency", "scale_to_zero_per_day", "throughput_at"]

TARGET_UTILIZATION = 0.7  # Knative's container-concurrency-target-percentage default


@dataclass(frozen=True)
class Level:
    """One closed-loop run: `concurrency` requests in flight, what came out."""

    concurrency: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0


def saturation_concurrency(levels: Sequence[Level], plateau: float = 0.9) -> int:
    """The smallest concurrency whose throughput is within `plateau` of the best (levels without errors)."""
    clean = sorted((lv for lv in levels if lv.errors == 0), key=lambda lv: lv.concurrency)
    if not clean:
        raise ValueError("no level without errors")
    best = max(lv.throughput_rps for lv in clean)
    return next(lv.concurrency for lv in clean if lv.throughput_rps >= plateau * best)


def throughput_at(levels: Sequence[Level], concurrency: float) -> float:
    """Throughput at `concurrency`, interpolated linearly between the measured levels (clamped at the ends)."""
    points = sorted((lv.concurrency, lv.throughput_rps) for lv in levels if lv.errors == 0)
    if concurrency <= points[0][0]:
        return points[0][1] * concurrency / points[0][0]
    for (c0, t0), (c1, t1) in zip(points, points[1:], strict=False):
        if concurrency <= c1:
            return t0 + (t1 - t0) * (concurrency - c0) / (c1 - c0)
    return points[-1][1]


def derive_autoscaling(levels: Sequence[Level], *, peak_rps: float, headroom: float = 2.0,
                       p99_budget_ms: float = 500.0, plateau: float = 0.9) -> Autoscaling:
    """The Knative `containerConcurrency`, `target` and `max-scale` of the module docstring's rule."""
    hard = saturation_concurrency(levels, plateau)
    within_budget = [lv.concurrency for lv in levels if lv.errors == 0 and lv.p99_ms <= p99_budget_ms]
    if within_budget:
        hard = min(hard, max(within_budget))
    target = max(1, math.floor(TARGET_UTILIZATION * hard))
    max_scale = max(2, math.ceil(headroom * peak_rps / throughput_at(levels, target)))
    return Autoscaling(target=target, container_concurrency=hard, max_scale=max_scale)


@dataclass(frozen=True)
class CostInputs:
    cpu_s_per_prediction: float  # measured: CPU-seconds of the predict process per prediction
    vm_price_per_hour: float  # the always-on VM's price (a parameter: your cloud's)
    vm_vcpus: int = 2
    pod_cpu: float = 0.5  # vCPU a predict pod requests (what a scheduler reserves, so what is paid)
    scale_down_delay_s: float = 90.0  # Knative: stable window 60 s + scale-to-zero grace period 30 s
    cold_start_s: float = 0.5  # measured: pod start to its first answer, billed at pod_cpu
    active_hours: float = 12.0  # the hours of the day the predictions arrive in
    utilization: float = TARGET_UTILIZATION  # the share of its CPU a pod or VM is loaded to at most
    # A pod's vCPU-second against the VM's: 1 on self-hosted Knative (the nodes' price, capacity freed when idle);
    # a managed serverless platform charges ~2-3x a VM's vCPU-second.
    serverless_premium: float = 1.0

    @property
    def vcpu_price_per_s(self) -> float:
        return self.vm_price_per_hour / self.vm_vcpus / 3600.0


def scale_to_zero_per_day(volume: float, inputs: CostInputs) -> dict[str, float]:
    """Cost, pod-hours and cold starts a day of `volume` predictions on a scale-to-zero Knative Service."""
    window_s = inputs.active_hours * 3600.0
    arrival_rps = volume / window_s
    up_share = -math.expm1(-arrival_rps * inputs.scale_down_delay_s)  # 1 - exp(-λd)
    cold_starts = volume * math.exp(-arrival_rps * inputs.scale_down_delay_s)
    pods_when_up = max(1, math.ceil(arrival_rps * inputs.cpu_s_per_prediction / (inputs.pod_cpu * inputs.utilization)))
    busy_pod_s = volume * inputs.cpu_s_per_prediction / inputs.pod_cpu
    pod_s = max(window_s * up_share * pods_when_up, busy_pod_s) + cold_starts * inputs.cold_start_s
    return {"cost": pod_s * inputs.pod_cpu * inputs.vcpu_price_per_s * inputs.serverless_premium,
            "pod_hours": pod_s / 3600.0,
            "cold_starts": cold_starts}


def always_on_per_day(volume: float, inputs: CostInputs) -> dict[str, float]:
    """Cost a day of always-on VMs enough for `volume` predictions in the active hours."""
    need_vcpu = volume / (inputs.active_hours * 3600.0) * inputs.cpu_s_per_prediction / inputs.utilization
    vms = max(1, math.ceil(need_vcpu / inputs.vm_vcpus))
    return {"cost": vms * inputs.vm_price_per_hour * 24.0, "vms": vms}


def cost_row(volume: float, inputs: CostInputs) -> dict[str, Any]:
    """One row of the cost table: per day and per 1,000 predictions, both ways."""
    serverless, always_on = scale_to_zero_per_day(volume, inputs), always_on_per_day(volume, inputs)
    return {"predictions_per_day": volume,
            "scale_to_zero_per_day": round(serverless["cost"], 4),
            "scale_to_zero_per_1000": round(serverless["cost"] / volume * 1000.0, 4),
            "always_on_per_day": round(always_on["cost"], 4),
            "always_on_per_1000": round(always_on["cost"] / volume * 1000.0, 4),
            "pod_hours_per_day": round(serverless["pod_hours"], 3),
            "cold_starts_per_day": round(serverless["cold_starts"], 1), "vms": always_on["vms"]}


def cost_table(volumes: Sequence[float], inputs: CostInputs) -> list[dict[str, Any]]:
    return [cost_row(volume, inputs) for volume in volumes]


def break_even_volume(inputs: CostInputs, low: float = 1.0, high: float = 1e9) -> float | None:
    """The daily volume above which the always-on VM is the cheaper (None: scale to zero is cheaper throughout)."""
    def gap(volume: float) -> float:
        return scale_to_zero_per_day(volume, inputs)["cost"] - always_on_per_day(volume, inputs)["cost"]

    if gap(low) >= 0:
        return low
    if gap(high) < 0:
        return None
    for _ in range(200):  # bisection on a log scale
        middle = math.sqrt(low * high)
        low, high = (middle, high) if gap(middle) < 0 else (low, middle)
        if high / low < 1.0001:
            break
    return high


# The run behind shared.topology.AUTOSCALING["predict"] (2026-12-02T03:07Z, `triage scale-report --repeats 5`): the
# default ViT trained on PneumoniaMNIST (with its gate), predict pinned to 1 CPU (its pod's limit), on an otherwise
# idle 2-core machine (the fastest of 5 runs per level). CPU per prediction 7.6 ms (median of the levels), cold start
# 0.75 s (median of 3). An earlier run on the same machine under load (load average 10-15) put the knee at 4 too
# (76 req/s). A test derives the table from it: the manifests change only with a new measurement pasted here.
MEASURED_PREDICT: tuple[Level, ...] = (
    Level(1, 108.8, 8.855, 15.079),
    Level(2, 122.1, 16.013, 30.995),
    Level(4, 148.6, 25.274, 62.979),
    Level(8, 152.5, 46.754, 112.288),
    Level(16, 121.8, 122.689, 315.989),
    Level(32, 114.5, 198.376, 688.113),
)
PEAK_RPS = 50.0  # the predict API's design peak: client systems of a region, requests/s


def as_dicts(levels: Sequence[Level]) -> list[dict[str, Any]]:
    return [asdict(level) for level in levels]
