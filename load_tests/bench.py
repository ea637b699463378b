"""The benchmark's measurements: the bare ONNX Runtime floor, cold start and its floor, upload to result (one at a
time, and a burst: the flag and the heatmap apart), faithfulness.

Each takes what it measures as arguments (a model file, a command that starts a function, an S3 client, the
images), so it runs against the local stack or anything else; `triage bench` (triage/bench.py) starts the
processes, calls these and writes the report (`load_tests.report`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from load_tests.images import LoadImage
from load_tests.loadtest import LoadResult, percentiles, run_load
from load_tests.peers import tree_cpu_s
from shared.names import INPUT_BUCKET, RESULT_BUCKET, heatmap_key, result_key

__all__ = ["TARGETS", "System", "bare_onnx", "cold_start", "cold_start_floor", "faithfulness", "local_model",
           "parameter_count", "records_state", "side_by_side", "upload_burst", "upload_to_result"]

# Issue 12's targets: cold start <= 0.3 s (the floor, a bare process opening the model, measured ~0.26 s) and
# every urgent flag of a burst of 40 uploads within 2 s (p95).
TARGETS = {"warm_p50_ms_c1": 5.0, "warm_p99_ms_c1": 15.0, "cold_start_s": 0.3, "upload_to_result_p95_s": 2.0,
           "burst_flag_p95_s": 2.0}
# Issue 12's targets against the peers, measured side by side (`side_by_side`): ours / theirs.
PEER_TARGETS = {"c1_p50_vs_bare": 1.5, "c1_p50_vs_peer": 0.8, "c1_p99_vs_peer": 0.8, "c8_rps_vs_peer": 1.3,
                "cpu_vs_peer": 1.0, "backlog_after_1s": 0, "records_dropped_c8": 0}

_FLOOR_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
size = int(sys.argv[2])
session.run(["logits"], {session.get_inputs()[0].name: np.zeros((1, 1, size, size), np.float32)})
"""


def local_model(model_uri: str, cache_dir: Path) -> tuple[Path, Any]:
    """(ONNX file, model card) of `model_uri`, downloaded into `cache_dir` when remote."""
    from shared.config import Settings
    from shared.model_store import resolve_model

    resolved = resolve_model(Settings(model_uri=model_uri, model_cache_dir=cache_dir))
    return resolved.onnx_path, resolved.card


def parameter_count(onnx_path: Path) -> int:
    """Weights in the ONNX graph (its initializers), e.g. ~1.2M for the default 28x28 ViT."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return int(sum(int(np.prod(init.dims)) for init in graph.initializer))


def bare_onnx(onnx_path: Path, body: bytes, image_size: int, runs: int = 500,
              content_type: str = "image/png") -> dict[str, Any]:
    """The floor: session.run on the preprocessed input, one intra-op thread as the functions use."""
    import onnxruntime as ort

    from shared.imaging import decode_image, to_model_input

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = to_model_input(decode_image(body, content_type), image_size)[np.newaxis].astype(np.float32)
    for _ in range(20):
        session.run(["logits"], {name: batch})
    run_s, pipeline_s = [], []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(["logits"], {name: batch})
        run_s.append(time.perf_counter() - started)
    for _ in range(runs):  # decode + preprocess + run: what a request does besides HTTP
        started = time.perf_counter()
        x = to_model_input(decode_image(body, content_type), image_size)[np.newaxis].astype(np.float32)
        session.run(["logits"], {name: x})
        pipeline_s.append(time.perf_counter() - started)
    return {"session_run": percentiles(run_s), "decode_preprocess_run": percentiles(pipeline_s), "runs": runs}


def cold_start(argv: Callable[[int], Sequence[str]], env: Mapping[str, str], cwd: Path | None, body: bytes,
               ports: Sequence[int], content_type: str = "image/png", token: str | None = None) -> dict[str, Any]:
    """A fresh predict process per port: Popen of `argv(port)` → first 200 on POST / (polled every 10 ms)."""
    samples = []
    for port in ports:
        started = time.perf_counter()
        process = subprocess.Popen(list(argv(port)), env=dict(env), cwd=cwd, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        first_ok = None
        try:
            with httpx.Client(timeout=5) as client:
                deadline = started + 60
                while time.perf_counter() < deadline and process.poll() is None:
                    try:
                        response = client.post(f"http://127.0.0.1:{port}/", content=body,
                                               headers={"Content-Type": content_type,
                                                        **({"Authorization": f"Bearer {token}"} if token else {})})
                        if response.status_code == 200:
                            first_ok = time.perf_counter() - started
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.01)
        finally:
            os.killpg(process.pid, 15)
            process.wait(timeout=10)
        if first_ok is None:
            raise RuntimeError("a fresh predict process never answered 200 within 60 s")
        samples.append(first_ok)
    return {"samples_s": [round(s, 3) for s in samples], "median_s": round(float(np.median(samples)), 3)}


def cold_start_floor(onnx_path: Path, image_size: int, runs: int = 3) -> dict[str, Any]:
    """The floor under `cold_start`: a fresh Python that imports onnxruntime, opens the model and runs it once
    (Popen → exit), with nothing of the project, the HTTP framework or S3."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", _FLOOR_SCRIPT, str(onnx_path), str(image_size)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        samples.append(time.perf_counter() - started)
    return {"samples_s": [round(s, 3) for s in samples], "median_s": round(float(np.median(samples)), 3)}


def upload_burst(s3: Any, images: list[LoadImage], count: int = 40, timeout_s: float = 120) -> dict[str, Any]:
    """`count` uploads at once (the images repeated as needed): seconds from each upload until its result (the
    flag: label, probability, urgent) is listed, and until its heatmap is; one listing per poll."""
    prefix = time.strftime("burst-%Y%m%d-%H%M%S")
    uploaded: dict[str, float] = {}
    for index in range(count):
        image = images[index % len(images)]
        key = f"{prefix}/{index:03d}-{image.name}"
        s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=image.data, ContentType=image.content_type)
        uploaded[key] = time.perf_counter()
    flag: dict[str, float] = {}
    picture: dict[str, float] = {}
    deadline = time.perf_counter() + timeout_s
    while (len(flag) < count or len(picture) < count) and time.perf_counter() < deadline:
        now = time.perf_counter()
        listed = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=RESULT_BUCKET, Prefix=prefix + "/"):
            listed.update(item["Key"] for item in page.get("Contents", []))
        for key, at in uploaded.items():
            if key not in flag and result_key(key) in listed:
                flag[key] = now - at
            if key not in picture and heatmap_key(key) in listed:
                picture[key] = now - at
        time.sleep(0.02)
    if len(flag) < count:
        raise RuntimeError(f"{count - len(flag)} of {count} burst uploads got no result within {timeout_s:g} s")
    flags, pictures = np.asarray(list(flag.values())), np.asarray(list(picture.values()) or [np.nan])
    return {"n": count, "flag_p50_s": round(float(np.percentile(flags, 50)), 3),
            "flag_p95_s": round(float(np.percentile(flags, 95)), 3), "flag_max_s": round(float(flags.max()), 3),
            "heatmap_p95_s": round(float(np.nanpercentile(pictures, 95)), 3), "heatmaps": len(picture)}


def upload_to_result(s3: Any, images: list[LoadImage], gap_s: float = 0.2) -> dict[str, Any]:
    """Upload each image to the input bucket (with the S3 client `s3`) and time until its result is readable."""
    prefix = time.strftime("bench-%Y%m%d-%H%M%S")
    seconds = []
    for image in images:
        key = f"{prefix}/{image.name}"
        started = time.perf_counter()
        s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=image.data, ContentType=image.content_type)
        deadline = started + 30
        while time.perf_counter() < deadline:
            try:
                s3.head_object(Bucket=RESULT_BUCKET, Key=result_key(key))
                seconds.append(time.perf_counter() - started)
                break
            except s3.exceptions.ClientError:
                time.sleep(0.01)
        else:
            raise RuntimeError(f"no result for {key} within 30 s")
        time.sleep(gap_s)
    values = np.asarray(seconds)
    return {"n": len(seconds), "p50_s": round(float(np.percentile(values, 50)), 3),
            "p95_s": round(float(np.percentile(values, 95)), 3), "max_s": round(float(values.max()), 3)}


def faithfulness(model_uri: str, cache_dir: Path, images: list[np.ndarray], steps: int = 24) -> dict[str, Any]:
    """Mean deletion (lower is better) / insertion (higher is better) AUC of rollout, occlusion and random maps,
    scoring the predicted class's calibrated probability."""
    from shared.config import Settings
    from shared.explain import attention_rollout, deletion_insertion_auc, occlusion_map
    from shared.imaging import to_model_input
    from shared.model import TriageModel

    model = TriageModel(Settings(model_uri=model_uri, model_cache_dir=cache_dir))
    model.load()
    size = model.image_size
    patch = int(model.loaded_card.config.get("patch") or max(1, size // 7))
    rng = np.random.default_rng(0)
    scores: dict[str, list[tuple[float, float]]] = {"rollout": [], "occlusion": [], "random": []}
    for image in images:
        x = to_model_input(np.asarray(image, np.float32) / 255.0, size)
        positive = float(model.probabilities(x[np.newaxis])[0]) >= model.threshold

        def score(batch: np.ndarray, positive: bool = positive) -> np.ndarray:
            p = model.probabilities(batch)
            return p if positive else 1.0 - p

        _, attention = model.run(x[np.newaxis], with_attention=True)
        maps = {"rollout": attention_rollout(attention[0]),
                "occlusion": occlusion_map(score, x, patch=patch),
                "random": rng.random((size, size)).astype(np.float32)}
        for name, saliency in maps.items():
            scores[name].append(deletion_insertion_auc(score, x, saliency, steps))
    return {name: {"deletion_auc": round(float(np.mean([d for d, _ in values])), 4),
                   "insertion_auc": round(float(np.mean([i for _, i in values])), 4)}
            for name, values in scores.items()} | {"images": len(images), "steps": steps}


@dataclass
class System:
    """One server measured side by side: where to POST what, and the processes whose CPU it spends (by part)."""

    name: str
    url: str
    body: bytes
    content_type: str
    token: str | None = None
    cpu_pids: Mapping[str, Sequence[int]] = field(default_factory=dict)  # part ("server", "s3") → root pids
    metrics_url: str | None = None  # ours: /metrics, for the request records' queue and their outcomes


WARMUP_REQUESTS = 100  # per system and concurrency, before the measured rounds (side_by_side)
_RECORD_LINE = re.compile(r'^triage_request_records_(pending|total\{outcome="(\w+)"\})\s+([0-9.eE+-]+)$', re.M)


def records_state(metrics_url: str) -> dict[str, float]:
    """{"pending", "written", "inline", "failed", "invalid"} of the request records, from a function's /metrics."""
    text = httpx.get(metrics_url, timeout=10).text
    return {(outcome or "pending"): float(value) for _, outcome, value in _RECORD_LINE.findall(text)}


def side_by_side(systems: Sequence[System], *, requests: int, rounds: int = 3, concurrencies: Sequence[int] = (1, 8),
                 settle_s: float = 1.0, warmup_requests: int = WARMUP_REQUESTS,
                 ) -> tuple[dict[str, Any], dict[str, LoadResult]]:
    """First `warmup_requests` per system and concurrency that count nowhere: each server's one-time costs (lazy
    imports, its first S3 client, first allocations: ~0.25 s of CPU in ours, which spread over the 300 requests of
    a run added ~0.8 ms to its CPU per request) stay out of a steady-state comparison. Then interleaved rounds
    (A B C A B C ...) at each concurrency, `requests` per system and concurrency in all, so
    contention from anything else on the machine hits every system alike. Per system and concurrency: the merged
    latency summary, CPU ms per request of its processes (by part, and in all; over every request of the blocks,
    their warm-ups included, and for ours the settle after each block); for a system with `metrics_url`,
    the request records left pending `settle_s` after each block, and those dropped: answers (200) the blocks got
    that have no record written nor pending at the end (failed counts write attempts that were retried).
    Returns (that summary, the merged LoadResults by "<system>_c<concurrency>")."""
    loads: dict[str, dict[int, LoadResult]] = {s.name: {c: LoadResult(c) for c in concurrencies} for s in systems}
    cpu: dict[str, dict[int, dict[str, float]]] = {s.name: {c: {} for c in concurrencies} for s in systems}
    records: dict[str, dict[str, Any]] = {}
    share = [requests // rounds + (1 if i < requests % rounds else 0) for i in range(rounds)]
    if warmup_requests > 0:
        for system in systems:
            for concurrency in concurrencies:
                run_load(system.url, system.body, requests=max(warmup_requests, concurrency), concurrency=concurrency,
                         content_type=system.content_type, warmup=0, token=system.token)
        if any(system.metrics_url for system in systems):
            time.sleep(settle_s)  # their records written before the counters are read
    for system in systems:
        if system.metrics_url:
            records[system.name] = {"before": records_state(system.metrics_url), "pending_after_s": []}
    sent: dict[tuple[str, int], int] = {}  # requests each server answered in the blocks, warm-ups included
    for count in share:
        for concurrency in concurrencies:
            warmup = max(10, concurrency * 2)
            for system in systems:
                before = {part: tree_cpu_s(pids) for part, pids in system.cpu_pids.items()}
                block = run_load(system.url, system.body, requests=count, concurrency=concurrency,
                                 content_type=system.content_type, warmup=warmup, token=system.token)
                merged = loads[system.name][concurrency]
                merged.latencies += block.latencies
                merged.errors.update(block.errors)
                merged.revisions.update(block.revisions)
                merged.wall_s += block.wall_s
                key = (system.name, concurrency)
                sent[key] = sent.get(key, 0) + count + concurrency * max(1, warmup // concurrency)
                if system.metrics_url:
                    time.sleep(settle_s)  # the settle's CPU (the record queue draining) is the request's too
                for part, pids in system.cpu_pids.items():  # before reading /metrics, whose CPU is not
                    spent = tree_cpu_s(pids) - before[part]
                    cpu[system.name][concurrency][part] = cpu[system.name][concurrency].get(part, 0.0) + spent
                if system.metrics_url:
                    records[system.name]["pending_after_s"].append(records_state(system.metrics_url).get("pending"))
    out: dict[str, Any] = {"rounds": rounds, "requests": requests, "warmup_requests": warmup_requests, "systems": {}}
    for system in systems:
        rows = {}
        for concurrency in concurrencies:
            result = loads[system.name][concurrency]
            answered = max(1, sent[(system.name, concurrency)])
            parts = {part: round(seconds * 1000 / answered, 2)
                     for part, seconds in cpu[system.name][concurrency].items()}
            rows[f"c{concurrency}"] = {**result.summary(), "cpu_ms_per_request": parts,
                                       "cpu_ms_per_request_total": round(sum(parts.values()), 2)}
        out["systems"][system.name] = rows
        if system.name in records:
            after = records_state(system.metrics_url)  # type: ignore[arg-type]
            before = records[system.name]["before"]
            counts = {outcome: int(after.get(outcome, 0) - before.get(outcome, 0))
                      for outcome in ("written", "inline", "failed", "invalid")}
            answered = sum(sent[(system.name, c)] - sum(loads[system.name][c].errors.values()) for c in concurrencies)
            dropped = answered - counts["written"] - counts["inline"] - int(after.get("pending", 0))
            out["systems"][system.name]["request_records"] = {
                "pending_after_s": records[system.name]["pending_after_s"], "settle_s": settle_s, **counts,
                "answered": answered, "dropped": max(0, dropped)}
    return out, {f"{name}_c{c}": loads[name][c] for name in loads for c in concurrencies}
