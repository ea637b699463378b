"""Server-side micro-batching: concurrent single-image model calls grouped into one batched call, with a latency cap.

`MicroBatcher(run_batch, max_batch=8, wait_s=0.002)` is called with one input row [1, ...] per request thread and
returns that request's own output row [1, ...] (its row of each output when `run_batch` returns a list of arrays).
The first caller that finds no batch running leads: it waits up to `wait_s` (the cap: no request waits longer for
companions) for up to `max_batch` rows, runs them in one `run_batch(stacked)` in its own thread and hands each
waiter its row; the first caller queued meanwhile leads the next batch, so nobody runs more than its own batch.
The others sleep on an event. With nobody else about the leader does not wait at all (`wait_s` applies only while
more than one is queued, or the last batch had company), so a lone request pays a lock and no wait. An exception
of `run_batch` reaches every caller of that batch. `close()` makes later calls run alone; calls waiting then are
still answered. As KServe's batcher and Ray Serve's `@serve.batch`, but in-process and without a thread of its own
(so nothing to restart after gunicorn forks a worker).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MicroBatcher"]


@dataclass
class _Call:
    row: np.ndarray
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # this caller runs the next batch (its own row is the first of it)
    finished: bool = False
    result: Any = None
    error: BaseException | None = None


class MicroBatcher:
    """Group concurrent `__call__(row)` into `run_batch(rows)` calls of at most `max_batch` rows (module docstring)."""

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray | Sequence[np.ndarray]], *, max_batch: int = 8,
                 wait_s: float = 0.002, clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch < 1 or wait_s < 0:
            raise ValueError("max_batch must be at least 1 and wait_s at least 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.clock = clock
        self.batches = 0  # batched calls made and the rows they carried (the bench and tests read them)
        self.rows = 0
        self._queue: list[_Call] = []
        self._running = False  # a caller is leading (waiting for companions or running a batch)
        self._last_rows = 1
        self._closed = False
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

    def __call__(self, row: np.ndarray) -> Any:
        """This caller's output row [1, ...] of `run_batch` on its input row [1, ...], or its row of each output when
        `run_batch` returns a list of arrays; raises what `run_batch` raised."""
        if self._closed or self.max_batch == 1:
            return self.run_batch(row)
        call = _Call(row)
        with self._lock:
            self._queue.append(call)
            if not self._running:
                self._running = call.lead = True
            else:
                self._arrived.notify()
        while not call.finished:
            if call.lead:
                call.lead = False
                self._run_batch()
            else:
                call.wake.wait()
                call.wake.clear()
        if call.error is not None:
            raise call.error
        return call.result

    def close(self) -> None:
        """Later calls run alone; those queued now are still answered."""
        with self._lock:
            self._closed = True
            self._arrived.notify_all()

    def _take(self) -> list[_Call]:
        """Up to `max_batch` queued calls; while others are about (more than one queued, or the last batch had
        company) wait at most `wait_s` for the batch to fill."""
        with self._lock:
            deadline = self.clock() + self.wait_s
            while (len(self._queue) < self.max_batch and (len(self._queue) > 1 or self._last_rows > 1)
                   and not self._closed and (remaining := deadline - self.clock()) > 0):
                self._arrived.wait(remaining)
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            self._last_rows = len(batch)
            return batch

    def _handover(self) -> None:
        """The next queued caller leads the next batch; with none queued, the next arrival will."""
        with self._lock:
            if self._queue:
                self._queue[0].lead = True
                self._queue[0].wake.set()
            else:
                self._running = False

    def _run_batch(self) -> None:
        """One batch (the leader's own row first), each waiter its row or the error; then hand the lead over."""
        batch = self._take()
        try:
            rows = np.concatenate([call.row for call in batch], axis=0)
            out = self.run_batch(rows)
            outputs = [out] if isinstance(out, np.ndarray) else list(out)
            if any(len(output) != len(batch) for output in outputs):
                raise RuntimeError(f"the batched call returned {[len(o) for o in outputs]} rows for {len(batch)} "
                                   "inputs")
            for index, call in enumerate(batch):
                rows_of_call = [output[index: index + 1] for output in outputs]
                call.result = rows_of_call[0] if isinstance(out, np.ndarray) else rows_of_call
            self.batches, self.rows = self.batches + 1, self.rows + len(batch)
        except BaseException as exc:  # every waiter of this batch gets the error
            for call in batch:
                call.error = exc
        finally:
            self._handover()
            for call in batch:
                call.finished = True
                call.wake.set()
