"""Request records are written off the request path and never dropped: back-pressure, retries, flush at exit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from shared.request_records import RequestRecorder
from shared.storage import Storage, StorageUnavailable

ROOT = Path(__file__).resolve().parents[2]


class SlowStore:
    """A real Storage behind a delay per write (a slow S3), or an event that holds every write back."""

    def __init__(self, storage: Storage | None = None, *, delay_s: float = 0.0, gate: threading.Event | None = None,
                 failures: int = 0) -> None:
        self.storage, self.delay_s, self.gate, self.failures = storage, delay_s, gate, failures
        self.written: dict[str, Any] = {}
        self.lock = threading.Lock()

    def put_json(self, bucket: str, key: str, value: Any) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay_s)
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("S3 is down")
            self.written[key] = value
        if self.storage is not None:
            self.storage.put_json(bucket, key, value)


def outcome(name: str) -> float:
    return REGISTRY.get_sample_value("triage_request_records_total", {"outcome": name}) or 0.0


def test_a_burst_far_above_the_queue_size_loses_no_record_and_holds_requests_back(storage):
    store = SlowStore(storage, delay_s=0.002)
    recorder = RequestRecorder(store, source="predict", max_pending=8, writers=2, block_s=0.01)
    waits_before = REGISTRY.get_sample_value("triage_request_record_wait_seconds_count") or 0.0
    failed_before = outcome("failed")
    ids = [f"burst-{n:04d}" for n in range(400)]

    def client(chunk: list[str]) -> None:
        for request_id in chunk:
            recorder.record({"request_id": request_id, "label": "normal"})

    threads = [threading.Thread(target=client, args=(ids[n::8],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert recorder.flush(30)

    assert sorted(storage.list_keys("triage-state", "requests/")) == [f"requests/{i}.json" for i in ids]
    assert outcome("failed") == failed_before
    # The queue (8) was full again and again: requests waited for room instead of dropping their records.
    assert (REGISTRY.get_sample_value("triage_request_record_wait_seconds_count") or 0.0) > waits_before
    assert REGISTRY.get_sample_value("triage_request_records_pending") == 0


def test_a_stalled_s3_holds_the_request_back_instead_of_dropping_its_record():
    gate = threading.Event()
    store = SlowStore(gate=gate)
    recorder = RequestRecorder(store, source="predict", max_pending=2, writers=1, block_s=0.05)
    for n in range(3):  # one in the writer's hands, two queued
        recorder.record({"request_id": f"held-{n}"})
    assert recorder.pending == 3
    assert REGISTRY.get_sample_value("triage_request_records_pending") == 3
    blocked = threading.Thread(target=recorder.record, args=({"request_id": "held-3"},))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # no room and S3 stalled: the request waits for its record to be written

    gate.set()
    blocked.join(5)
    assert not blocked.is_alive() and recorder.flush(5)
    assert sorted(store.written) == [f"requests/held-{n}.json" for n in range(4)]


def test_a_failing_write_is_retried_until_it_lands():
    store = SlowStore(failures=2)
    recorder = RequestRecorder(store, source="explain", writers=1, retry_delays_s=(0.0, 0.0, 0.0))
    recorder.record({"request_id": "retry-1", "label": "pneumonia"})
    assert recorder.flush(5)
    assert store.written["requests/retry-1.json"]["source"] == "explain"


def test_an_inline_write_that_fails_is_a_503_not_a_silent_loss():
    store = SlowStore(failures=10)
    recorder = RequestRecorder(store, source="predict")
    recorder.close()  # after close every record is written by its request
    with pytest.raises(StorageUnavailable):
        recorder.record({"request_id": "lost-1"})


def test_records_still_queued_when_the_process_exits_are_written(tmp_path: Path):
    """The writer is slow (20 ms a record) and the script exits at once: the atexit flush writes all 40."""
    script = textwrap.dedent(f"""
        import json, pathlib, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from shared.request_records import RequestRecorder

        class DirStore:
            def put_json(self, bucket, key, value):
                time.sleep(0.02)
                path = pathlib.Path({str(tmp_path)!r}) / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(value))

        recorder = RequestRecorder(DirStore(), source="predict", writers=1)
        for n in range(40):
            recorder.record({{"request_id": f"exit-{{n}}", "label": "normal"}})
        print(recorder.pending)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert int(done.stdout.strip()) > 0  # records were still queued when the script ended
    written = sorted(path.name for path in (tmp_path / "requests").iterdir())
    assert written == sorted(f"exit-{n}.json" for n in range(40))
    assert json.loads((tmp_path / "requests" / "exit-7.json").read_text())["source"] == "predict"


def test_the_recorder_builds_its_s3_client_only_on_the_first_write():
    built: list[int] = []

    def factory() -> SlowStore:
        built.append(1)
        return SlowStore()

    recorder = RequestRecorder(factory, source="predict")
    assert built == []
    recorder.record({"request_id": "lazy-1"})
    assert recorder.flush(5) and built == [1]
    assert "requests/lazy-1.json" in recorder.storage.written
