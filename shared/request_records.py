"""Request records: one for every answered prediction, never dropped, and (predict, explain) written in batches.

A label can only follow a prediction whose record exists (`shared.feedback.submit_feedback` looks it up with
`load_request_record`), so the record of every answer a radiologist may label must be written. Two layouts:

- ingest writes its record inline (`record_request`, before its result exists) under its own key,
  `triage-state/requests/<request_id>.json`: one S3 write among the several an upload costs anyway;
- predict and explain hand theirs to a `RequestRecorder`, which gives each answer the id `<batch>.<uuid>` and
  writes the records of a batch as one object, `triage-state/requests/batches/<batch>.json`, from one writer thread
  off the request path. A batch is cut after `linger_s` (or at `max_batch` records) and written once, whole, never
  appended to: one S3 PUT per batch instead of one per prediction (at 100 predictions/s, ~5 instead of 100: the
  S3 server's CPU per prediction fell from 6 ms to a fraction of one; README, "the predict path"). The id names
  its batch, so a lookup is one GET; its 128 random bits stay, so no caller can guess another's id.

Never dropped: a record is counted pending from `record()` until its batch is written; a failed write is
retried with backoff (up to 30 s apart) for as long as it takes (the batch is whole: a retry is idempotent);
when `max_pending` records wait, a request waits up to `block_s` for room (back-pressure,
`triage_request_record_wait_seconds`) and past that is refused with `StorageUnavailable` (503: the caller gets
no answer it could not label). `close()` (registered with `atexit`, so a worker's graceful exit runs it) writes
what is pending; after it, each record is written by its request, inline.

Metrics: `triage_request_records_pending`, `triage_request_records_total{outcome}` (written, inline, invalid,
failed: records of a failed attempt, retried), `triage_request_record_batch_size` and
`triage_request_record_wait_seconds`. This module imports no S3 client: in a function (`from_settings`) the
batches go through a writer process (`shared.record_writer`: botocore and the JSON encoding off the request
threads' GIL, measured c=1 p99 4.9 -> 4.2 ms), started by the writer thread, off cold start. Each record is staged
with that process as its answer is made (`StagingStore.stage`: before the answer leaves) and a batch is written by
`commit`, so a SIGKILL of the function loses no answered record (the child writes what it holds when the function
is gone); records answered before the process ran are staged when it starts.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from prometheus_client import Counter, Gauge, Histogram

from shared.names import REQUEST_ID, STATE_BUCKET, request_batch_key, request_batch_of, request_record_key
from shared.storage import StorageUnavailable
from shared.timestamps import utc_iso

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = ["LINGER_S", "RECORDS_PENDING", "RECORDS_WRITTEN", "RECORD_WAIT", "RecordStore", "RequestRecorder",
           "StagingStore", "load_request_record", "record_request"]

log = logging.getLogger(__name__)
# How long a batch stays open after its first answer. Each batch is one S3 PUT (~1.4 ms of botocore, now in the
# writer process, and ~3 ms of the local S3 server's CPU on the same cores). Measured at c=1 / c=8 (one predict,
# 2 threads, the PUT still on a thread): 50 ms -> p99 5.9 ms, 532 req/s; 250 ms -> p99 5.0 ms, 562 req/s; the
# writer process holds every record from its answer on (`RecordWriterProcess.stage`), so a SIGKILL of the function
# loses none of them (only one killed together with its writer child can);
# a label sent at once waits for them (feedback.RECORD_WAIT_S).
LINGER_S = 0.25

RECORDS_PENDING = Gauge("triage_request_records_pending", "Request records answered and not yet written.")
RECORDS_WRITTEN = Counter(
    "triage_request_records_total",
    "Request records by outcome: written (in a batch), inline (written by its request: after close), invalid "
    "(no safe request id: not recorded), failed (in a write attempt that failed: retried).",
    ["outcome"],
)
RECORD_BATCH_SIZE = Histogram(
    "triage_request_record_batch_size",
    "Records per written batch object (one S3 PUT each).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
RECORD_WAIT = Histogram(
    "triage_request_record_wait_seconds",
    "Seconds a request was held back because max_pending records were waiting to be written (back-pressure).",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


class RecordStore(Protocol):
    """What a record needs of `shared.storage.Storage`."""

    def put_json(self, bucket: str, key: str, value: Any) -> Any: ...


class _Stage(Protocol):
    """`RecordWriterProcess.stage`: one record of a batch object handed over before its answer leaves."""

    def __call__(self, bucket: str, key: str, batch: Mapping[str, Any], request_id: str, record: Any) -> None: ...


class StagingStore(RecordStore, Protocol):
    """A store records are handed to as they are answered (`shared.record_writer.RecordWriterProcess`)."""

    def start(self) -> None: ...

    def stage(self, bucket: str, key: str, batch: Mapping[str, Any], request_id: str, record: Any) -> None: ...

    def commit(self, bucket: str, key: str, count: int) -> Any: ...


class RecordSource(Protocol):
    """What a lookup needs of `shared.storage.Storage`."""

    def get_json_object(self, bucket: str, key: str) -> dict[str, Any] | None: ...


def _record(prediction: Mapping[str, Any], request_id: str, source: str, result_uri: str | None) -> dict[str, Any]:
    return {
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


def record_request(
    storage: RecordStore, prediction: Mapping[str, Any], *, source: str, result_uri: str | None = None
) -> None:
    """Index one answered request under its own key (`prediction` = Prediction.to_json(), plus anything else)."""
    request_id = str(prediction["request_id"])
    if not REQUEST_ID.match(request_id):
        raise ValueError(f"request_id {request_id!r} is not a safe key")
    storage.put_json(STATE_BUCKET, request_record_key(request_id),
                     _record(prediction, request_id, source, result_uri))  # fmt: skip


def load_request_record(storage: RecordSource, request_id: str, *, wait_s: float = 0.0,
                        sleep: Callable[[float], None] = time.sleep) -> dict[str, Any] | None:
    """The record of `request_id` (in its batch object, or under its own key); None when there is none.

    A batch is written `linger_s` (plus a PUT) after its first answer: with `wait_s`, a lookup whose batch object
    does not exist yet reads again (backoff, up to `wait_s`), so a label sent right after its answer still finds
    it. A batch that exists without the id answers None at once (a batch is written once, whole).
    """
    if not REQUEST_ID.match(request_id):
        return None
    batch = request_batch_of(request_id)
    if batch is None:
        return storage.get_json_object(STATE_BUCKET, request_record_key(request_id))
    waited, delay = 0.0, 0.05
    while (stored := storage.get_json_object(STATE_BUCKET, request_batch_key(batch))) is None:
        if waited >= wait_s:
            return None
        step = min(delay, wait_s - waited)
        sleep(step)
        waited, delay = waited + step, delay * 2
    records = stored.get("records")
    record = records.get(request_id) if isinstance(records, dict) else None
    return record if isinstance(record, dict) else None


# The model's own id must leave room for `<16 hex batch>.` within REQUEST_ID's 64 characters.
_MAX_OWN_ID = 64 - len("0123456789abcdef.")


@dataclass
class _Batch:
    """Records of one batch object: named at its first record, cut by the writer, written once."""

    name: str = field(default_factory=lambda: secrets.token_hex(8))
    opened: float = field(default_factory=time.monotonic)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, answer: dict[str, Any], request_id: str, source: str, stage: _Stage | None = None) -> None:
        """Give `answer` its final id `<batch>.<request_id>` and keep its record here (and with `stage`)."""
        answer["request_id"] = final = f"{self.name}.{request_id}"
        self.records[final] = _record(answer, final, source, None)
        if stage is not None:
            self.hand_over(stage, source, final)

    def hand_over(self, stage: _Stage, source: str, request_id: str) -> None:
        """Stage one of this batch's records with the writer process (its batch object's key, body and id)."""
        stage(STATE_BUCKET, request_batch_key(self.name), {"batch": self.name, "source": source}, request_id,
              self.records[request_id])  # fmt: skip

    def write(self, storage: RecordStore, source: str, *, staged: bool = False) -> None:
        """The batch object, whole (the same key and body each time: a retry is idempotent); `staged`: every record
        was handed to `storage` (a writer process), which builds the object itself (`commit`)."""
        if staged:
            cast("StagingStore", storage).commit(STATE_BUCKET, request_batch_key(self.name), len(self.records))
            return
        storage.put_json(STATE_BUCKET, request_batch_key(self.name),
                         {"batch": self.name, "source": source, "records": self.records})  # fmt: skip


class RequestRecorder:
    """Batched request records from one writer thread, with back-pressure instead of drops (module docstring)."""

    def __init__(
        self,
        storage: RecordStore | Callable[[], RecordStore],
        *,
        source: str,
        linger_s: float = LINGER_S,
        max_batch: int = 256,
        max_pending: int = 4096,
        block_s: float = 2.0,
        retry_delays_s: Sequence[float] = (0.05, 0.25, 1.0, 5.0, 30.0),
    ) -> None:
        # A factory defers the S3 client (botocore takes ~0.2 s to build one) to the first write, off cold start.
        self._storage: RecordStore | None = None if callable(storage) and not hasattr(storage, "put_json") else storage
        self._factory = storage if self._storage is None else None
        self.source = source
        self.linger_s = linger_s
        self.max_batch = max(1, max_batch)
        self.max_pending = max(1, max_pending)
        self.block_s = block_s
        self.retry_delays_s = tuple(retry_delays_s) or (0.0,)
        self._closed = False
        self._atexit_registered = False
        self._storage_lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (gunicorn forks workers after importing main)."""
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._open: _Batch | None = None
        self._sealed: list[_Batch] = []  # cut, waiting for the writer, oldest first
        self._pending = 0  # records answered and not yet written (the open, sealed and in-flight batches)
        self._writer: threading.Thread | None = None
        self._stage: _Stage | None = None  # the writer process's `stage`, once the writer thread has started it

    @classmethod
    def from_settings(cls, settings: Settings, *, source: str) -> RequestRecorder:
        """A recorder writing to the settings' S3, built on the first write: through a writer process
        (`shared.record_writer`, REQUEST_RECORD_WRITER=process, the default: botocore off this process's GIL; the
        child gets the settings' S3) or from the writer thread itself (=thread)."""

        def build() -> RecordStore:
            if settings.request_record_writer == "thread":
                from shared.storage import Storage

                return Storage.from_settings(settings)
            from shared.record_writer import RecordWriterProcess

            return RecordWriterProcess.for_settings(settings)

        return cls(build, source=source)

    @property
    def storage(self) -> RecordStore:
        with self._storage_lock:
            if self._storage is None:
                assert self._factory is not None
                self._storage = self._factory()
            return self._storage

    @property
    def pending(self) -> int:
        return self._pending

    def record(self, prediction: Mapping[str, Any]) -> dict[str, Any]:
        """The answer with its final request id `<batch>.<uuid>`, its record pending in that batch.

        StorageUnavailable (503) when `max_pending` records still wait after `block_s`, or when an inline write
        (after `close`) fails. An answer whose request id is no safe key is returned as it is, unrecorded.
        """
        answer = dict(prediction)
        request_id = str(answer.get("request_id"))
        if not REQUEST_ID.match(request_id) or len(request_id) > _MAX_OWN_ID:
            RECORDS_WRITTEN.labels(outcome="invalid").inc()
            log.warning("request record refused: the request id is not a safe key")
            return answer
        if os.getpid() != self._pid:
            self._reset()
        if self._closed:
            return self._write_inline(answer, request_id)
        with self._cond:
            self._start_writer()
            if self._pending >= self.max_pending:
                self._wait_for_room()
            if self._open is None:
                self._open = _Batch()
            batch = self._open
            batch.add(answer, request_id, self.source, self._stage)
            self._pending += 1
            if len(batch.records) >= self.max_batch:
                self._sealed.append(batch)
                self._open = None
            if len(batch.records) == 1 or self._open is None:
                self._cond.notify_all()
        RECORDS_PENDING.set(self._pending)
        return answer

    def flush(self, timeout_s: float | None = None) -> bool:
        """Write what is pending now (no lingering); False when `timeout_s` passed before all of it was written."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            if self._pending and self._writer is None:
                self._start_writer()
            self._seal_open()
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout_s: float | None = 30.0) -> bool:
        """Write what is pending; later records are written inline. Runs at interpreter exit (atexit)."""
        self._closed = True
        flushed = self.flush(timeout_s)
        if not flushed:
            log.error("request recorder: %d records still unwritten at shutdown", self._pending)
        closer = getattr(self._storage, "close", None)  # a writer process: let it finish and exit
        if flushed and callable(closer):
            closer()
        return flushed

    # --- internals (the caller holds self._cond where noted) ----------------------------------------------------
    def _wait_for_room(self) -> None:
        """Holding the lock: wait up to block_s for the pending records to fall below max_pending."""
        started = time.perf_counter()
        deadline = time.monotonic() + self.block_s
        self._seal_open()
        while self._pending >= self.max_pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                RECORD_WAIT.observe(time.perf_counter() - started)
                raise StorageUnavailable(
                    f"{self._pending} request records are waiting to be written; retry shortly")
            self._cond.wait(remaining)
        RECORD_WAIT.observe(time.perf_counter() - started)

    def _seal_open(self) -> None:
        """Holding the lock: cut the open batch now, so the writer takes it without lingering."""
        if self._open is not None and self._open.records:
            self._sealed.append(self._open)
            self._open = None
            self._cond.notify_all()

    def _start_writer(self) -> None:
        """Holding the lock: one writer thread, started lazily (after a fork too)."""
        if self._writer is not None and self._writer.is_alive():
            return
        self._writer = threading.Thread(target=self._run, name=f"request-recorder-{self.source}", daemon=True)
        self._writer.start()
        if not self._atexit_registered:
            self._atexit_registered = True
            atexit.register(_close_at_exit, weakref.ref(self))

    def _next_batch(self) -> _Batch:
        """The oldest sealed batch, else the open one once it has lingered `linger_s`; waits for one."""
        with self._cond:
            while True:
                if self._sealed:
                    return self._sealed.pop(0)
                if self._open is not None and self._open.records:
                    due = self._open.opened + self.linger_s - time.monotonic()
                    if due <= 0:
                        batch, self._open = self._open, None
                        return batch
                    self._cond.wait(due)
                else:
                    self._cond.wait()

    def _start_storage(self) -> None:
        """On the writer thread: build the store, start a writer process and stage with it from now on, the records
        answered before it ran included (under the lock: no batch is cut meanwhile, so each is staged before its
        batch's write)."""
        try:
            store = self.storage
            start, stage = getattr(store, "start", None), getattr(store, "stage", None)
            if callable(start):
                start()
        except Exception as exc:  # the first write starts it again, and retries
            log.error("request recorder: the record writer could not be started (%s)", type(exc).__name__)
            return
        if not callable(stage):
            return
        with self._cond:
            for batch in [*self._sealed, *([self._open] if self._open is not None else [])]:
                for request_id in batch.records:
                    batch.hand_over(stage, self.source, request_id)
            self._stage = stage

    def _run(self) -> None:
        self._start_storage()
        while True:
            batch = self._next_batch()
            self._write_with_retries(batch)
            with self._cond:
                self._pending -= len(batch.records)
                self._cond.notify_all()
            RECORDS_PENDING.set(self._pending)

    def _write_with_retries(self, batch: _Batch) -> None:
        """Until it lands: the same key and body each time (idempotent); backoff after each failure."""
        attempt = 0
        while True:
            try:
                batch.write(self.storage, self.source, staged=self._stage is not None)
            except Exception as exc:  # a failed write is retried; it must not kill the writer thread
                RECORDS_WRITTEN.labels(outcome="failed").inc(len(batch.records))
                delay = self.retry_delays_s[min(attempt, len(self.retry_delays_s) - 1)]
                if attempt < len(self.retry_delays_s) or attempt % 10 == 0:  # then one line every 10 attempts
                    log.error("cannot write a batch of %d request records (%s, attempt %d); retrying in %.2f s",
                              len(batch.records), type(exc).__name__, attempt + 1, delay)  # fmt: skip
                attempt += 1
                time.sleep(delay)
                continue
            RECORDS_WRITTEN.labels(outcome="written").inc(len(batch.records))
            RECORD_BATCH_SIZE.observe(len(batch.records))
            return

    def _write_inline(self, answer: dict[str, Any], request_id: str) -> dict[str, Any]:
        batch = _Batch()
        batch.add(answer, request_id, self.source)
        try:
            batch.write(self.storage, self.source)
        except Exception as exc:
            RECORDS_WRITTEN.labels(outcome="failed").inc()
            raise StorageUnavailable(
                f"the request record could not be written ({type(exc).__name__}); retry shortly"
            ) from exc
        RECORDS_WRITTEN.labels(outcome="inline").inc()
        return answer


def _close_at_exit(recorder_ref: weakref.ref[RequestRecorder]) -> None:
    recorder = recorder_ref()
    if recorder is not None:
        recorder.close()
