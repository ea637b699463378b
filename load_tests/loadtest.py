"""Load generators: `triage loadtest` (Locust, open loop, any target) and `run_load` (closed loop, loopback only).

`triage loadtest` runs Locust headless in a child process per asked rate (gevent monkey-patches the process it
runs in, so Locust is never imported here) with the users of `load_tests/locustfile.py`: predict, explain and
bucket upload, over a folder or .npz of images, at a fixed arrival rate (`--rates 5,10,20` requests/s, each for
`--duration` seconds) against any URL: the local gateway by default, a deployed one too. It writes under `--out`
Locust's CSVs (`rate-<R>_stats.csv`, `_failures.csv`, `_exceptions.csv`, `_stats_history.csv`), its log, a JSON
summary (`loadtest.json`: per rate the asked and achieved rate, requests, failures, p50 / p95 / p99 per request
kind) and `latency-vs-rate.png`.

`run_load` stays the benchmark's engine (`triage bench`, `triage scale-report`): `concurrency` threads, each
sending its next request the moment the previous answer arrives, so the server sees exactly that many requests
in flight, with the cheapest client there is (the standard library's `http.client`, a kept-alive connection per
thread, no stats machinery; httpx cost ~1-2 ms of CPU per request, Locust more) on the same 2 cores as the server.
That is what saturation and latency-at-concurrency need; an arrival rate is what a hospital produces, and what
Locust measures. It only loads 127.0.0.1 / localhost: it sends as fast as the server answers.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import ipaddress
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from shared.config import Settings
from shared.errors import UserError
from triage.config import TriageEnv

__all__ = ["LOCUSTFILE", "USERS", "LoadResult", "add_arguments", "check_loopback", "locust_command", "percentiles",
           "plot_latency_vs_rate", "rate_summary", "read_stats", "run", "run_load", "users_for"]

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


class _KeptAlive:
    """One kept-alive HTTP/1.1 connection of `run_load`'s (http.client), opened again after an error or a close."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self._connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._address = (parts.hostname or "127.0.0.1", parts.port)
        self._timeout_s = timeout_s
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """(status, the answering revision or "-") of one POST; the body is read whole (the connection is reused)."""
        if self._connection is None:
            self._connection = self._connection_class(*self._address, timeout=self._timeout_s)
        try:
            self._connection.request("POST", self.path, body=body, headers=headers)
            response = self._connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.will_close:
            self.close()
        return response.status, response.getheader(REVISION_HEADER) or "-"

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


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
        client = _KeptAlive(url, timeout_s)
        try:
            for _ in range(max(1, warmup // concurrency)):
                with contextlib.suppress(OSError, http.client.HTTPException):
                    client.post(body, headers)
            barrier.wait()
            for _ in range(count):
                started = time.perf_counter()
                try:
                    status, revision = client.post(body, headers)
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        result.errors[type(exc).__name__] += 1
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    if status == 200:
                        result.latencies.append(elapsed)
                        result.revisions[revision] += 1
                    else:
                        result.errors[f"HTTP {status}"] += 1
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(share,), daemon=True) for share in shares]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    result.wall_s = time.perf_counter() - started
    return result


# --- triage loadtest: Locust at fixed arrival rates ----------------------------------------------------------------
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USERS = {"predict": "PredictUser", "explain": "ExplainUser", "upload": "UploadUser"}  # --mix name → user class
MAX_RATE = 1000.0  # requests/s per rate
MAX_DURATION_S = 3600
RATE_PER_USER = 2.0  # at most this many requests/s per Locust user, so a slow answer does not lower the rate


def users_for(rate: float, classes: int, per_user: float = RATE_PER_USER) -> tuple[int, float]:
    """(users, requests/s per user) giving `rate` requests/s in all, the users split evenly over `classes`."""
    users = max(classes, math.ceil(rate / per_user - 1e-9))
    users = math.ceil(users / classes) * classes
    return users, rate / users


def locust_command(*, host: str, rate: float, duration_s: int, mix: list[str], images: Path, csv_prefix: Path,
                   s3_url: str | None, predict_url: str | None, explain_url: str | None,
                   key_prefix: str) -> list[str]:
    """The headless Locust run of one rate (the token travels in the child's environment, not in argv)."""
    users, per_user = users_for(rate, len(mix))
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
               "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{duration_s}s",
               "--stop-timeout", "10", "--csv", str(csv_prefix), "--csv-full-history", "--only-summary",
               "--loglevel", "WARNING", "--triage-images", str(images), "--triage-rate-per-user", f"{per_user:.6g}",
               "--triage-key-prefix", key_prefix]
    for option, value in (("--triage-s3-url", s3_url), ("--triage-predict-url", predict_url),
                          ("--triage-explain-url", explain_url)):
        if value:
            command += [option, value]
    return [*command, *(USERS[name] for name in mix)]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # Locust writes N/A for a percentile of no request


def read_stats(path: Path) -> dict[str, dict[str, Any]]:
    """Locust's `<prefix>_stats.csv`: request name (and "Aggregated") → count, failures, rate and percentiles."""
    rows: dict[str, dict[str, Any]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows[row["Name"]] = {
                "requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                "rps": _number(row["Requests/s"]), "p50_ms": _number(row["50%"]), "p95_ms": _number(row["95%"]),
                "p99_ms": _number(row["99%"]), "max_ms": _number(row["Max Response Time"])}
    return rows


def rate_summary(asked_rps: float, duration_s: int, stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One rate's line of loadtest.json: the asked and achieved rates, totals and each request kind's latency."""
    total = stats.get("Aggregated", {"requests": 0, "failures": 0, "rps": None})
    achieved = round(total["requests"] / duration_s, 2) if duration_s else None
    return {"asked_rps": asked_rps, "achieved_rps": achieved, "locust_rps": total.get("rps"),
            "duration_s": duration_s, "requests": total["requests"], "failures": total["failures"],
            "by_request": {name: row for name, row in stats.items() if name != "Aggregated"},
            "aggregated": total}


def plot_latency_vs_rate(rates: list[dict[str, Any]], path: Path) -> Path:
    """p50 / p95 / p99 latency of each request kind against the asked rate, beside achieved vs asked rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    asked = [r["asked_rps"] for r in rates]
    names = sorted({name for r in rates for name in r["by_request"]})
    for name in names:
        for quantile, style in (("p50_ms", "-o"), ("p95_ms", "--s"), ("p99_ms", ":^")):
            values = [r["by_request"].get(name, {}).get(quantile) for r in rates]
            left.plot(asked, [v if v is not None else float("nan") for v in values], style,
                      label=f"{name} {quantile[:-3]}")
    left.set(xlabel="asked arrival rate (requests/s)", ylabel="latency (ms)", title="latency vs arrival rate")
    left.set_yscale("log")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    right.plot(asked, asked, "k:", label="asked")
    right.plot(asked, [r["achieved_rps"] for r in rates], "-o", label="achieved")
    right.plot(asked, [r["failures"] / r["duration_s"] for r in rates], "-x", color="tab:red", label="failures/s")
    right.set(xlabel="asked arrival rate (requests/s)", ylabel="requests/s", title="achieved rate")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the target's base URL: /predict and /explain are under it (default the local "
                        "gateway, http://127.0.0.1:$GATEWAY_PORT); any URL, a deployed one too")
    parser.add_argument("--predict-url", help="predict's full URL when it is not {url}/predict (a Knative Service)")
    parser.add_argument("--explain-url", help="explain's full URL when it is not {url}/explain")
    parser.add_argument("--rates", default="5", help="arrival rates in requests/s, comma-separated: one Locust run "
                        f"each (default 5; each 0 < R <= {MAX_RATE:g})")
    parser.add_argument("--duration", type=int, default=60, help=f"seconds per rate (default 60, max {MAX_DURATION_S})")
    parser.add_argument("--mix", default="predict", help=f"user classes, comma-separated, of {', '.join(USERS)}; the "
                        "rate is split evenly over them (default predict)")
    parser.add_argument("--images", type=Path, required=True, help="the images to send: a folder of PNG / JPEG / "
                        "DICOM files or an .npz (`triage phantom --out images.npz` writes one)")
    parser.add_argument("--token", help="the API token for predict / explain (default $TRIAGE_API_TOKEN, else the "
                        "local stack's, $RUN_DIR/api-token); its rate limit must exceed the asked rate")
    parser.add_argument("--s3-url", help="the S3 endpoint the upload users write to (default $S3_ENDPOINT_URL, else "
                        "the local stack's, http://127.0.0.1:$S3_PORT); credentials from $AWS_ACCESS_KEY_ID / "
                        "$AWS_SECRET_ACCESS_KEY")
    parser.add_argument("--key-prefix", default="loadtest", help="key prefix of the uploads (default loadtest)")
    parser.add_argument("--out", type=Path, default=Path("reports/loadtest"), help="report folder "
                        "(default reports/loadtest)")
    parser.add_argument("--json", action="store_true", help="print the JSON summary last")


def _stack_token() -> str | None:
    """The API token `triage up` wrote into its run dir, if there is one."""
    path = TriageEnv.from_env().run_dir / "api-token"
    return path.read_text().strip() if path.is_file() else None


def _parse_rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--rates {text!r}: not a comma-separated list of numbers") from None
    if not rates or not all(0 < rate <= MAX_RATE for rate in rates):
        raise UserError(f"--rates {text!r}: each rate must be > 0 and <= {MAX_RATE:g} requests/s")
    return sorted(set(rates))


def _check_url(option: str, url: str | None) -> None:
    parts = urlsplit(url or "")
    if url is not None and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise UserError(f"{option} {url!r}: not an http(s) URL")


def run(args: argparse.Namespace) -> int:
    rates = _parse_rates(args.rates)
    mix = [name.strip() for name in args.mix.split(",") if name.strip()]
    if not mix or any(name not in USERS for name in mix) or len(set(mix)) != len(mix):
        raise UserError(f"--mix {args.mix!r}: names of {', '.join(USERS)}, each once")
    if not 1 <= args.duration <= MAX_DURATION_S:
        raise UserError(f"--duration must be 1..{MAX_DURATION_S} seconds")
    env = TriageEnv.from_env()
    host = (args.url or env.gateway_url).rstrip("/")
    for option, url in (("--url", host), ("--predict-url", args.predict_url), ("--explain-url", args.explain_url),
                        ("--s3-url", args.s3_url)):
        _check_url(option, url)
    from load_tests.images import load_images

    load_images(args.images, 1)  # a missing or empty --images is this process's clear error, not Locust's
    s3_url = args.s3_url or Settings.from_env().s3_endpoint_url or f"http://127.0.0.1:{env.ports.get('s3', 9000)}"
    child_env = dict(os.environ)  # the child reads its credentials (AWS_*) and token from its environment
    token = args.token or child_env.get("TRIAGE_API_TOKEN") or _stack_token()
    if token:
        child_env["TRIAGE_API_TOKEN"] = token
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    summaries = []
    for rate in rates:
        prefix = args.out / f"rate-{rate:g}"
        command = locust_command(host=host, rate=rate, duration_s=args.duration, mix=mix, images=args.images,
                                 csv_prefix=prefix, s3_url=s3_url if "upload" in mix else None,
                                 predict_url=args.predict_url, explain_url=args.explain_url,
                                 key_prefix=f"{args.key_prefix.strip('/')}/rate-{rate:g}")
        print(f"{rate:g} requests/s for {args.duration} s ({', '.join(mix)}) against {host} ...", file=sys.stderr)
        with (args.out / f"rate-{rate:g}.log").open("w") as log:
            code = subprocess.run(command, env=child_env, stdout=log, stderr=subprocess.STDOUT, check=False,
                                  timeout=args.duration + 120).returncode
        stats_path = Path(f"{prefix}_stats.csv")
        if not stats_path.is_file():
            raise UserError(f"Locust wrote no statistics (exit {code}); see {args.out / f'rate-{rate:g}.log'}")
        summary = rate_summary(rate, args.duration, read_stats(stats_path))
        summaries.append(summary)
        print(f"  {summary['requests']} requests, {summary['failures']} failed, achieved {summary['achieved_rps']}"
              f" requests/s; p50 {summary['aggregated'].get('p50_ms')} ms, p99 {summary['aggregated'].get('p99_ms')}"
              " ms", file=sys.stderr)
    report = {"target": host, "mix": mix, "duration_s": args.duration, "images": str(args.images),
              "started": started, "rates": summaries}
    (args.out / "loadtest.json").write_text(json.dumps(report, indent=2))
    plot_latency_vs_rate(summaries, args.out / "latency-vs-rate.png")
    print(f"report: {args.out / 'loadtest.json'}, {args.out / 'latency-vs-rate.png'}, Locust CSVs rate-*_stats.csv")
    if args.json:
        print(json.dumps(report))
    return 0 if all(s["failures"] == 0 and s["requests"] > 0 for s in summaries) else 1
