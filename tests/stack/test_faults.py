"""Faults on the local stack: 100 uploads while S3, the relay, the broker, ingest and the gateway are each SIGKILLed
(and S3 stopped once) lose nothing and duplicate nothing; a clean restart of the whole stack keeps every object.

Each killed process is started again at once, as `triage up` does (`Stack.wait`). Uploads a client could not get
acknowledged (S3 down) are retried by the client, as any S3 client does; only acknowledged uploads count.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time

import httpx
import pytest
from botocore.exceptions import BotoCoreError, ClientError

from shared.names import DEAD_LETTER_BUCKET, INPUT_BUCKET, RESULT_BUCKET, heatmap_key, result_key
from tests.functions.tiny_model import build_tiny_model_dir, png_bytes
from triage.stack import Stack, StackConfig, StackPorts
from triage.stack.triggers import DeliverySpec

UPLOADS = 100
# (upload index, process, how): each fault starts once the previous one has recovered.
FAULTS = [(10, "s3", "kill"), (25, "relay", "kill"), (40, "broker", "kill"), (55, "ingest", "kill"),
          (70, "gateway", "kill"), (85, "s3", "stop")]
RESULT_WAIT_S = 300  # generous: a loaded CI machine is slow, and this bounds the test, it does not time it


def key_of(i: int) -> str:
    return f"faults/{i:03d} 病例+{i}%.png"


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> StackConfig:
    root = tmp_path_factory.mktemp("faults")
    model = build_tiny_model_dir(root / "model", seed=0)
    # Linear backoff: an event that meets a restarting subscriber is retried for ~60 s, then dead-lettered.
    return StackConfig(run_dir=root / "run", model_uri=str(model), functions=("minio_source", "ingest"),
                       ports=StackPorts.free(), mlflow=False, prometheus=False,
                       delivery=DeliverySpec(retry=15, backoff_policy="linear", backoff_delay_s=0.5),
                       extra_env={"THREADS": "4"})


@pytest.fixture(scope="module")
def stack(config):
    with Stack(config, echo=None) as running:
        yield running


def put_until_acknowledged(s3, key: str, body: bytes, deadline_s: float = 120) -> str:
    """PUT until S3 answers 200 (connection refused while it restarts); returns the acknowledged etag."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=body, ContentType="image/png")["ETag"].strip('"')
        except (BotoCoreError, ClientError):
            assert time.monotonic() < deadline, f"S3 did not acknowledge an upload within {deadline_s} s"
            time.sleep(0.2)


def results_of(s3, keys: list[str], timeout_s: float) -> dict[str, dict]:
    """Each key's committed result: the flag is written first, its heatmap step (its own event) commits it."""
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < len(keys) and time.monotonic() < deadline:
        for key in keys:
            if key in found:
                continue
            with contextlib.suppress(BotoCoreError, ClientError):
                result = json.loads(s3.get_object(Bucket=RESULT_BUCKET, Key=result_key(key))["Body"].read())
                if (result.get("heatmap") or {}).get("status") != "pending":
                    found[key] = result
        time.sleep(0.5)
    return found


def listing(s3, bucket: str, prefix: str) -> dict[str, str]:
    objects: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.update({item["Key"]: item["ETag"] for item in page.get("Contents", [])})
    return objects


def test_uploads_while_each_process_is_killed_give_exactly_one_result_each(stack):
    s3 = stack.s3()
    etags: dict[str, str] = {}
    faults = dict((at, (name, how)) for at, name, how in FAULTS)
    recovering: threading.Thread | None = None
    failures: list[BaseException] = []

    def fault(name: str, how: str) -> None:
        try:
            if how == "kill":
                stack.kill(name)  # SIGKILL of the whole process group, as a crash
            stack.restart(name)  # what `triage up` does on seeing it gone (SIGTERM first when still running)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread below
            failures.append(exc)

    for i in range(UPLOADS):
        if i in faults:
            if recovering is not None:
                recovering.join(timeout=120)
            recovering = threading.Thread(target=fault, args=faults[i], daemon=True)
            recovering.start()
        etags[key_of(i)] = put_until_acknowledged(s3, key_of(i), png_bytes(seed=i))
        time.sleep(0.05)  # uploads keep arriving while the process is down and coming back
    assert recovering is not None
    recovering.join(timeout=120)
    assert failures == []

    keys = list(etags)
    results = results_of(s3, keys, RESULT_WAIT_S)
    lost = sorted(set(keys) - set(results))
    assert lost == [], f"{len(lost)} acknowledged uploads have no result"
    errors = {key: r.get("error") for key, r in results.items() if r.get("status") == "error" or r.get("error")}
    assert errors == {}
    assert {key: r["etag"] for key, r in results.items()} == etags  # each result is of the acknowledged version
    stored = listing(s3, RESULT_BUCKET, "faults/")
    expected = sorted([result_key(k) for k in keys] + [heatmap_key(k) for k in keys])
    assert sorted(stored) == expected  # exactly one result (and one heatmap) per upload: no duplicates
    assert listing(s3, DEAD_LETTER_BUCKET, "") == {}
    relay = httpx.get(f"http://127.0.0.1:{stack.config.ports.s3_notify}/healthz").json()
    assert relay["outbox"] == {"pending": 0, "dead": 0}


def test_a_clean_restart_of_the_whole_stack_keeps_every_object(stack, config):
    s3 = stack.s3()
    before = {bucket: listing(s3, bucket, "faults/") for bucket in (INPUT_BUCKET, RESULT_BUCKET)}
    assert len(before[INPUT_BUCKET]) == UPLOADS and len(before[RESULT_BUCKET]) == 2 * UPLOADS
    stack.stop()
    with Stack(config, echo=None) as again:
        s3 = again.s3()
        assert {bucket: listing(s3, bucket, "faults/") for bucket in (INPUT_BUCKET, RESULT_BUCKET)} == before
        key = "faults/after-restart.png"
        etag = put_until_acknowledged(s3, key, png_bytes(seed=999))
        assert results_of(s3, [key], 120)[key]["etag"] == etag

