"""`triage scale-report`: where one predict process saturates, the Knative scaling it implies, cost vs volume.

Starts predict alone in the local stack, as it is deployed (its request threads from `shared.topology`), pins it
to `--cpus` CPUs (default 1: its pod's CPU limit in the manifests) and the load generator to the others, then
runs the closed loop (`run_load`) at each `--levels` concurrency, reading the process tree's CPU time around each
run (CPU-seconds per prediction). Restarts predict `--cold-starts` times for the cold start. Each level runs
`--repeats` times and keeps its fastest run: on a shared machine other work only ever slows a run down.
CPU-seconds are not disturbed that way: they count every run.
The derivation and the cost model are `load_tests.scale`'s. Writes scale.json, scale.md and cost.png under --out
(reports/scale).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from load_tests.scale import (
    PEAK_RPS,
    CostInputs,
    Level,
    as_dicts,
    break_even_volume,
    cost_table,
    derive_autoscaling,
    saturation_concurrency,
)
from shared.errors import UserError
from triage.config import TriageEnv

__all__ = ["add_arguments", "markdown", "plot", "run"]

VOLUMES = (10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model to measure (default $MODEL_URI, else one trained first on phantoms)")
    parser.add_argument("--images", type=Path, help="the request body: the first image of a folder or .npz "
                        "(default a phantom)")
    parser.add_argument("--levels", default="1,2,4,8,16,32", help="concurrencies (default 1,2,4,8,16,32)")
    parser.add_argument("--requests", type=int, default=400, help="requests per level (default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per level, the fastest kept (default 3)")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs predict is pinned to (default 1, its pod's limit)")
    parser.add_argument("--cold-starts", type=int, default=3, help="restarts of predict to time (default 3)")
    parser.add_argument("--peak-rps", type=float, default=PEAK_RPS, help=f"design peak of predict requests/s, for "
                        f"max-scale (default {PEAK_RPS:g})")
    parser.add_argument("--vm-price-per-hour", type=float, default=0.10, help="the always-on VM's price per hour "
                        "(default 0.10, e.g. USD for 2 vCPU / 4 GiB; use your cloud's)")
    parser.add_argument("--vm-vcpus", type=int, default=2, help="the VM's vCPUs (default 2)")
    parser.add_argument("--serverless-premium", type=float, default=1.0, help="a pod's vCPU-second price over the "
                        "VM's (default 1: self-hosted Knative on the same VMs; ~2-3 on a managed platform)")
    parser.add_argument("--active-hours", type=float, default=12.0, help="hours a day the predictions arrive in "
                        "(default 12)")
    parser.add_argument("--scale-down-delay", type=float, default=90.0, help="seconds a pod stays after its last "
                        "request (default 90: Knative's stable window 60 + scale-to-zero grace 30)")
    parser.add_argument("--from", dest="from_report", type=Path, help="re-price the measurement of an earlier "
                        "scale.json (no stack, no load): the cost and max-scale options apply anew")
    parser.add_argument("--out", type=Path, default=Path("reports/scale"), help="report folder (default reports/scale)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line last")


def _tree(pid: int) -> list[Any]:
    import psutil

    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


def _cpu_seconds(pid: int) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in _tree(pid))


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of the process tree onto `cpus` (threads made later inherit it from their maker)."""
    for process in _tree(pid):
        for thread in process.threads():
            os.sched_setaffinity(thread.id, cpus)


def _predict_cpu_request() -> float:
    from infra_pulumi.manifests.functions import FUNCTIONS

    request = next(f for f in FUNCTIONS if f.name == "predict").cpu[0]
    return float(request[:-1]) / 1000 if request.endswith("m") else float(request)


def _measure(args: argparse.Namespace, levels: list[int], allowed: list[int]) -> dict[str, Any]:
    """Predict alone, pinned: the closed loop at each level, CPU-seconds per prediction, cold starts."""
    from load_tests.images import load_images
    from load_tests.loadtest import run_load
    from triage.stack.models import phantom_data, train_first_model
    from triage.stack.ports import StackPorts
    from triage.stack.stack import Stack, StackConfig

    env = TriageEnv.from_env()
    run_dir = args.out / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    child_env = {"MLFLOW_TRACKING_URI": f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"}
    model_uri = args.model or env.model_uri
    if model_uri is None:
        print("no --model / MODEL_URI: training a model on phantoms first (about a minute)", file=sys.stderr)
        train_first_model(run_dir, child_env)
        model_uri = str(sorted((run_dir / "models").iterdir())[-1].resolve())
    image = load_images(args.images or phantom_data(run_dir, {**os.environ, **child_env}), 1)[0]
    server_cpus = set(allowed[: args.cpus])
    client_cpus = set(allowed[args.cpus:]) or set(allowed)
    config = StackConfig(run_dir=run_dir, model_uri=model_uri, functions=("predict",), ports=StackPorts.free(),
                         mlflow=False, prometheus=False,
                         extra_env={"API_RATE_PER_S": "1000000", "API_RATE_BURST": "1000000"})
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    measured: list[Level] = []
    cpu_per_prediction: list[float] = []
    with Stack(config, echo=sys.stderr, env=env) as stack:
        url = stack.function_urls["predict"] + "/"
        pid = stack.supervisor.pids()["predict"]
        _pin(pid, server_cpus)
        os.sched_setaffinity(0, client_cpus)  # the load threads, started below, inherit it
        try:
            for concurrency in levels:
                print(f"concurrency {concurrency} ({args.repeats} runs) ...", file=sys.stderr)
                warmup = concurrency * max(1, 20 // concurrency)  # what run_load sends before measuring
                runs, used, sent = [], 0.0, 0
                for _ in range(args.repeats):
                    before = _cpu_seconds(pid)
                    result = run_load(url, image.data, requests=args.requests, concurrency=concurrency,
                                      content_type=image.content_type, warmup=20, token=stack.api_token)
                    used += _cpu_seconds(pid) - before
                    sent += args.requests + warmup
                    runs.append(result.summary())
                # The least disturbed run (a shared machine only ever slows a run down), and every error of any.
                best = max(runs, key=lambda summary: summary["throughput_rps"] or 0.0)
                errors = sum(sum(summary["errors"].values()) for summary in runs)
                measured.append(Level(concurrency, best["throughput_rps"] or 0.0, best["p50_ms"] or 0.0,
                                      best["p99_ms"] or 0.0, errors))
                cpu_per_prediction.append(round(used / sent, 6))
            cold = []
            for _ in range(args.cold_starts):
                stack.kill("predict")
                cold.append(round(stack.restart("predict"), 3))
        finally:
            os.sched_setaffinity(0, set(allowed))
    return {"started": started, "model": model_uri,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (predict pinned to {args.cpus}), Python "
                       f"{platform.python_version()}",
            "levels": as_dicts(measured), "cpu_s_per_prediction": cpu_per_prediction, "cold_start_s": cold}


def run(args: argparse.Namespace) -> int:
    try:
        levels = sorted({int(part) for part in args.levels.split(",") if part.strip()})
    except ValueError:
        raise UserError(f"--levels {args.levels!r}: not a comma-separated list of whole numbers") from None
    allowed = sorted(os.sched_getaffinity(0))
    if not levels or not all(1 <= c <= 64 for c in levels) or not 20 <= args.requests <= 20_000:
        raise UserError("--levels each 1..64, --requests 20..20000")
    if not 1 <= args.cpus <= len(allowed) or not 1 <= args.cold_starts <= 10 or not 1 <= args.repeats <= 10:
        raise UserError(f"--cpus 1..{len(allowed)} (this machine's), --cold-starts 1..10, --repeats 1..10")
    if (args.vm_price_per_hour <= 0 or args.vm_vcpus < 1 or args.peak_rps <= 0 or not 0 < args.active_hours <= 24
            or args.serverless_premium <= 0):
        raise UserError("--vm-price-per-hour, --peak-rps and --serverless-premium > 0, --vm-vcpus >= 1, "
                        "--active-hours 0..24")
    if args.from_report is not None:  # re-price a measurement: no stack, no load
        if not args.from_report.is_file():
            raise UserError(f"--from {args.from_report}: no such file")
        measurement = json.loads(args.from_report.read_text())["measurement"]
    else:
        measurement = _measure(args, levels, allowed)
    measured = [Level(**level) for level in measurement["levels"]]
    scaling = derive_autoscaling(measured, peak_rps=args.peak_rps)
    inputs = CostInputs(cpu_s_per_prediction=statistics.median(measurement["cpu_s_per_prediction"]),
                        vm_price_per_hour=args.vm_price_per_hour, vm_vcpus=args.vm_vcpus,
                        pod_cpu=_predict_cpu_request(), scale_down_delay_s=args.scale_down_delay,
                        cold_start_s=statistics.median(measurement["cold_start_s"]), active_hours=args.active_hours,
                        serverless_premium=args.serverless_premium)
    report: dict[str, Any] = {
        "started": measurement["started"], "machine": measurement["machine"], "model": measurement["model"],
        "measurement": measurement, "levels": measurement["levels"],
        "cpu_s_per_prediction": {"median": round(inputs.cpu_s_per_prediction, 6),
                                 "by_level": measurement["cpu_s_per_prediction"]},
        "cold_start_s": {"median": round(inputs.cold_start_s, 3), "runs": measurement["cold_start_s"]},
        "saturation_concurrency": saturation_concurrency(measured),
        "autoscaling": {"target": scaling.target, "containerConcurrency": scaling.container_concurrency,
                        "max-scale": scaling.max_scale, "peak_rps": args.peak_rps},
        "cost_inputs": {**inputs.__dict__, "vcpu_price_per_s": inputs.vcpu_price_per_s},
        "cost": cost_table(VOLUMES, inputs), "break_even_per_day": break_even_volume(inputs),
    }
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(report, indent=2))
    (out / "scale.md").write_text(markdown(report))
    plot(report, out / "cost.png")
    print(markdown(report))
    print(f"report: {out / 'scale.md'}, {out / 'scale.json'}, {out / 'cost.png'}")
    if args.json:
        print(json.dumps(report))
    return 0


def markdown(report: dict[str, Any]) -> str:
    scaling, inputs = report["autoscaling"], report["cost_inputs"]
    lines = [f"# Scale and cost ({report['started']}, {report['machine']})", "",
             "| concurrency | throughput (req/s) | p50 (ms) | p99 (ms) | errors |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {lv['concurrency']} | {lv['throughput_rps']:g} | {lv['p50_ms']:g} | {lv['p99_ms']:g} | "
              f"{lv['errors']} |" for lv in report["levels"]]
    lines += ["", f"Saturates at concurrency **{report['saturation_concurrency']}**; CPU per prediction "
              f"{report['cpu_s_per_prediction']['median'] * 1000:.2f} ms; cold start {report['cold_start_s']['median']}"
              " s (median).", "",
              f"Knative: `containerConcurrency` **{scaling['containerConcurrency']}**, "
              f"`autoscaling.knative.dev/target` **{scaling['target']}**, `max-scale` **{scaling['max-scale']}** "
              f"(peak {scaling['peak_rps']:g} req/s).",
              "", f"Cost inputs: VM {inputs['vm_price_per_hour']:g}/h for {inputs['vm_vcpus']} vCPU, pod "
              f"{inputs['pod_cpu']:g} vCPU (x{inputs['serverless_premium']:g} the VM's vCPU price), scale-down delay "
              f"{inputs['scale_down_delay_s']:g} s, predictions over "
              f"{inputs['active_hours']:g} h a day.", "",
              "| predictions / day | scale to zero, per 1,000 | always-on VM, per 1,000 | scale to zero / day | "
              "VM / day | pod-hours / day | cold starts / day |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {row['predictions_per_day']:,} | {row['scale_to_zero_per_1000']:.4f} | "
              f"{row['always_on_per_1000']:.4f} | {row['scale_to_zero_per_day']:.3f} | "
              f"{row['always_on_per_day']:.2f} | "
              f"{row['pod_hours_per_day']:.2f} | {row['cold_starts_per_day']:g} |" for row in report["cost"]]
    even = report["break_even_per_day"]
    lines += ["", f"Scale to zero is cheaper below **{even:,.0f} predictions a day**; the VM above." if even else
              "Scale to zero is cheaper at every volume (up to 10^9 a day): pods are billed only in the active hours "
              "and only their CPU request."]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path:
    """Left: throughput and p99 against concurrency, the saturation marked; right: cost per 1,000 vs volume."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    levels = report["levels"]
    concurrency = [lv["concurrency"] for lv in levels]
    left.plot(concurrency, [lv["throughput_rps"] for lv in levels], "-o", color="tab:blue", label="throughput")
    left.set(xscale="log", xlabel="requests in flight (concurrency)", ylabel="throughput (req/s)",
             title="one predict process")
    left.set_xticks(concurrency, [str(c) for c in concurrency])
    left.axvline(report["saturation_concurrency"], color="gray", ls=":", label="saturation")
    twin = left.twinx()
    twin.plot(concurrency, [lv["p99_ms"] for lv in levels], "--s", color="tab:red", label="p99")
    twin.set_ylabel("p99 latency (ms)")
    left.legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    volumes = [row["predictions_per_day"] for row in report["cost"]]
    right.plot(volumes, [row["scale_to_zero_per_1000"] for row in report["cost"]], "-o", label="Knative, scale to zero")
    right.plot(volumes, [row["always_on_per_1000"] for row in report["cost"]], "-s", label="always-on VM")
    if report["break_even_per_day"]:
        right.axvline(report["break_even_per_day"], color="gray", ls=":", label="break-even")
    right.set(xscale="log", yscale="log", xlabel="predictions per day", ylabel="cost per 1,000 predictions",
              title=f"VM {report['cost_inputs']['vm_price_per_hour']:g}/h")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
