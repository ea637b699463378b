"""The benchmark's report: bench.md (tables, targets) and latency.png (warm latency CDF) from its JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from load_tests.bench import TARGETS
from load_tests.loadtest import LoadResult
from load_tests.memory import MEMORY_LIMIT_MB
from load_tests.pacs import PACS_TARGET_P95_S

__all__ = ["burst_lines", "cold_floor", "markdown", "memory_lines", "pacs_lines", "plot_latency", "targets"]


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
              f"{report['overhead_ms']['gateway_c1']} ms.",
              "", "## Cold start and upload to result", "",
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
    lines += ["", "![latency](latency.png)", ""]
    return "\n".join(lines)
