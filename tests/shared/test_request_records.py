"""Request records: batched off the request path, never dropped (back-pressure, retries, flush at exit), found by id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from shared.names import request_batch_of
from shared.request_records import RequestRecorder, load_request_record, record_request
from shared.storage import Storage, StorageUnavailable

ROOT = Path(__file__).resolve().parents[2]


class SlowStore:
    """A real Storage behind a delay per write (a slow S3), or an event that holds every write back."""

    def __init__(self, storage: Storage | None = None, *, delay_s: float = 0.0, gate: threading.Event | None = None,
                 failures: int = 0) -> None:
        self.storage, self.delay_s, self.gate, self.failures = storage, delay_s, gate, failures
        self.written: dict[str, Any] = {}
        self.puts = 0
        self.lock = threading.Lock()

    def put_json(self, bucket: str, key: str, value: Any) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay_s)
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("S3 is down")
            self.written[key] = json.loads(json.dumps(value))
            self.puts += 1
        if self.storage is not None:
            self.storage.put_json(bucket, key, value)

    def get_json_object(self, bucket: str, key: str) -> dict[str, Any] | None:
        with self.lock:
            return self.written.get(key)


def outcome(name: str) -> float:
    return REGISTRY.get_sample_value("triage_request_records_total", {"outcome": name}) or 0.0


def answer() -> dict[str, Any]:
    return {"request_id": uuid.uuid4().hex, "label": "normal", "probability": 0.1, "urgent": False}


def test_each_answer_gets_an_id_naming_its_batch_and_a_lingering_window_is_one_write():
    store = SlowStore()
    recorder = RequestRecorder(store, source="predict", linger_s=0.5)
    first, second = answer(), {**answer(), "correlation_id": "study-42", "label": "pneumonia"}
    answers = [recorder.record(first), recorder.record(second)]
    assert recorder.pending == 2 and store.puts == 0  # lingering: nothing written on the request path
    assert recorder.flush(5) and store.puts == 1  # two records, one object
    ids = [a["request_id"] for a in answers]
    assert ids[0].endswith("." + first["request_id"]) and ids[1].endswith("." + second["request_id"])
    assert request_batch_of(ids[0]) == request_batch_of(ids[1]) is not None
    records = [load_request_record(store, i) for i in ids]
    assert [(r["request_id"], r["source"], r["label"]) for r in records] == [
        (ids[0], "predict", "normal"), (ids[1], "predict", "pneumonia")]
    assert records[1]["correlation_id"] == "study-42"
    # An id of the same batch that was never answered, a made-up batch, a key-unsafe id: no record.
    batch = request_batch_of(ids[0])
    assert load_request_record(store, f"{batch}.{uuid.uuid4().hex}") is None
    assert load_request_record(store, f"{'0' * 16}.{uuid.uuid4().hex}") is None
    assert load_request_record(store, "../x") is None
    # The next window is a new batch with a name nobody could predict from the last one.
    later = recorder.record(answer())
    assert recorder.flush(5) and request_batch_of(later["request_id"]) != batch and store.puts == 2


def test_ingest_records_under_their_own_key_are_found_the_same_way(storage):
    record_request(storage, {"request_id": "a" * 32, "label": "pneumonia"}, source="ingest",
                   result_uri="s3://inference-results/x.json")  # fmt: skip
    assert load_request_record(storage, "a" * 32)["result"] == "s3://inference-results/x.json"
    with pytest.raises(ValueError):
        record_request(storage, {"request_id": "../x"}, source="ingest")


def test_a_burst_far_above_max_pending_loses_no_record_and_holds_requests_back(storage):
    store = SlowStore(storage, delay_s=0.005)
    recorder = RequestRecorder(store, source="predict", max_pending=16, linger_s=0.001, block_s=10)
    waits_before = REGISTRY.get_sample_value("triage_request_record_wait_seconds_count") or 0.0
    failed_before = outcome("failed")
    answered: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(25):
            request_id = recorder.record(answer())["request_id"]
            with lock:
                answered.append(request_id)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert recorder.flush(30)

    assert len(set(answered)) == 200
    assert all(load_request_record(storage, request_id) is not None for request_id in answered)
    assert outcome("failed") == failed_before
    assert store.puts < 200  # batched: fewer objects than records
    # 16 pending was reached again and again: requests waited for room instead of dropping their records.
    assert (REGISTRY.get_sample_value("triage_request_record_wait_seconds_count") or 0.0) > waits_before
    assert REGISTRY.get_sample_value("triage_request_records_pending") == 0


def test_a_stalled_s3_holds_the_request_back_then_refuses_it_rather_than_lose_a_record():
    gate = threading.Event()
    store = SlowStore(gate=gate)
    recorder = RequestRecorder(store, source="predict", max_pending=3, linger_s=0.0, block_s=0.3)
    kept = [recorder.record(answer())["request_id"] for _ in range(3)]
    assert recorder.pending == 3
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):  # no room for 0.3 s: 503, no answer it could not label
        recorder.record(answer())
    assert time.monotonic() - started >= 0.25

    waiting: list[str] = []
    blocked = threading.Thread(target=lambda: waiting.append(recorder.record(answer())["request_id"]))
    recorder.block_s = 10
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # still no room: the request waits for the records ahead of it
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive() and recorder.flush(5)
    assert all(load_request_record(store, request_id) for request_id in kept + waiting)


def test_a_failing_write_is_retried_until_it_lands():
    store = SlowStore(failures=4)
    recorder = RequestRecorder(store, source="explain", linger_s=0.0, retry_delays_s=(0.0, 0.01))
    failed_before = outcome("failed")
    request_id = recorder.record({**answer(), "label": "pneumonia"})["request_id"]
    assert recorder.flush(5)
    assert load_request_record(store, request_id)["source"] == "explain"
    assert outcome("failed") - failed_before == 4  # four failed attempts, one record, and it landed


def test_after_close_each_record_is_written_by_its_request_and_a_failure_is_a_503():
    store = SlowStore()
    recorder = RequestRecorder(store, source="predict")
    recorder.close()
    written = recorder.record(answer())["request_id"]
    assert load_request_record(store, written) is not None and recorder.pending == 0
    store.failures = 10
    with pytest.raises(StorageUnavailable):
        recorder.record(answer())


def test_an_unsafe_request_id_is_answered_unrecorded_and_counted():
    recorder = RequestRecorder(SlowStore(), source="predict")
    before = outcome("invalid")
    assert recorder.record({"request_id": "../bad"}) == {"request_id": "../bad"}
    assert outcome("invalid") == before + 1 and recorder.pending == 0


def test_records_still_pending_when_the_process_exits_are_written(tmp_path: Path):
    """The writer is slow (50 ms a batch), batches are small and the script exits at once: atexit writes all 40."""
    script = textwrap.dedent(f"""
        import json, pathlib, sys, time, uuid
        sys.path.insert(0, {str(ROOT)!r})
        from shared.request_records import RequestRecorder

        class DirStore:
            def put_json(self, bucket, key, value):
                time.sleep(0.05)
                path = pathlib.Path({str(tmp_path)!r}) / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(value))

        recorder = RequestRecorder(DirStore(), source="predict", max_batch=4)
        ids = [recorder.record({{"request_id": uuid.uuid4().hex, "label": "normal"}})["request_id"] for _ in range(40)]
        print(json.dumps({{"pending": recorder.pending, "ids": ids}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    printed = json.loads(done.stdout)
    assert printed["pending"] > 0  # records were still pending when the script ended
    records: dict[str, Any] = {}
    for path in (tmp_path / "requests" / "batches").iterdir():
        records.update(json.loads(path.read_text())["records"])
    assert sorted(records) == sorted(printed["ids"])
    assert {r["source"] for r in records.values()} == {"predict"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_starts_its_own_batches():
    store = SlowStore()
    recorder = RequestRecorder(store, source="predict", linger_s=30)
    parent = recorder.record(answer())["request_id"]  # the parent's batch is open (lingering) at the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: gunicorn's worker
        try:
            child = recorder.record(answer())["request_id"]
            ok = recorder.flush(5) and load_request_record(store, child) is not None
            os.write(write, json.dumps({"child": child, "ok": ok, "puts": store.puts}).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    reported = json.loads(os.read(read, 10_000))
    assert reported["ok"] and reported["puts"] == 1  # the child wrote its own record, not the parent's open batch
    assert request_batch_of(reported["child"]) != request_batch_of(parent)
    assert recorder.flush(5) and load_request_record(store, parent) is not None


def test_the_recorder_builds_its_s3_client_only_on_the_first_write():
    built: list[int] = []

    def factory() -> SlowStore:
        built.append(1)
        return SlowStore()

    recorder = RequestRecorder(factory, source="predict", linger_s=0.0)
    assert built == []
    request_id = recorder.record(answer())["request_id"]
    assert recorder.flush(5) and built == [1]
    assert load_request_record(recorder.storage, request_id) is not None


def test_a_lookup_waits_for_a_batch_not_written_yet_but_not_for_an_id_its_written_batch_lacks():
    store = SlowStore()
    recorder = RequestRecorder(store, source="predict", linger_s=0.3)
    request_id = recorder.record(answer())["request_id"]
    assert load_request_record(store, request_id) is None  # its batch is still lingering
    started = time.monotonic()
    assert load_request_record(store, request_id, wait_s=5)["request_id"] == request_id  # read again until written
    assert time.monotonic() - started < 2
    slept: list[float] = []
    sibling = f"{request_batch_of(request_id)}.{uuid.uuid4().hex}"  # the batch exists, without this id: at once
    assert load_request_record(store, sibling, wait_s=5, sleep=slept.append) is None and slept == []
    never = f"{'f' * 16}.{uuid.uuid4().hex}"  # no such batch: waits up to wait_s, in growing steps, then None
    assert load_request_record(store, never, wait_s=0.3, sleep=slept.append) is None
    assert slept and slept == sorted(slept) and sum(slept) <= 0.3 + 1e-9
