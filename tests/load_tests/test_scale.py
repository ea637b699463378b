"""The scale rule and the cost model (`load_tests.scale`): pure arithmetic, no stack."""

from __future__ import annotations

import math

import pytest

from load_tests.scale import (
    MEASURED_PREDICT,
    PEAK_RPS,
    CostInputs,
    Level,
    always_on_per_day,
    break_even_volume,
    cost_row,
    derive_autoscaling,
    saturation_concurrency,
    scale_to_zero_per_day,
    throughput_at,
)
from shared import topology

# A process that gains up to 4 in flight, then only queues: throughput flat, p99 growing with the queue.
CURVE = (Level(1, 200.0, 4.0, 9.0), Level(2, 330.0, 5.0, 12.0), Level(4, 410.0, 9.0, 20.0),
         Level(8, 420.0, 18.0, 40.0), Level(16, 425.0, 37.0, 80.0), Level(32, 424.0, 75.0, 160.0))
INPUTS = CostInputs(cpu_s_per_prediction=0.004, vm_price_per_hour=0.10, vm_vcpus=2, pod_cpu=0.5,
                    scale_down_delay_s=90.0, cold_start_s=0.5, active_hours=12.0)


def test_saturation_is_where_throughput_reaches_its_plateau():
    assert saturation_concurrency(CURVE) == 4  # 410 >= 0.9 x 425; 330 is not
    assert saturation_concurrency(CURVE, plateau=0.7) == 2
    # A level with errors does not count: here the best clean throughput is 330, reached at 2.
    broken = (*CURVE[:2], Level(4, 900.0, 1.0, 2.0, errors=3))
    assert saturation_concurrency(broken) == 2


def test_the_knative_numbers_follow_from_the_curve():
    scaling = derive_autoscaling(CURVE, peak_rps=50.0)
    assert scaling.container_concurrency == 4
    assert scaling.target == 2  # floor(0.7 x 4)
    assert scaling.max_scale == 2  # ceil(2 x 50 / 330) = 1, at least 2
    busy = derive_autoscaling(CURVE, peak_rps=1000.0)
    assert busy.max_scale == math.ceil(2 * 1000.0 / 330.0) == 7
    # A p99 budget tighter than the plateau's lowers the hard limit to the last level within it.
    tight = derive_autoscaling(CURVE, peak_rps=50.0, p99_budget_ms=15.0)
    assert (tight.container_concurrency, tight.target) == (2, 1)


def test_throughput_is_interpolated_between_levels():
    assert throughput_at(CURVE, 2) == 330.0
    assert throughput_at(CURVE, 3) == pytest.approx(370.0)
    assert throughput_at(CURVE, 64) == 424.0
    assert throughput_at(CURVE, 0.5) == pytest.approx(100.0)


def test_the_manifests_numbers_are_derived_from_the_recorded_measurement():
    assert MEASURED_PREDICT, "no measurement recorded in load_tests.scale.MEASURED_PREDICT"
    assert topology.AUTOSCALING["predict"] == derive_autoscaling(MEASURED_PREDICT, peak_rps=PEAK_RPS)


def test_a_scaled_to_zero_pod_is_up_while_requests_keep_arriving():
    one_a_day = scale_to_zero_per_day(1, INPUTS)
    assert one_a_day["cold_starts"] == pytest.approx(math.exp(-90 / (12 * 3600)))  # ~1: nobody keeps it warm
    # Up: the 90 s after the request (1 - exp(-λd) of 12 h, ~ d for tiny λ) and the cold start, at 0.5 vCPU.
    pod_s = 12 * 3600 * -math.expm1(-90 / (12 * 3600)) + 0.5 * math.exp(-90 / (12 * 3600))
    assert one_a_day["pod_hours"] == pytest.approx(pod_s / 3600)
    assert one_a_day["cost"] == pytest.approx(pod_s * 0.5 * 0.10 / 2 / 3600)
    busy = scale_to_zero_per_day(1_000_000, INPUTS)  # ~23 requests/s: always up, and 2 pods for the CPU
    assert busy["cold_starts"] < 1e-6
    arrival = 1_000_000 / (12 * 3600)
    assert busy["pod_hours"] == pytest.approx(12 * math.ceil(arrival * 0.004 / (0.5 * 0.7)), rel=1e-3)


def test_the_always_on_vm_costs_the_same_every_day_until_it_is_full():
    assert always_on_per_day(10, INPUTS) == {"cost": pytest.approx(2.4), "vms": 1}
    assert always_on_per_day(100_000, INPUTS)["cost"] == pytest.approx(2.4)
    # 10 M a day over 12 h is 231 req/s x 4 ms = 0.93 vCPU busy: at 70% of 2 vCPU that needs 1 VM; 40 M needs 3.
    assert always_on_per_day(40_000_000, INPUTS)["vms"] == 3


def test_cost_per_thousand_falls_with_volume_and_scale_to_zero_wins_when_idle():
    low, high = cost_row(100, INPUTS), cost_row(1_000_000, INPUTS)
    assert low["always_on_per_1000"] == pytest.approx(2.4 / 100 * 1000)
    assert low["scale_to_zero_per_1000"] < low["always_on_per_1000"]
    assert high["always_on_per_1000"] < low["always_on_per_1000"]
    # At the VM's own vCPU price, pods billed only in the active hours for their CPU request never cost more.
    assert break_even_volume(INPUTS) is None
    managed = CostInputs(**{**INPUTS.__dict__, "serverless_premium": 3.0})  # a managed platform's vCPU-second
    even = break_even_volume(managed)
    assert even is not None and 1_000 < even < 1e9
    assert scale_to_zero_per_day(even * 0.9, managed)["cost"] < always_on_per_day(even * 0.9, managed)["cost"]
    assert scale_to_zero_per_day(even * 1.1, managed)["cost"] >= always_on_per_day(even * 1.1, managed)["cost"]
    # A vCPU-second costs the VM's price / vCPUs both ways: the price scales every cost, not the break-even.
    dearer = CostInputs(**{**managed.__dict__, "vm_price_per_hour": 0.30})
    assert cost_row(300, dearer)["scale_to_zero_per_day"] == pytest.approx(3 * cost_row(300, managed)[
        "scale_to_zero_per_day"], rel=1e-3)
    assert break_even_volume(dearer) == pytest.approx(even, rel=1e-3)


def test_scale_report_reprices_a_measurement_into_json_markdown_and_a_plot(tmp_path, capsys):
    import json
    from dataclasses import asdict

    from triage.cli import main

    measurement = {"started": "2026-01-01T00:00:00Z", "machine": "test", "model": "tiny",
                   "levels": [asdict(level) for level in CURVE], "cpu_s_per_prediction": [0.004, 0.005, 0.006],
                   "cold_start_s": [0.4, 0.5, 0.9]}
    (tmp_path / "earlier.json").write_text(json.dumps({"measurement": measurement}))
    out = tmp_path / "scale"
    assert main(["scale-report", "--from", str(tmp_path / "earlier.json"), "--out", str(out), "--peak-rps", "1000",
                 "--vm-price-per-hour", "0.2", "--serverless-premium", "3"]) == 0
    report = json.loads((out / "scale.json").read_text())
    assert report["autoscaling"] == {"target": 2, "containerConcurrency": 4, "max-scale": 7, "peak_rps": 1000.0}
    assert report["cpu_s_per_prediction"]["median"] == 0.005 and report["cold_start_s"]["median"] == 0.5
    inputs = CostInputs(cpu_s_per_prediction=0.005, vm_price_per_hour=0.2, pod_cpu=0.5, cold_start_s=0.5,
                        serverless_premium=3.0)
    assert [row["predictions_per_day"] for row in report["cost"]][:3] == [10, 30, 100]
    assert report["cost"][2] == cost_row(100, inputs)
    assert report["break_even_per_day"] == pytest.approx(break_even_volume(inputs))
    assert (out / "cost.png").read_bytes().startswith(b"\x89PNG")
    table = (out / "scale.md").read_text()
    assert "`containerConcurrency` **4**" in table and "| 1,000,000 |" in table
    assert "report:" in capsys.readouterr().out


def test_scale_report_refuses_bad_options(capsys):
    from triage.cli import main

    assert main(["scale-report", "--levels", "1,x"]) == 2
    assert main(["scale-report", "--vm-price-per-hour", "0"]) == 2
    assert main(["scale-report", "--from", "/no/such.json"]) == 2
    assert "--from /no/such.json: no such file" in capsys.readouterr().err
