"""The side-by-side rounds and their report: interleaved blocks, CPU per request, request records, ratios, targets."""

from __future__ import annotations

import json
import os

from load_tests.bench import PEER_TARGETS, System, side_by_side
from load_tests.report import markdown, peer_targets, ratios, side_by_side_lines
from tests.local_http import LocalServer, QuietHandler

_order: list[str] = []


class _Echo(QuietHandler):
    """POST: 200 with its name (the order the rounds reached each server); GET /metrics: request-record counters."""

    def do_POST(self) -> None:
        self.body()
        _order.append(self.server.name)  # type: ignore[attr-defined]
        self.reply(200, b"{}", "application/json")

    def do_GET(self) -> None:
        written = sum(1 for name in _order if name == "ours")
        text = (f'triage_request_records_pending 0.0\ntriage_request_records_total{{outcome="written"}} {written}.0\n'
                'triage_request_records_total{outcome="failed"} 0.0\n')
        self.reply(200, text.encode(), "text/plain")


def _server(name: str) -> LocalServer:
    server = LocalServer(_Echo)
    server.httpd.name = name  # type: ignore[attr-defined]
    return server


def test_rounds_interleave_the_systems_and_count_requests_cpu_and_records():
    _order.clear()
    ours, peer = _server("ours"), _server("peer")
    try:
        systems = [System("ours", ours.url + "/", b"x", "image/png", cpu_pids={"server": [os.getpid()]},
                          metrics_url=ours.url + "/metrics"),
                   System("peer", peer.url + "/", b"{}", "application/json", cpu_pids={"server": [os.getpid()]})]
        summary, loads = side_by_side(systems, requests=12, rounds=3, concurrencies=(1, 2), settle_s=0.0,
                                      warmup_requests=5)
    finally:
        ours.close()
        peer.close()
    assert set(loads) == {"ours_c1", "ours_c2", "peer_c1", "peer_c2"}
    for name in ("ours", "peer"):
        for c in (1, 2):
            row = summary["systems"][name][f"c{c}"]
            assert row["ok"] == 12 and row["errors"] == {} and row["cpu_ms_per_request_total"] > 0
    # Each server's warm-up first (5 at c=1, 5 at c=2), counted nowhere: the rows hold the 12 measured requests.
    first_peer = _order.index("peer")
    rounds_start = _order.index("ours", first_peer)
    assert first_peer >= 10 and rounds_start - first_peer >= 10 and set(_order[first_peer:rounds_start]) == {"peer"}
    # A B A B ...: the servers alternate block by block (warm-up requests included), never all of one first.
    rounds_order = _order[rounds_start:]
    changes = sum(1 for a, b in zip(rounds_order, rounds_order[1:], strict=False) if a != b)
    assert changes >= 2 * 3 * 2 - 1
    records = summary["systems"]["ours"]["request_records"]
    assert records["written"] == rounds_order.count("ours") and records["failed"] == 0  # the warm-ups' are not in it
    assert records["answered"] == records["written"] and records["dropped"] == 0  # every answer has its record
    assert len(records["pending_after_s"]) == 6 and "request_records" not in summary["systems"]["peer"]
    json.dumps(summary)  # the report's JSON


def _report() -> dict:
    def row(p50, p99, rps, cpu):
        return {"p50_ms": p50, "p99_ms": p99, "throughput_rps": rps, "errors": {}, "cpu_ms_per_request": cpu,
                "cpu_ms_per_request_total": round(sum(cpu.values()), 2)}

    return {
        "bare_onnx": {"session_run": {"p50": 2.0, "p99": 3.0}},
        "cold_start": {"median_s": 0.5},
        "side_by_side": {
            "rounds": 3, "requests": 300, "cold_start_s": {"mlflow_png_pyfunc": 5.0, "mlflow_onnx_flavor": 4.0},
            "systems": {
                "xray_triage": {"c1": row(4.0, 8.0, 200, {"server": 3.0, "s3": 2.0}),
                                "c8": row(30.0, 60.0, 400, {"server": 2.0, "s3": 2.0}),
                                "request_records": {"pending_after_s": [0.0, 3.0], "settle_s": 1.0, "written": 600,
                                                    "inline": 0, "failed": 0, "invalid": 0}},
                "mlflow_png_pyfunc": {"c1": row(8.0, 10.0, 100, {"server": 6.0}),
                                      "c8": row(40.0, 50.0, 250, {"server": 5.0})},
                "mlflow_onnx_flavor": {"c1": row(30.0, 40.0, 30, {"server": 25.0}),
                                       "c8": row(150.0, 200.0, 50, {"server": 25.0})},
            },
        },
    }


def test_the_ratios_and_the_issue_targets_from_a_side_by_side():
    report = _report()
    table = ratios(report)
    assert table["bare_session_run"]["c1_p50"] == 2.0
    assert table["mlflow_png_pyfunc"] == {"c1_p50": 0.5, "c1_p99": 0.8, "c8_rps": 1.6, "c8_p99": 1.2,
                                          "cpu_c1": round(5.0 / 6.0, 3), "cold_start": 0.1}
    targets = peer_targets(report)
    assert set(targets) == set(PEER_TARGETS)
    assert targets["c1_p50_vs_peer"]["met"] and targets["c8_rps_vs_peer"]["met"]  # 0.5 <= 0.8, 1.6 >= 1.3
    assert not targets["c1_p50_vs_bare"]["met"]  # 2.0 > 1.5
    assert targets["c1_p99_vs_peer"]["met"]  # 0.8 <= 0.8
    assert not targets["backlog_after_1s"]["met"] and targets["backlog_after_1s"]["measured"] == 3.0
    assert targets["records_dropped_c8"]["met"]
    assert peer_targets({"warm": {}}) == {}


def test_the_report_shows_the_side_by_side_table_with_its_ratios():
    report = _report()
    lines = side_by_side_lines(report)
    text = "\n".join(lines)
    assert "| xray-triage predict (PNG body) | 4.0 / 8.0 | 400 (60.0) | 0.5 | 3.0 + 2.0 = 5.0 |" in text
    assert "| MLflow serve, onnx flavor (JSON tensor) | 30.0 / 40.0 | 50 (200.0) | 4.0 | 25.0 |" in text
    assert "| bare `session.run` | 2.0 | 2.667 | — |" in text  # p50 and p99 over the bare call
    assert side_by_side_lines({"bare_onnx": {}}) == []
    report["peer_targets"] = peer_targets(report)
    full = {**report, "started": "now", "machine": "here", "images": "1",
            "model": {"uri": "m", "params": 1, "image_size": 28, "synthetic_data": True},
            "warm": {"function_c1": {"concurrency": 1, "requests": 1, "p50_ms": 4.0, "p99_ms": 8.0,
                                     "throughput_rps": 200}},
            "bare_onnx": {"session_run": {"p50": 2.0, "p99": 3.0}, "decode_preprocess_run": {"p50": 2.5}},
            "overhead_ms": {"function_c1": 2.0, "gateway_c1": 3.0},
            "cold_start": {"median_s": 0.5, "samples_s": [0.5]},
            "upload_to_result": {"p50_s": 0.2, "p95_s": 0.3, "max_s": 0.4, "n": 2},
            "faithfulness": {name: {"deletion_auc": 0.1, "insertion_auc": 0.2} for name in ("rollout", "occlusion",
                                                                                         "random")}
            | {"images": 1, "steps": 2},
            "targets": {"cold_start_s": (0.3, 0.5)}}
    text = markdown(full)
    assert "| c8_rps_vs_peer | >= 1.3 | 1.6 | yes |" in text and "| c1_p50_vs_bare | <= 1.5 | 2.0 | no |" in text
    assert "## Side by side with `mlflow models serve`" in text
