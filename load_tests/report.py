"""The benchmark's report: bench.md (tables, targets) and latency.png (warm latency CDF) from its JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from load_tests.bench import PEER_TARGETS, TARGETS
from load_tests.loadtest import LoadResult
from load_tests.memory import MEMORY_LIMIT_MB
from load_tests.pacs import PACS_TARGET_P95_S

__all__ = ["burst_lines", "cold_floor", "markdown", "memory_lines", "pacs_lines", "peer_targets", "plot_latency",
           "ratios", "side_by_side_lines", "targets"]

OURS, PEER, ONNX_FLAVOR = "xray_triage", "mlflow_png_pyfunc", "mlflow_onnx_flavor"
_LABELS = {OURS: "xray-triage predict (PNG body)", PEER: "MLflow serve, pyfunc decoding the same PNG (base64 JSON)",
           ONNX_FLAVOR: "MLflow serve, onnx flavor (JSON tensor)"}


def targets(report: dict[str, Any]) -> dict[str, tuple[float, float | None]]:
    """metric → (target, measured) for the report's warm, cold-start and upload-to-result results."""
    warm = report["warm"]
    return {
        "warm_p50_ms_c1 (function)": (TARGETS["warm_p50_ms_c1"], warm["function_c1"]["p50_ms"]),
        "warm_p99_ms_c1 (function)": (TARGETS["warm_p99_ms_c1"], warm["function_c1"]["p99_ms"]),
        "warm_p50_ms_c1 (gateway)": (TARGETS["warm_p50_ms_c1"], warm["gateway_c1"]["p50_ms"]),
        "warm_p99_ms_c1 (gateway)": (TARGETS["warm_p99_ms_c1"], warm["gateway_c1"]["p99_ms"]),
        "cold_start_s": (TARGETS["cold_start_s"], report["cold_start"]["median_s"]),
        "upload_to_result_p95_s": (TARGETS["upload_to_result_p95_s"], report["upload_to_result"]["p95_s"]),
        **({"burst_flag_p95_s": (TARGETS["burst_flag_p95_s"], report["upload_burst"]["flag_p95_s"])}
           if "upload_burst" in report else {}),
        **({"peak_rss_mb (any request, 7000x7000)": (MEMORY_LIMIT_MB, report["memory"]["max_peak_mb"])}
           if "memory" in report else {}),
        **({"pacs_cstore_to_sr_p95_s": (PACS_TARGET_P95_S, report["pacs"]["p95_s"] if not report["pacs"]["failures"]
                                        else None)}
           if "pacs" in report and "skipped" not in report["pacs"] else {}),
    }


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 3) if ours is not None and theirs else None


def _cold_s(report: dict[str, Any], name: str) -> float | None:
    if name == OURS:
        return report.get("cold_start", {}).get("median_s")
    return report["side_by_side"].get("cold_start_s", {}).get(name)


def ratios(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Ours over each peer (latency, CPU, cold start: lower is better; c=8 req/s: higher is better) and ours
    over bare `session.run` at c=1 p50, from the side-by-side rounds."""
    systems = report["side_by_side"]["systems"]
    ours = systems[OURS]
    out: dict[str, dict[str, float | None]] = {
        "bare_session_run": {"c1_p50": _ratio(ours["c1"]["p50_ms"], report["bare_onnx"]["session_run"]["p50"]),
                             "c1_p99": _ratio(ours["c1"]["p99_ms"], report["bare_onnx"]["session_run"]["p99"])}}
    for name, theirs in systems.items():
        if name == OURS:
            continue
        out[name] = {
            "c1_p50": _ratio(ours["c1"]["p50_ms"], theirs["c1"]["p50_ms"]),
            "c1_p99": _ratio(ours["c1"]["p99_ms"], theirs["c1"]["p99_ms"]),
            "c8_rps": _ratio(ours["c8"]["throughput_rps"], theirs["c8"]["throughput_rps"]),
            "c8_p99": _ratio(ours["c8"]["p99_ms"], theirs["c8"]["p99_ms"]),
            "cpu_c1": _ratio(ours["c1"]["cpu_ms_per_request_total"], theirs["c1"]["cpu_ms_per_request_total"]),
            "cold_start": _ratio(_cold_s(report, OURS), _cold_s(report, name)),
        }
    return out


def peer_targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 12's side-by-side targets: name → {"op", "target", "measured", "met"}; {} without the side-by-side.
    The peer is the PNG pyfunc on `mlflow models serve`; the ratios are ours / theirs."""
    if "side_by_side" not in report:
        return {}
    table = ratios(report)
    peer = table.get(PEER, {})
    records = report["side_by_side"]["systems"][OURS].get("request_records", {})
    pending = [value for value in records.get("pending_after_s", []) if value is not None]
    rows = {"c1_p50_vs_bare": ("<=", table["bare_session_run"]["c1_p50"])}
    if peer:
        rows |= {"c1_p50_vs_peer": ("<=", peer["c1_p50"]), "c1_p99_vs_peer": ("<=", peer["c1_p99"]),
                 "c8_rps_vs_peer": (">=", peer["c8_rps"]), "cpu_vs_peer": ("<=", peer["cpu_c1"])}
    if records:
        rows |= {"backlog_after_1s": ("<=", max(pending) if pending else None),
                 "records_dropped_c8": ("<=", records.get("dropped", records.get("failed")))}
    out = {}
    for name, (op, measured) in rows.items():
        target = PEER_TARGETS[name]
        met = measured is not None and (measured <= target if op == "<=" else measured >= target)
        out[name] = {"op": op, "target": target, "measured": measured, "met": met}
    return out


def side_by_side_lines(report: dict[str, Any]) -> list[str]:
    """Issue 12's table: bare `session.run`, predict and the MLflow peers measured side by side, with the ratios."""
    side = report.get("side_by_side")
    if not side:
        return []
    bare = report["bare_onnx"]["session_run"]
    title = ("## Side by side with `mlflow models serve` (same ONNX model, same image, interleaved rounds)"
             if len(side["systems"]) > 1 else "## Predict beside bare `session.run` (--no-peers)")
    warm = side.get("warmup_requests")
    lines = [title, "",
             (f"After {warm} warm-up requests per system and concurrency that count nowhere (one-time costs out), "
              if warm else "")
             + f"{side['rounds']} rounds of {', '.join(side['systems'])} in turn at c=1 then c=8, {side['requests']} "
             "requests per system and concurrency in all; server CPU is the server's process tree (ours: the "
             "function plus the S3 server's share, written as function + S3).", "",
             "| system | c=1 p50 / p99 ms | c=8 req/s (p99 ms) | cold start s | server CPU ms / request (c=1) |",
             "| --- | --- | --- | --- | --- |",
             f"| bare `session.run`, batch 1 | {bare['p50']} / {bare['p99']} | — | — | — |"]
    for name, rows in side["systems"].items():
        parts = rows["c1"]["cpu_ms_per_request"]
        cpu = " + ".join(str(parts[part]) for part in ("server", "s3") if part in parts)
        cpu += f" = {rows['c1']['cpu_ms_per_request_total']}" if len(parts) > 1 else ""
        errors = sum(sum(rows[c]["errors"].values()) for c in ("c1", "c8"))
        lines.append(f"| {_LABELS.get(name, name)} | {rows['c1']['p50_ms']} / {rows['c1']['p99_ms']} | "
                     f"{rows['c8']['throughput_rps']} ({rows['c8']['p99_ms']}) | {_cold_s(report, name)} | {cpu} |"
                     + (f" ({errors} errors)" if errors else ""))
    lines += ["", "Ratios, ours / theirs (below 1 is ours better; for c=8 req/s above 1 is):", "",
              "| versus | c=1 p50 | c=1 p99 | c=8 req/s | c=8 p99 | CPU / request | cold start |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in ratios(report).items():
        label = "bare `session.run`" if name == "bare_session_run" else _LABELS.get(name, name)
        cells = [row.get(key, "—") for key in ("c1_p50", "c1_p99", "c8_rps", "c8_p99", "cpu_c1", "cold_start")]
        lines.append(f"| {label} | " + " | ".join(str(cell) for cell in cells) + " |")
    records = side["systems"].get(OURS, {}).get("request_records")
    if records:
        lines += ["", f"Request records during the rounds: {records.get('answered', '?')} answers, "
                  f"{records['written']} records written in batches, {records['inline']} inline, "
                  f"{records.get('dropped', records['failed'])} dropped ({records['failed']} in failed write "
                  f"attempts, retried), {records['invalid']} invalid; left pending {records['settle_s']:g} s after "
                  f"each block: {records['pending_after_s']}."]
    return [*lines, ""]


def pacs_lines(pacs: dict[str, Any] | None) -> list[str]:
    """The PACS benchmark's line: C-STORE of a DX study to the SR stored in Orthanc (`load_tests.pacs`)."""
    if not pacs:
        return []
    if "skipped" in pacs:
        return [f"- PACS (C-STORE to the SR in Orthanc): skipped: {pacs['skipped']}"]
    failed = f"; {len(pacs['failures'])} failed: {'; '.join(pacs['failures'])}" if pacs["failures"] else ""
    return [f"- PACS: C-STORE of a {pacs['rows']:,} x {pacs['columns']:,} 16-bit DX ({pacs['bytes']:,} bytes) to the "
            f"SR stored in Orthanc: p50 {pacs['p50_s']} s, p95 {pacs['p95_s']} s, max {pacs['max_s']} s (n "
            f"{pacs['n']}, one at a time; the C-STORE itself p50 {pacs['cstore_p50_s']} s; target p95 <= "
            f"{pacs['target_p95_s']} s){failed}"]


def memory_lines(memory: dict[str, Any] | None) -> list[str]:
    """The peak-memory table: peak RSS of a fresh process per request type and image kind (`load_tests.memory`)."""
    if not memory:
        return []
    lines = [f"## Peak memory per request ({memory['side']} x {memory['side']} images, limit {memory['limit_mb']} MB)",
             "", "| request | image | bytes | RSS before (MB) | peak RSS (MB) |", "| --- | --- | --- | --- | --- |"]
    for row in memory["rows"]:
        if "peak_mb" in row:
            cells = (row["request"], row["kind"], row["bytes"], row["baseline_mb"], row["peak_mb"])
            lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
        else:
            lines.append(f"| {row['request']} | {row['kind']} | failed: {row['error']} | | |")
    return [*lines, "", f"within the limit: {'yes' if memory['within_limit'] else 'no'}", ""]


def cold_floor(cold: dict[str, Any]) -> str:
    """The floor beside the cold start: a bare process importing onnxruntime and opening the model."""
    floor = cold.get("floor")
    if not floor:
        return ""
    return (f"; its floor (a bare Python importing onnxruntime, opening the model, one run): median "
            f"{floor['median_s']} s, so the function adds {round(cold['median_s'] - floor['median_s'], 3)} s")


def burst_lines(burst: dict[str, Any] | None) -> list[str]:
    """The burst's flag (result with label and urgency) and heatmap times."""
    if not burst:
        return []
    return [f"- burst of {burst['n']} uploads at once: the flag (label, probability, urgent) p50 "
            f"{burst['flag_p50_s']} s, p95 {burst['flag_p95_s']} s, max {burst['flag_max_s']} s; the heatmap p95 "
            f"{burst['heatmap_p95_s']} s ({burst['heatmaps']} of {burst['n']} within the run)"]


def plot_latency(results: dict[str, LoadResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, result in results.items():
        values = np.sort(np.asarray(result.latencies) * 1000)
        if values.size:
            axis.plot(values, np.arange(1, values.size + 1) / values.size, label=name)
    axis.set_xscale("log")
    axis.set_xlabel("latency (ms, log scale)")
    axis.set_ylabel("fraction of requests")
    axis.set_title("warm HTTP predict latency (CDF)")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown(report: dict[str, Any]) -> str:
    lines = ["# xray-triage benchmark", "",
             f"Run {report['started']} on {report['machine']}; model {report['model']['uri']} "
             f"({report['model']['params']:,} parameters, image {report['model']['image_size']}, "
             f"synthetic data: {report['model']['synthetic_data']}); images: {report['images']}.", "",
             "## Warm HTTP predict", "", "| path | concurrency | requests | p50 ms | p99 ms | req/s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, row in report["warm"].items():
        lines.append(f"| {name.rsplit('_c', 1)[0]} | {row['concurrency']} | {row['requests']} | {row['p50_ms']} "
                     f"| {row['p99_ms']} | {row['throughput_rps']} |")
    floor = report["bare_onnx"]
    lines += ["", f"Bare ONNX Runtime `session.run` (1 thread, same input): p50 {floor['session_run']['p50']} ms, "
              f"p99 {floor['session_run']['p99']} ms; decode + preprocess + run: p50 "
              f"{floor['decode_preprocess_run']['p50']} ms.",
              f"HTTP overhead over the bare call at concurrency 1 (p50): straight to the function "
              f"{report['overhead_ms']['function_c1']} ms, through the gateway "
              f"{report['overhead_ms']['gateway_c1']} ms.", "", *side_by_side_lines(report),
              "## Cold start and upload to result", "",
              f"- cold start (process start → first successful prediction): median "
              f"{report['cold_start']['median_s']} s over {len(report['cold_start']['samples_s'])} "
              f"({report['cold_start']['samples_s']})" + cold_floor(report["cold_start"]),
              f"- upload to result through the bucket: p50 {report['upload_to_result']['p50_s']} s, p95 "
              f"{report['upload_to_result']['p95_s']} s, max {report['upload_to_result']['max_s']} s "
              f"(n {report['upload_to_result']['n']})", *burst_lines(report.get("upload_burst")),
              *pacs_lines(report.get("pacs")), "",
              "## Explanation faithfulness (deletion ↓ / insertion ↑ AUC, predicted-class probability)", "",
              "| map | deletion AUC | insertion AUC |", "| --- | --- | --- |"]
    for name in ("rollout", "occlusion", "random"):
        row = report["faithfulness"][name]
        lines.append(f"| {name} | {row['deletion_auc']} | {row['insertion_auc']} |")
    lines += ["", f"over {report['faithfulness']['images']} images, {report['faithfulness']['steps']} steps.", ""]
    lines += memory_lines(report.get("memory"))
    lines += ["## Targets", "", "| metric | target | measured | met |", "| --- | --- | --- | --- |"]
    for name, (target, measured) in report["targets"].items():
        met = "yes" if measured is not None and measured <= target else "no"
        lines.append(f"| {name} | <= {target} | {measured} | {met} |")
    for name, row in report.get("peer_targets", {}).items():
        lines.append(f"| {name} | {row['op']} {row['target']} | {row['measured']} | {'yes' if row['met'] else 'no'} |")
    lines += ["", "![latency](latency.png)", ""]
    return "\n".join(lines)
