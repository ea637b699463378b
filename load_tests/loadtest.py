"""Send a bounded load to the local gateway (or one function) and report latencies.

Only loopback targets are accepted: this is a measuring tool for the local stack, not a traffic generator.
The request body is a file (`--image`) or the first image of a folder or .npz (`--images`, see `images`).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from load_tests.images import MEDIA_TYPES, load_images
from shared.errors import UserError
from triage.config import TriageEnv

__all__ = ["LoadResult", "add_arguments", "check_loopback", "percentiles", "run", "run_load"]

MAX_REQUESTS = 20_000
MAX_CONCURRENCY = 64
REVISION_HEADER = "X-Triage-Revision"


@dataclass
class LoadResult:
    """Latencies (seconds) of the successful requests, plus errors and which revision served."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    revisions: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        total = len(self.latencies) + sum(self.errors.values())
        return {
            "concurrency": self.concurrency,
            "requests": total,
            "ok": len(self.latencies),
            "errors": dict(self.errors),
            "throughput_rps": round(total / self.wall_s, 1) if self.wall_s else None,
            **{f"{k}_ms": v for k, v in percentiles(self.latencies).items()},
            "revisions": dict(self.revisions),
        }


def percentiles(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50": None, "p90": None, "p95": None, "p99": None, "mean": None, "max": None}
    values = np.asarray(latencies_s) * 1000.0
    return {"p50": round(float(np.percentile(values, 50)), 3), "p90": round(float(np.percentile(values, 90)), 3),
            "p95": round(float(np.percentile(values, 95)), 3), "p99": round(float(np.percentile(values, 99)), 3),
            "mean": round(float(values.mean()), 3), "max": round(float(values.max()), 3)}


def check_loopback(url: str) -> str:
    """The URL, if it points at this machine's loopback; else a UserError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--url {url!r}: not an http(s) URL")
    host = parts.hostname
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise UserError(f"--url {url!r}: only 127.0.0.1 / localhost targets are allowed")
    return url


def run_load(url: str, body: bytes, *, requests: int, concurrency: int, content_type: str = "image/png",
             warmup: int = 10, timeout_s: float = 30.0, token: str | None = None) -> LoadResult:
    """`requests` POSTs split over `concurrency` threads, each with its own keep-alive connection (presenting the
    API token `token` when given)."""
    check_loopback(url)
    if not 1 <= requests <= MAX_REQUESTS or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UserError(f"requests must be 1..{MAX_REQUESTS} and concurrency 1..{MAX_CONCURRENCY}")
    result = LoadResult(concurrency)
    lock = threading.Lock()
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
    shares = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def worker(count: int) -> None:
        with httpx.Client(timeout=timeout_s) as client:
            for _ in range(max(1, warmup // concurrency)):
                with contextlib.suppress(httpx.HTTPError):
                    client.post(url, content=body, headers=headers)
            barrier.wait()
            for _ in range(count):
                started = time.perf_counter()
                try:
                    response = client.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    with lock:
                        result.errors[type(exc).__name__] += 1
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200:
                        result.latencies.append(elapsed)
                        result.revisions[response.headers.get(REVISION_HEADER, "-")] += 1
                    else:
                        result.errors[f"HTTP {response.status_code}"] += 1

    threads = [threading.Thread(target=worker, args=(share,), daemon=True) for share in shares]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - started
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8080/predict", help="target (loopback only)")
    parser.add_argument("--requests", type=int, default=200, help=f"total requests (max {MAX_REQUESTS})")
    parser.add_argument("--concurrency", type=int, default=1, help=f"parallel clients (max {MAX_CONCURRENCY})")
    body = parser.add_mutually_exclusive_group(required=True)
    body.add_argument("--image", type=Path, help="the request body: one PNG, JPEG or DICOM file")
    body.add_argument("--images", type=Path, help="the request body: the first image of a folder of PNG / JPEG / "
                      "DICOM files or of an .npz (`triage phantom --out images.npz` writes one)")
    parser.add_argument("--content-type", help="default: from the file's extension, else image/png")
    parser.add_argument("--warmup", type=int, default=10, help="requests before measuring")
    parser.add_argument("--token", help="the API token to present (default: the local stack's, $RUN_DIR/api-token)")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")


def _stack_token() -> str | None:
    """The API token `triage up` wrote into its run dir, if there is one."""
    path = TriageEnv.from_env().run_dir / "api-token"
    return path.read_text().strip() if path.is_file() else None


def run(args: argparse.Namespace) -> int:
    if args.image is not None:
        if not args.image.is_file():
            raise UserError(f"--image {args.image}: no such file")
        body, media = args.image.read_bytes(), MEDIA_TYPES.get(args.image.suffix.lower(), "image/png")
    else:
        first = load_images(args.images, 1)[0]
        body, media = first.data, first.content_type
    result = run_load(args.url, body, requests=args.requests, concurrency=args.concurrency,
                      content_type=args.content_type or media, warmup=args.warmup, token=args.token or _stack_token())
    summary = {"url": args.url, **result.summary()}
    print(f"{summary['ok']}/{summary['requests']} ok at concurrency {args.concurrency}: "
          f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, {summary['throughput_rps']} req/s"
          + (f", errors {summary['errors']}" if summary["errors"] else ""))
    if args.json:
        print(json.dumps(summary))
    return 0 if not summary["errors"] else 1
