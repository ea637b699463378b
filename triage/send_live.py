"""`triage send-live`: upload images into `inference-inputs` at a fixed rate, as a hospital's PACS would.

Live traffic for a running system (the local stack or a deployed one): each upload is a `PutObject` into the
input bucket of the S3 endpoint (`--s3-url`, else $S3_ENDPOINT_URL, else the local stack's), which minio-source
turns into the event ingest answers, so the monitor and the canary see real traffic. The schedule is open loop:
upload i starts at i / rate seconds whatever the earlier ones took (a small pool sends them), so a slow endpoint
shows as failures or lateness, not as a lower rate. Credentials are the usual AWS variables (`shared.config`).

The images are `--images` (a folder of PNG / JPEG / DICOM files or an .npz, sent in turn), else 16 SYNTHETIC
phantoms. Keys are `<prefix>/<run>/<n><ext>`: the image's file name is not used (it may name the patient), and
no key is printed. `--wait-results S` then waits up to S seconds for each upload's result in `inference-results`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.errors import UserError
from shared.names import INPUT_BUCKET, RESULT_BUCKET, result_key
from triage.config import TriageEnv

__all__ = ["LiveResult", "add_arguments", "check_reachable", "run", "send_live", "wait_for_results"]

MAX_RATE = 100.0  # uploads/s
MAX_DURATION_S = 86_400.0


@dataclass
class LiveResult:
    """What one run sent: the keys that landed (kept for `--wait-results`, never printed) and the failures."""

    asked: int
    keys: list[str] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"asked": self.asked, "sent": len(self.keys), "failed": sum(self.failed.values()),
                "errors": dict(self.failed), "wall_s": round(self.wall_s, 2)}


def check_reachable(s3: Any, url: str) -> None:
    """UserError unless the endpoint answers and its input bucket is there for these credentials."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3.head_bucket(Bucket=INPUT_BUCKET)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404:
            raise UserError(f"S3 at {url} has no bucket {INPUT_BUCKET} (is the stack set up?)") from None
        raise UserError(f"S3 at {url} refused {INPUT_BUCKET} (HTTP {status}): check AWS_ACCESS_KEY_ID / "
                        "AWS_SECRET_ACCESS_KEY") from None
    except BotoCoreError as exc:
        raise UserError(f"cannot reach S3 at {url}: {type(exc).__name__}") from None


def send_live(s3: Any, images: list[Any], *, rate: float, duration_s: float, prefix: str,
              clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> LiveResult:
    """round(rate x duration) uploads of `images` in turn, upload i started at i / rate s after the first."""
    result = LiveResult(asked=max(1, round(rate * duration_s)))
    lock = threading.Lock()

    def upload(index: int) -> None:
        image = images[index % len(images)]
        key = f"{prefix}/{index:06d}{Path(image.name).suffix}"
        try:
            s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=image.data, ContentType=image.content_type)
        except Exception as exc:  # noqa: BLE001  (counted by kind; the run goes on, as a PACS's retries would)
            with lock:
                result.failed[type(exc).__name__] += 1
            return
        with lock:
            result.keys.append(key)

    started = clock()
    with ThreadPoolExecutor(max_workers=min(32, max(2, math.ceil(rate)))) as pool:
        for index in range(result.asked):
            delay = started + index / rate - clock()
            if delay > 0:
                sleep(delay)
            pool.submit(upload, index)
    result.wall_s = clock() - started
    return result


def wait_for_results(s3: Any, keys: list[str], timeout_s: float) -> tuple[int, float]:
    """How many of `keys` have their result in `inference-results` within `timeout_s`, and the seconds waited."""
    started = time.monotonic()
    pending = set(keys)
    while pending and time.monotonic() - started < timeout_s:
        for key in list(pending):
            try:
                s3.head_object(Bucket=RESULT_BUCKET, Key=result_key(key))
                pending.discard(key)
            except Exception:  # noqa: BLE001,S112  (not there yet)
                continue
        if pending:
            time.sleep(0.2)
    return len(keys) - len(pending), time.monotonic() - started


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, required=True, help=f"uploads per second (0 < R <= {MAX_RATE:g})")
    parser.add_argument("--duration", type=float, required=True, help="seconds to send for")
    parser.add_argument("--images", type=Path, help="a folder of PNG / JPEG / DICOM files or an .npz, sent in turn "
                        "(default 16 SYNTHETIC phantoms)")
    parser.add_argument("--s3-url", help="the S3 endpoint (default $S3_ENDPOINT_URL, else the local stack's, "
                        "http://127.0.0.1:$S3_PORT); credentials from $AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY")
    parser.add_argument("--prefix", default="live", help="key prefix in inference-inputs (default live)")
    parser.add_argument("--wait-results", type=float, default=0.0, metavar="S",
                        help="then wait up to S seconds for every upload's result (default 0: do not wait)")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")


def _phantoms(count: int = 16) -> list[Any]:
    import numpy as np

    from load_tests.images import LoadImage
    from shared.imaging import encode_png
    from training_jobs.phantom import make_phantom

    rng = np.random.default_rng(0)
    pixels = [(make_phantom(rng, 256, pneumonia=i % 2 == 1) * 255 + 0.5).astype(np.uint8) for i in range(count)]
    return [LoadImage(f"{i}.png", encode_png(p), "image/png", p) for i, p in enumerate(pixels)]


def run(args: argparse.Namespace) -> int:
    if not (0 < args.rate <= MAX_RATE) or not math.isfinite(args.rate):
        raise UserError(f"--rate {args.rate:g}: must be > 0 and <= {MAX_RATE:g} uploads/s")
    if not (0 < args.duration <= MAX_DURATION_S) or not 0 <= args.wait_results <= 3600:
        raise UserError(f"--duration must be > 0 and <= {MAX_DURATION_S:g} s, --wait-results 0..3600 s")
    if args.rate * args.duration < 0.5:
        raise UserError("--rate x --duration is under one upload")
    prefix = args.prefix.strip("/")
    if not prefix or any(part in ("", ".", "..") for part in prefix.split("/")):
        raise UserError(f"--prefix {args.prefix!r}: not a key prefix")
    from load_tests.images import load_images

    images = load_images(args.images, 256) if args.images else _phantoms()
    settings = Settings.from_env()
    url = args.s3_url or settings.s3_endpoint_url or f"http://127.0.0.1:{TriageEnv.from_env().ports.get('s3', 9000)}"
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id=settings.aws_access_key_id,
                      aws_secret_access_key=settings.aws_secret_access_key, region_name=settings.aws_region,
                      config=Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 1},
                                    max_pool_connections=32))
    check_reachable(s3, url)
    run_prefix = f"{prefix}/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    print(f"sending {args.rate:g} uploads/s for {args.duration:g} s into s3://{INPUT_BUCKET}/{prefix}/ at {url} ...",
          file=sys.stderr)
    result = send_live(s3, images, rate=args.rate, duration_s=args.duration, prefix=run_prefix)
    summary = {"rate": args.rate, "duration_s": args.duration, **result.summary()}
    print(f"sent {summary['sent']}, failed {summary['failed']} of {summary['asked']} in {summary['wall_s']} s"
          + (f" ({summary['errors']})" if summary["errors"] else ""))
    ok = summary["failed"] == 0
    if args.wait_results and result.keys:
        found, waited = wait_for_results(s3, result.keys, args.wait_results)
        summary["results"] = {"found": found, "waited_s": round(waited, 1)}
        print(f"results: {found}/{len(result.keys)} in {RESULT_BUCKET} after {waited:.1f} s")
        ok = ok and found == len(result.keys)
    if args.json:
        print(json.dumps(summary))
    return 0 if ok else 1
