"""`triage bench`: measure latency, cold start, upload-to-result and explanation faithfulness; write a report.

One run, on this machine: a bare ONNX Runtime call on the same input (the floor), warm HTTP predict at
concurrency 1 and 8 (straight to the function and through the gateway), cold start (process start to first
successful prediction) beside its floor (a bare process opening the model), upload-to-result through the bucket
(one at a time, and a burst of --burst uploads: the flag and the heatmap timed apart), and the deletion /
insertion AUC of attention rollout, occlusion and random maps, and, when Orthanc is installed, the PACS path (C-STORE
of a 2,500 x 2,048 16-bit DX to the SR stored in Orthanc, one study at a time, on a second stack with the receiver,
export and Orthanc). With --peers (the default) predict is measured side by side with `mlflow models serve
--env-manager local` on the same ONNX model (its onnx flavor, and a ten-line PNG-decoding pyfunc; `load_tests.peers`)
in interleaved rounds: latency at c=1 and c=8, cold start and server CPU per request, with the ratios and issue 12's
targets. Writes bench.json, bench.md and latency.png under --out.

This module starts the processes (a model trained first when none is given, the local stack); the measuring
and the report are `load_tests`' (`load_tests.bench`, `load_tests.report`), which take the images from
`--images` (a folder of PNG / JPEG / DICOM files or an .npz), else the test split of `--data`, else phantoms
written by `triage phantom`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from load_tests.bench import (
    System,
    bare_onnx,
    cold_start,
    cold_start_floor,
    faithfulness,
    local_model,
    parameter_count,
    side_by_side,
    upload_burst,
    upload_to_result,
)
from load_tests.images import load_images
from load_tests.loadtest import LoadResult, run_load
from load_tests.memory import peak_memory
from load_tests.peers import PeerServer, build_peers, peer_bodies
from load_tests.report import markdown, peer_targets, plot_latency, targets
from shared.errors import UserError
from shared.imaging import decode_image, to_model_input
from triage.config import TriageEnv

__all__ = ["add_arguments", "pacs_benchmark", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("reports/bench"), help="report folder (default reports/bench)")
    parser.add_argument("--model", help="model to measure (default $MODEL_URI, else one trained first on --data or "
                        "phantoms)")
    parser.add_argument("--requests", type=int, default=300, help="requests per warm-latency run (default 300)")
    parser.add_argument("--uploads", type=int, default=20, help="uploads for upload-to-result (default 20)")
    parser.add_argument("--burst", type=int, default=40, help="uploads at once for the burst (default 40)")
    parser.add_argument("--cold-starts", type=int, default=3, help="fresh processes to time (default 3)")
    parser.add_argument("--faithfulness-images", type=int, default=16, help="images for the AUCs (default 16)")
    parser.add_argument("--data", type=Path, help="train on this .npz when there is no --model, and take the images "
                        "from its test split unless --images (default $DATA, else phantoms)")
    parser.add_argument("--images", type=Path, help="the images to send: a folder of PNG / JPEG / DICOM files or an "
                        ".npz (its test split); default the test split of --data, else phantoms")
    parser.add_argument("--pacs-studies", type=int, default=20, help="DX studies for the PACS benchmark, C-STORE "
                        "to the SR in Orthanc (default 20; 0 skips it; skipped too when Orthanc is not installed)")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="measure `mlflow models serve` (onnx flavor, PNG pyfunc) side by side (default on)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the side-by-side (default 3)")
    parser.add_argument("--quick", action="store_true", help="a short run for development: 60 requests per "
                        "system and concurrency, 5 uploads, a burst of 10, 1 cold start, 4 faithfulness images, no "
                        "PACS and no peak-memory runs")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")


def pacs_benchmark(model_uri: str, run_dir: Path, env: TriageEnv, studies: int,
                   images: list[Any] | None = None) -> dict[str, Any]:
    """`load_tests.pacs.cstore_to_sr` (DX studies of `images`, uint8 radiographs) on a stack of the receiver,
    minio-source, ingest, export and Orthanc;
    {"skipped": why} when Orthanc (with its DICOMweb plugin) is not installed or did not start."""
    from load_tests.pacs import cstore_to_sr
    from triage.stack.orthanc import INSTALL_HINT, OrthancPorts, orthanc_spec
    from triage.stack.ports import StackPorts
    from triage.stack.processes import unused_port_block
    from triage.stack.stack import Stack, StackConfig

    dicom_port, http_port, orthanc_dicom = unused_port_block(3)
    ports = OrthancPorts(http=http_port, dicom=orthanc_dicom, receiver=dicom_port)
    if orthanc_spec(run_dir, ports) is None:
        return {"skipped": INSTALL_HINT}
    config = StackConfig(run_dir=run_dir, model_uri=model_uri, functions=("minio_source", "ingest", "export"),
                         ports=StackPorts.free(), mlflow=False, prometheus=False, dicom_port=dicom_port,
                         orthanc=True, orthanc_ports=ports)
    with Stack(config, echo=sys.stderr, env=env) as stack:
        if "orthanc" not in stack.urls or "dicom" not in stack.urls:
            return {"skipped": "Orthanc or the DICOM receiver did not start (see the stack's log above)"}
        return cstore_to_sr(stack.urls["dicom"], ports.dicomweb_url, studies=studies, images=images)


def run(args: argparse.Namespace) -> int:
    from triage.stack.models import phantom_data, train_first_model
    from triage.stack.ports import StackPorts
    from triage.stack.processes import unused_port_block
    from triage.stack.stack import Stack, StackConfig

    env = TriageEnv.from_env()
    if args.quick:
        args.requests, args.uploads, args.burst, args.cold_starts = min(args.requests, 60), 5, 10, 1
        args.faithfulness_images, args.pacs_studies = 4, 0
    if not 1 <= args.rounds <= 10 or args.rounds > args.requests:
        raise UserError("--rounds 1..10, and at most --requests")
    if (not 10 <= args.requests <= 5000 or not 2 <= args.uploads <= 200 or not 1 <= args.cold_starts <= 10
            or not 1 <= args.burst <= 400 or not 0 <= args.pacs_studies <= 200):
        raise UserError("--requests 10..5000, --uploads 2..200, --cold-starts 1..10, --burst 1..400, "
                        "--pacs-studies 0..200")
    data, model_uri = args.data or env.data, args.model or env.model_uri
    if data is not None and not Path(data).is_file():
        raise UserError(f"--data {data}: no such file")
    out: Path = args.out
    run_dir = out / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    # The stack's children get this registry only; training (a child process too) logs there.
    child_env = {"MLFLOW_TRACKING_URI": f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"}
    if model_uri is None:
        print(f"no --model / MODEL_URI: training a model on {data or 'phantoms'} first (about a minute)",
              file=sys.stderr)
        train_first_model(run_dir, child_env, data=data)
        model_uri = str(sorted((run_dir / "models").iterdir())[-1].resolve())
    source = args.images or data or phantom_data(run_dir, {**os.environ, **child_env})
    images = load_images(source, max(args.uploads, args.faithfulness_images))
    cache = (run_dir / "model-cache").resolve()
    onnx_path, card = local_model(model_uri, cache)
    size = card.image_size
    body, content_type = images[0].data, images[0].content_type
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "images": f"{len(images)} from {source}" + (" (synthetic phantoms)" if source == run_dir / "phantom.npz"
                                                     else ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "model": {"uri": model_uri, "params": parameter_count(onnx_path), "image_size": size,
                  "synthetic_data": card.synthetic_data, "config": card.config},
    }
    print("bare ONNX Runtime ...", file=sys.stderr)
    report["bare_onnx"] = bare_onnx(onnx_path, body, size, content_type=content_type)
    if args.peers:
        print("peers: MLflow model folders (onnx flavor, PNG pyfunc) ...", file=sys.stderr)
        peer_dirs = build_peers(onnx_path, size, out / "peers")
        bodies = peer_bodies(body, to_model_input(decode_image(body, content_type), size))
    config = StackConfig(run_dir=run_dir, model_uri=model_uri, functions=("predict", "minio_source", "ingest"),
                         ports=StackPorts.free(), mlflow=False, prometheus=False)
    loads: dict[str, LoadResult] = {}
    with Stack(config, echo=sys.stderr, env=env) as stack, contextlib.ExitStack() as servers:
        pids = stack.supervisor.pids()
        predict_url = stack.function_urls["predict"]
        systems = [System("xray_triage", predict_url + "/", body, content_type, stack.api_token,
                          {"server": [pids["predict"]], "s3": [pids["s3"]]}, metrics_url=predict_url + "/metrics")]
        peer_cold: dict[str, float | None] = {}
        if args.peers:
            for name, port in zip(peer_dirs, unused_port_block(len(peer_dirs)), strict=True):
                print(f"starting {name} (mlflow models serve) ...", file=sys.stderr)
                server = servers.enter_context(PeerServer(peer_dirs[name], port, bodies[name],
                                                          log_path=run_dir / f"{name}.log"))
                peer_cold[name] = round(server.cold_start_s or 0.0, 3)
                systems.append(System(name, server.url, bodies[name], "application/json",
                                      cpu_pids={"server": [server.pid]}))
        print(f"side by side: {', '.join(s.name for s in systems)} in {args.rounds} interleaved rounds at "
              "concurrency 1 and 8 ...", file=sys.stderr)
        report["side_by_side"], side_loads = side_by_side(systems, requests=args.requests, rounds=args.rounds)
        report["side_by_side"]["cold_start_s"] = peer_cold
        servers.close()  # the peers stop before the rest is measured
        loads.update({f"function_c{c}": side_loads[f"xray_triage_c{c}"] for c in (1, 8)})
        for concurrency in (1, 8):
            print(f"warm gateway at concurrency {concurrency} ...", file=sys.stderr)
            loads[f"gateway_c{concurrency}"] = run_load(stack.urls["gateway"] + "/predict", body,
                                                        requests=args.requests, concurrency=concurrency,
                                                        content_type=content_type, warmup=30, token=stack.api_token)
        print("upload to result ...", file=sys.stderr)
        report["upload_to_result"] = upload_to_result(stack.s3(), images[: args.uploads])
        print(f"burst of {args.burst} uploads ...", file=sys.stderr)
        report["upload_burst"] = upload_burst(stack.s3(), images, args.burst)
        print("cold start ...", file=sys.stderr)
        spec = stack.function_spec("predict")
        report["cold_start"] = cold_start(lambda port: [*spec.argv[:-1], str(port)], {**os.environ, **spec.env},
                                          spec.cwd, body, unused_port_block(args.cold_starts), content_type,
                                          token=stack.api_token)
    report["cold_start"]["floor"] = cold_start_floor(onnx_path, size, args.cold_starts)
    report["warm"] = {name: result.summary() for name, result in loads.items()}
    floor = report["bare_onnx"]["session_run"]["p50"]
    report["overhead_ms"] = {name: round(report["warm"][name]["p50_ms"] - floor, 3)
                             for name in ("function_c1", "gateway_c1")}
    print("explanation faithfulness ...", file=sys.stderr)
    pixels = [image.pixels for image in images[: args.faithfulness_images]]
    report["faithfulness"] = faithfulness(model_uri, cache, pixels)
    if not args.quick:
        print("peak memory per request (7000 x 7000 PNG, JPEG, DICOM; a fresh process each) ...", file=sys.stderr)
        report["memory"] = peak_memory(model_uri, cache / "memory")
    if args.pacs_studies:
        print(f"PACS: C-STORE of {args.pacs_studies} DX studies (2,500 x 2,048) to the SR in Orthanc ...",
              file=sys.stderr)
        report["pacs"] = pacs_benchmark(model_uri, run_dir / "pacs", env, args.pacs_studies,
                                         [image.pixels for image in images])
    report["targets"] = targets(report)
    report["peer_targets"] = peer_targets(report)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(markdown(report))
    plot_latency({**loads, **{name: result for name, result in side_loads.items() if not name.startswith("xray")}},
                 out / "latency.png")
    print(markdown(report))
    print(f"report: {out / 'bench.md'}, {out / 'bench.json'}, {out / 'latency.png'}")
    if args.json:
        print(json.dumps(report))
    return 0
