"""Request records: `triage-state/requests/<request_id>.json` for every answered prediction, never dropped.

A label can only follow a prediction whose record exists (`shared.feedback.submit_feedback` looks it up), so
the record of every answer a radiologist may label must be written. Ingest writes its record inline
(`record_request`, before its result exists); predict and explain hand theirs to a `RequestRecorder`, which
writes them from a few writer threads off the request path, with back-pressure instead of drops:

- a record waits in a bounded queue (`max_pending`); when the queue is full the request blocks up to `block_s`
  for room, and past that writes its record itself (inline), so a slow S3 slows predictions down rather than
  losing their records; an inline write that fails raises `StorageUnavailable` (503: the caller gets no answer
  it could label);
- a failed background write is retried with backoff (`retry_delays_s`) before it is counted as failed;
- `close()` (registered with `atexit`, so a worker's graceful exit runs it) writes what is still queued.

Metrics: `triage_request_records_pending` (queue depth), `triage_request_records_total{outcome}` (written,
inline, failed, invalid) and `triage_request_record_wait_seconds` (how long a request was held back).
This module imports no S3 client: a factory builds the `Storage` on first use, off cold start.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter, Gauge, Histogram

from shared.names import REQUEST_ID, STATE_BUCKET, request_record_key
from shared.storage import StorageUnavailable
from shared.timestamps import utc_iso

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = ["RECORDS_PENDING", "RECORDS_WRITTEN", "RECORD_WAIT", "RecordStore", "RequestRecorder", "record_request"]

log = logging.getLogger(__name__)

RECORDS_PENDING = Gauge("triage_request_records_pending", "Request records queued and not yet written.")
RECORDS_WRITTEN = Counter(
    "triage_request_records_total",
    "Request records by outcome: written (background), inline (the request wrote it: queue full), failed, invalid.",
    ["outcome"],
)
RECORD_WAIT = Histogram(
    "triage_request_record_wait_seconds",
    "Seconds a request was held back because the request-record queue was full (back-pressure).",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


class RecordStore(Protocol):
    """What a record needs of `shared.storage.Storage`."""

    def put_json(self, bucket: str, key: str, value: Any) -> Any: ...


def record_request(
    storage: RecordStore, prediction: Mapping[str, Any], *, source: str, result_uri: str | None = None
) -> None:
    """Index an answered request (`prediction` = Prediction.to_json(), plus anything else) for feedback."""
    request_id = str(prediction["request_id"])
    if not REQUEST_ID.match(request_id):
        raise ValueError(f"request_id {request_id!r} is not a safe key")
    record = {
        "request_id": request_id,
        "correlation_id": prediction.get("correlation_id"),
        "source": source,
        "label": prediction.get("label"),
        "probability": prediction.get("probability"),
        "urgent": prediction.get("urgent"),
        "model": prediction.get("model"),
        "result": result_uri,
        "time": utc_iso(),
    }
    storage.put_json(STATE_BUCKET, request_record_key(request_id), record)


class RequestRecorder:
    """`record_request` from background writer threads, with back-pressure instead of drops (module docstring)."""

    def __init__(
        self,
        storage: RecordStore | Callable[[], RecordStore],
        *,
        source: str,
        max_pending: int = 1000,
        writers: int = 4,
        block_s: float = 0.25,
        retry_delays_s: Sequence[float] = (0.05, 0.25, 1.0),
    ) -> None:
        # A factory defers the S3 client (botocore takes ~0.2 s to build one) to the first write, off cold start.
        self._storage: RecordStore | None = None if callable(storage) and not hasattr(storage, "put_json") else storage
        self._factory = storage if self._storage is None else None
        self.source = source
        self.writers = max(1, writers)
        self.block_s = block_s
        self.retry_delays_s = tuple(retry_delays_s)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max(1, max_pending))
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._atexit_registered = False

    @classmethod
    def from_settings(cls, settings: Settings, *, source: str) -> RequestRecorder:
        """A recorder writing to the settings' S3 (boto3 is imported on the first write, not here)."""

        def build() -> RecordStore:
            from shared.storage import Storage

            return Storage.from_settings(settings)

        return cls(build, source=source)

    @property
    def storage(self) -> RecordStore:
        with self._lock:
            if self._storage is None:
                assert self._factory is not None
                self._storage = self._factory()
            return self._storage

    @property
    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def record(self, prediction: Mapping[str, Any]) -> None:
        """Queue the record; when the queue stays full for `block_s`, write it here (StorageUnavailable: 503)."""
        item = dict(prediction)
        if self._closed:
            self._write_inline(item)
            return
        self._start_writers()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            started = time.perf_counter()
            try:
                self._queue.put(item, timeout=self.block_s)
            except queue.Full:
                self._write_inline(item)
            RECORD_WAIT.observe(time.perf_counter() - started)
        RECORDS_PENDING.set(self._queue.unfinished_tasks)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued record is written (or failed for good); False when `timeout_s` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self, timeout_s: float | None = 30.0) -> bool:
        """Write what is queued; later records are written inline. Runs at interpreter exit (atexit)."""
        self._closed = True
        if not any(thread.is_alive() for thread in self._threads):
            self._drain_here()
        flushed = self.flush(timeout_s)
        if not flushed:
            log.error("request recorder: %d records still unwritten at shutdown", self._queue.unfinished_tasks)
        return flushed

    # --- internals ---------------------------------------------------------------------------------------------
    def _start_writers(self) -> None:
        if len(self._threads) == self.writers and all(thread.is_alive() for thread in self._threads):
            return
        with self._lock:  # started lazily: after a fork too (gunicorn forks workers after importing main)
            alive = [thread for thread in self._threads if thread.is_alive()]
            while len(alive) < self.writers:
                thread = threading.Thread(target=self._run, name=f"request-recorder-{len(alive)}", daemon=True)
                thread.start()
                alive.append(thread)
            self._threads = alive
            if not self._atexit_registered:
                self._atexit_registered = True
                atexit.register(_close_at_exit, weakref.ref(self))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                self._write_with_retries(item)
            finally:
                self._queue.task_done()
                RECORDS_PENDING.set(self._queue.unfinished_tasks)

    def _drain_here(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                self._write_with_retries(item)
            finally:
                self._queue.task_done()

    def _write(self, item: dict[str, Any]) -> str:
        """One attempt: "written", or "invalid" (a request id that is no safe key: counted, never retried)."""
        try:
            record_request(self.storage, item, source=self.source)
        except ValueError:
            RECORDS_WRITTEN.labels(outcome="invalid").inc()
            log.warning("request record refused: the request id is not a safe key")
            return "invalid"
        return "written"

    def _write_with_retries(self, item: dict[str, Any]) -> None:
        for delay in (*self.retry_delays_s, None):
            try:
                if self._write(item) == "written":
                    RECORDS_WRITTEN.labels(outcome="written").inc()
                return
            except Exception as exc:  # a failed write is retried; it must not kill the writer thread
                if delay is None:
                    RECORDS_WRITTEN.labels(outcome="failed").inc()
                    log.error("cannot write the request record of %s: %s", item.get("request_id"),
                              type(exc).__name__)
                    return
                time.sleep(delay)

    def _write_inline(self, item: dict[str, Any]) -> None:
        try:
            if self._write(item) == "written":
                RECORDS_WRITTEN.labels(outcome="inline").inc()
        except Exception as exc:
            RECORDS_WRITTEN.labels(outcome="failed").inc()
            raise StorageUnavailable(
                f"the request record could not be written ({type(exc).__name__}); retry shortly"
            ) from exc


def _close_at_exit(recorder_ref: weakref.ref[RequestRecorder]) -> None:
    recorder = recorder_ref()
    if recorder is not None:
        recorder.close()
