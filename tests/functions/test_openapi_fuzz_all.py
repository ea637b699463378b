"""schemathesis over each HTTP function (issue 13 item 3): every operation of the function's served OpenAPI
document, fuzzed against the function as a real process with what it needs running (the local S3 server, an event
sink, the gateway and a Prometheus for the canary), finds no 5xx and no answer the document does not describe
(status, content type, headers, JSON body). The CloudEvent receivers' documents name the event types and the data
fields they read, so the generated events reach the handlers (binary and structured mode), not only the parser.

Deterministic (derandomized Hypothesis, no example database) and small: EXAMPLES cases per operation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from shared.config import Settings
from shared.events import OBJECT_CREATED, PREDICTION_CREATED, event_to_binary_http, make_event
from shared.names import INPUT_BUCKET
from shared.openapi import FUNCTIONS
from shared.storage import Storage
from tests.functions.conftest import api_token_table
from tests.functions.event_sink import EventSink
from tests.functions.function_process import function_process
from tests.shared.canary.test_observe import FakePrometheus
from triage.stack.gateway import Gateway, GatewayServer, Route

EXAMPLES = 12  # per operation: the module (13 functions) takes about a minute on 2 busy cores
REVIEWER = "alice:secret-token-1234567890"
WEBHOOK = "webhook-token-1234567890"
BOUNDARY = "xray-triage-fuzz"


@dataclass(frozen=True)
class Backends:
    """What the functions call, shared by the module: started once."""

    s3: str
    sink: str
    gateway: GatewayServer
    prometheus: str
    model_dir: Path
    api_tokens: str  # the token table file (API_TOKENS_URI)
    api_token: str
    run_dir: Path


@pytest.fixture(scope="module")
def backends(s3_server: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    run_dir = tmp_path_factory.mktemp("fuzz")
    store, token = api_token_table(run_dir / "api-tokens.json")
    sink = EventSink()
    upstream = {"champion": "http://127.0.0.1:9", "challenger": "http://127.0.0.1:9"}
    gateway = GatewayServer(Gateway({name: Route(name, dict(upstream)) for name in ("predict", "explain")})).start()
    prometheus = FakePrometheus({"requests": {"champion": "500", "challenger": "60"}, "errors": {"challenger": "0"},
                                 "p99": {"champion": "0.05", "challenger": "0.06"}})
    httpx.post(f"{s3_server}/moto-api/reset")  # as the `storage` fixture, once for the module
    Storage.from_settings(Settings(s3_endpoint_url=s3_server)).ensure_buckets()
    try:
        yield Backends(s3_server, sink.url, gateway, prometheus.url, tiny_model_dir, str(store.path), token, run_dir)
    finally:
        prometheus.close()
        gateway.stop()
        sink.close()


def _env(function: str, b: Backends) -> dict[str, str]:
    """The settings each function runs with here (its dependencies up, so no answer may be a 5xx)."""
    model = {"MODEL_URI": str(b.model_dir), "MODEL_CACHE_DIR": str(b.run_dir / f"cache-{function}")}
    api = {"API_TOKENS_URI": b.api_tokens, "API_RATE_PER_S": "1000", "API_RATE_BURST": "1000"}
    common = {"S3_ENDPOINT_URL": b.s3, "K_SINK": "", "MLFLOW_TRACKING_URI": ""}
    return common | {
        "predict": {**model, **api},
        "explain": {**model, **api},
        "feedback": {"REVIEWER_TOKENS": REVIEWER},
        "review": {"REVIEWER_TOKENS": REVIEWER, "K_SINK": b.sink},
        "preprocess": {"DEID_SECRET": "fuzz-secret"},
        "minio_source": {"WEBHOOK_TOKEN": WEBHOOK, "K_SINK": b.sink},
        "ingest": {**model, "DEID_SECRET": "fuzz-secret"},  # no K_SINK: the prediction is a Knative reply event
        "retrain": {"RETRAIN_BACKEND": "local", "RETRAIN_MIN_LABELS": "1000000"},  # never launches training
        "monitor": {"MONITOR_REFERENCE_SIZE": "4", "MONITOR_MIN_PREDICTIONS": "4"},
        "canary": {"CANARY_GATEWAY_URL": b.gateway.url, "GATEWAY_ADMIN_TOKEN": b.gateway.admin_token,
                   "PROMETHEUS_URL": b.prometheus, "CANARY_MODEL_URI": "", "CANARY_STEPS": "10,50,100",
                   "CANARY_MIN_REQUESTS": "20"},
        "dead_letter": {},
        "dicomweb": {**api},
        "export": {"DEID_SECRET": "fuzz-secret", "PACS_STOW_URL": "http://127.0.0.1:9/"},  # read only for a source
    }[function]


def _headers(function: str, b: Backends) -> dict[str, str]:
    token = {"feedback": REVIEWER.partition(":")[2], "review": REVIEWER.partition(":")[2],
             "minio_source": WEBHOOK}.get(function, b.api_token)
    related = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'}
    return {"Authorization": f"Bearer {token}", **(related if function == "dicomweb" else {})}


def _related(ctx, parts) -> bytes:
    """A STOW-RS body (the document's array of instances) as multipart/related with BOUNDARY, which the
    Content-Type of `_headers` names (schemathesis has no serializer for multipart/related)."""
    def raw(part) -> bytes:
        data = getattr(part, "data", part)
        return data if isinstance(data, bytes) else str(data).encode()

    return b"".join(b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (BOUNDARY.encode(), raw(p))
                    for p in parts) + b"--%s--\r\n" % BOUNDARY.encode()


def fuzz(base: str, headers: dict[str, str]) -> dict[str, Counter[int]]:
    """Every operation of the served document, EXAMPLES cases each, under the five checks (a failure raises);
    → the statuses answered per operation."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
              response_schema_conformance]
    schemathesis.serializer("multipart/related")(_related)
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    return {operation.label: _fuzz_operation(operation, base, headers, checks)
            for operation in (result.ok() for result in schema.get_all_operations())}


def _fuzz_operation(operation, base: str, headers: dict[str, str], checks: list) -> Counter[int]:
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failure is reported as it came
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        response = case.call_and_validate(base_url=base, headers=headers, checks=checks, timeout=20)
        statuses[response.status_code] += 1

    run()
    return statuses


# The operation of each function whose answers must show that generated requests reached the handler, and the
# statuses that show it: a handled event or notification, a parsed STOW-RS body, a prediction, a known reviewer.
_MAIN = {"review": "GET /review/api/worklist", "dicomweb": "POST /studies"}
_HANDLED = {"dicomweb": {200, 202, 409}, "feedback": {200, 404}}


def _handled(function: str, statuses: Counter[int]) -> int:
    return sum(n for status, n in statuses.items() if status in _HANDLED.get(function, {200}))


@pytest.fixture(scope="module")
def running(backends: Backends) -> Iterator[dict[str, str]]:
    """Every function as its own process, started four at a time (2 cores in CI) and stopped all together:
    name → base URL."""
    processes = {name: function_process(name, _env(name, backends)) for name in FUNCTIONS}
    with ThreadPoolExecutor(max_workers=4) as pool:
        started = {name: pool.submit(process.__enter__) for name, process in processes.items()}
        wait(started.values())
    bases = {name: future.result() for name, future in started.items() if future.exception() is None}
    try:
        failed = [future.exception() for future in started.values() if future.exception() is not None]
        if failed:
            raise failed[0]
        yield bases
    finally:  # only a started process is stopped (a failed start cleaned up after itself)
        with ThreadPoolExecutor(max_workers=len(FUNCTIONS)) as pool:
            list(pool.map(lambda name: processes[name].__exit__(None, None, None), bases))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(function: str, backends: Backends,
                                                              running: dict[str, str]) -> None:
    answered = fuzz(running[function], _headers(function, backends))
    assert {"GET /healthz", "GET /metrics"} <= set(answered), sorted(answered)
    assert all(sum(statuses.values()) >= 1 for statuses in answered.values()), answered
    # a quarter at least: CloudEvents in binary mode pair a random type header with one consumer's data
    assert _handled(function, answered[_MAIN.get(function, "POST /")]) >= EXAMPLES // 4, answered


@pytest.mark.parametrize("function", ["ingest", "export"])
@pytest.mark.parametrize("field, value", [("key", "a\nb.png"), ("key", "k" * 1025), ("etag", "abc\n"),
                                          ("etag", "ab\u00e9")])
def test_an_object_no_s3_could_read_is_a_422_not_a_retry(function: str, field: str, value: str,
                                                        running: dict[str, str]) -> None:
    """Found by the fuzzing above: ingest and export answered 503 (S3 refused the key, or the ETag in If-Match),
    so the broker would have redelivered the event until it was dead-lettered."""
    data = {"bucket": INPUT_BUCKET, "key": "a.png", "etag": "abc", "status": "ok", "label": "normal",
            "probability": 0.1, "threshold": 0.5, field: value}
    kind = OBJECT_CREATED if function == "ingest" else PREDICTION_CREATED
    headers, body = event_to_binary_http(make_event(kind, "tests", data))
    answer = httpx.post(running[function] + "/", headers=headers, content=body, timeout=20)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_field" and f"'{field}'" in answer.json()["error"]["message"]
