"""Measure latency, cold start, upload-to-result and explanation faithfulness; write a report.

One run, on this machine: a bare ONNX Runtime call on the same input (the floor), warm HTTP predict at
concurrency 1 and 8 (straight to the function and through the gateway), cold start (process start to first
successful prediction), upload-to-result through the bucket, and the deletion / insertion AUC of attention
rollout, occlusion and random maps. Writes bench.json, bench.md and latency.png under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from load_tests.loadtest import LoadResult, percentiles, run_load, sample_png
from shared.errors import UserError

__all__ = ["add_arguments", "bare_onnx", "cold_start", "faithfulness", "run", "upload_to_result"]

TARGETS = {"warm_p50_ms_c1": 5.0, "warm_p99_ms_c1": 15.0, "cold_start_s": 1.0, "upload_to_result_p95_s": 2.0}


def _local_model(model_uri: str, cache_dir: Path) -> tuple[Path, Any]:
    from shared.config import Settings
    from shared.runtime import resolve_model

    resolved = resolve_model(Settings(model_uri=model_uri, model_cache_dir=cache_dir))
    return resolved.onnx_path, resolved.card


def parameter_count(onnx_path: Path) -> int:
    """Weights in the ONNX graph (its initializers), e.g. ~1.2M for the default 28x28 ViT."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return int(sum(int(np.prod(init.dims)) for init in graph.initializer))


def bare_onnx(onnx_path: Path, png: bytes, image_size: int, runs: int = 500) -> dict[str, Any]:
    """The floor: session.run on the preprocessed input, one intra-op thread as the functions use."""
    import onnxruntime as ort

    from shared.imaging import decode_image, to_model_input

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batch = to_model_input(decode_image(png, "image/png"), image_size)[np.newaxis].astype(np.float32)
    for _ in range(20):
        session.run(["logits"], {name: batch})
    run_s, pipeline_s = [], []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(["logits"], {name: batch})
        run_s.append(time.perf_counter() - started)
    for _ in range(runs):  # decode + preprocess + run: what a request does besides HTTP
        started = time.perf_counter()
        x = to_model_input(decode_image(png, "image/png"), image_size)[np.newaxis].astype(np.float32)
        session.run(["logits"], {name: x})
        pipeline_s.append(time.perf_counter() - started)
    return {"session_run": percentiles(run_s), "decode_preprocess_run": percentiles(pipeline_s), "runs": runs}


def cold_start(stack: Any, png: bytes, repeats: int = 3) -> dict[str, Any]:
    """A fresh predict process: Popen → first 200 on POST / (polled every 10 ms), and → /healthz ready."""
    from triage.stack.processes import unused_port_block

    spec = stack.function_spec("predict")
    samples = []
    for _ in range(repeats):
        port = unused_port_block(1)[0]
        argv = [*spec.argv[:-1], str(port)]
        started = time.perf_counter()
        process = subprocess.Popen(argv, env={**os.environ, **spec.env}, cwd=spec.cwd, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        first_ok = None
        try:
            with httpx.Client(timeout=5) as client:
                deadline = started + 60
                while time.perf_counter() < deadline and process.poll() is None:
                    try:
                        response = client.post(f"http://127.0.0.1:{port}/", content=png,
                                               headers={"Content-Type": "image/png"})
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


def upload_to_result(stack: Any, images: list[bytes], gap_s: float = 0.2) -> dict[str, Any]:
    """Upload each image to inference-inputs and time until its result JSON is readable."""
    s3 = stack.s3()
    prefix = time.strftime("bench-%Y%m%d-%H%M%S")
    seconds = []
    for index, data in enumerate(images):
        key = f"{prefix}/{index}.png"
        started = time.perf_counter()
        s3.put_object(Bucket="inference-inputs", Key=key, Body=data, ContentType="image/png")
        deadline = started + 30
        while time.perf_counter() < deadline:
            try:
                s3.head_object(Bucket="inference-results", Key=f"{key}.json")
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
    from shared.runtime import TriageModel

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


def _plot(results: dict[str, LoadResult], path: Path) -> None:
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


def _markdown(report: dict[str, Any]) -> str:
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
              f"({report['cold_start']['samples_s']})",
              f"- upload to result through the bucket: p50 {report['upload_to_result']['p50_s']} s, p95 "
              f"{report['upload_to_result']['p95_s']} s, max {report['upload_to_result']['max_s']} s "
              f"(n {report['upload_to_result']['n']})", "",
              "## Explanation faithfulness (deletion ↓ / insertion ↑ AUC, predicted-class probability)", "",
              "| map | deletion AUC | insertion AUC |", "| --- | --- | --- |"]
    for name in ("rollout", "occlusion", "random"):
        row = report["faithfulness"][name]
        lines.append(f"| {name} | {row['deletion_auc']} | {row['insertion_auc']} |")
    lines += ["", f"over {report['faithfulness']['images']} images, {report['faithfulness']['steps']} steps.", "",
              "## Targets", "", "| metric | target | measured | met |", "| --- | --- | --- | --- |"]
    for name, (target, measured) in report["targets"].items():
        met = "yes" if measured is not None and measured <= target else "no"
        lines.append(f"| {name} | <= {target} | {measured} | {met} |")
    lines += ["", "![latency](latency.png)", ""]
    return "\n".join(lines)


def _bench_images(data: Path | None, count: int, size: int) -> np.ndarray:
    """uint8 [N, H, W] images: the test split of `data` (the model's own kind of input), else phantoms."""
    if data is None:
        from training_jobs.phantom import make_phantoms

        return make_phantoms(count, size, 777, 0.5)[0]
    if not Path(data).is_file():
        raise UserError(f"--data {data}: no such file")
    with np.load(data) as arrays:
        split = next((f"{s}_images" for s in ("test", "val", "train") if f"{s}_images" in arrays), None)
        if split is None:
            raise UserError(f"--data {data}: no test_images / val_images / train_images array")
        return np.asarray(arrays[split][:count])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("reports/bench"), help="report folder (default reports/bench)")
    parser.add_argument("--model", default=os.environ.get("MODEL_URI") or None,
                        help="model to measure (default $MODEL_URI, else one trained first on --data or phantoms)")
    parser.add_argument("--requests", type=int, default=300, help="requests per warm-latency run (default 300)")
    parser.add_argument("--uploads", type=int, default=20, help="uploads for upload-to-result (default 20)")
    parser.add_argument("--cold-starts", type=int, default=3, help="fresh processes to time (default 3)")
    parser.add_argument("--faithfulness-images", type=int, default=16, help="images for the AUCs (default 16)")
    parser.add_argument("--data", type=Path, default=os.environ.get("DATA") or None,
                        help="take the images from this .npz's test split (default $DATA, else phantoms)")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")


def run(args: argparse.Namespace) -> int:
    from triage.stack.up import Stack, StackConfig, StackPorts, train_first_model

    if not 10 <= args.requests <= 5000 or not 2 <= args.uploads <= 200 or not 1 <= args.cold_starts <= 10:
        raise UserError("--requests 10..5000, --uploads 2..200, --cold-starts 1..10")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "run"
    model_uri = args.model
    if model_uri is None:
        print(f"no --model / MODEL_URI: training a model on {args.data or 'phantoms'} first (about a minute)",
              file=sys.stderr)
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"}
        run_dir.mkdir(parents=True, exist_ok=True)
        train_first_model(run_dir, env, data=args.data)
        model_uri = str(sorted((run_dir / "models").iterdir())[-1].resolve())
    cache = (run_dir / "model-cache").resolve()
    onnx_path, card = _local_model(model_uri, cache)
    size = card.image_size
    images = _bench_images(args.data, max(args.uploads, args.faithfulness_images), size)
    from triage.stack.demo import png

    pngs = [png(image) for image in images]
    body = sample_png(size=size)
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "images": f"test split of {args.data}" if args.data else "synthetic phantoms",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "model": {"uri": model_uri, "params": parameter_count(onnx_path), "image_size": size,
                  "synthetic_data": card.synthetic_data, "config": card.config},
    }
    print("bare ONNX Runtime ...", file=sys.stderr)
    report["bare_onnx"] = bare_onnx(onnx_path, body, size)
    config = StackConfig(run_dir=run_dir, model_uri=model_uri, functions=("predict", "minio_source", "ingest"),
                         ports=StackPorts.free(), mlflow=False, prometheus=False)
    loads: dict[str, LoadResult] = {}
    with Stack(config, echo=sys.stderr) as stack:
        for concurrency in (1, 8):
            for path, url in (("function", stack.function_urls["predict"] + "/"),
                              ("gateway", stack.urls["gateway"] + "/predict")):
                print(f"warm {path} at concurrency {concurrency} ...", file=sys.stderr)
                loads[f"{path}_c{concurrency}"] = run_load(url, body, requests=args.requests,
                                                           concurrency=concurrency, warmup=30)
        print("upload to result ...", file=sys.stderr)
        report["upload_to_result"] = upload_to_result(stack, pngs[: args.uploads])
        print("cold start ...", file=sys.stderr)
        report["cold_start"] = cold_start(stack, body, args.cold_starts)
    report["warm"] = {name: result.summary() for name, result in loads.items()}
    floor = report["bare_onnx"]["session_run"]["p50"]
    report["overhead_ms"] = {f"{name}": round(report["warm"][name]["p50_ms"] - floor, 3)
                             for name in ("function_c1", "gateway_c1")}
    print("explanation faithfulness ...", file=sys.stderr)
    report["faithfulness"] = faithfulness(model_uri, cache, list(images[: args.faithfulness_images]))
    report["targets"] = {
        "warm_p50_ms_c1 (function)": (TARGETS["warm_p50_ms_c1"], report["warm"]["function_c1"]["p50_ms"]),
        "warm_p99_ms_c1 (function)": (TARGETS["warm_p99_ms_c1"], report["warm"]["function_c1"]["p99_ms"]),
        "warm_p50_ms_c1 (gateway)": (TARGETS["warm_p50_ms_c1"], report["warm"]["gateway_c1"]["p50_ms"]),
        "warm_p99_ms_c1 (gateway)": (TARGETS["warm_p99_ms_c1"], report["warm"]["gateway_c1"]["p99_ms"]),
        "cold_start_s": (TARGETS["cold_start_s"], report["cold_start"]["median_s"]),
        "upload_to_result_p95_s": (TARGETS["upload_to_result_p95_s"], report["upload_to_result"]["p95_s"]),
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(_markdown(report))
    _plot(loads, out / "latency.png")
    print(_markdown(report))
    print(f"report: {out / 'bench.md'}, {out / 'bench.json'}, {out / 'latency.png'}")
    if args.json:
        print(json.dumps(report))
    return 0
