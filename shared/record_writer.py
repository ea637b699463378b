"""The request-record writer process: batch objects written to S3 by a child process, off the function's GIL.

A batch PUT through botocore is ~1.4 ms of Python (plus ~0.5 ms of `json.dumps(indent=2)` for 90 records); on the
recorder's writer thread it held the GIL that the request threads need, and every answer overlapping it waited:
measured on the local stack (one predict, a kept-alive loop at c=1), p99 4.9 ms with batches written during the
run, 3.6 ms without. `RecordWriterProcess` is the `RecordStore` the recorder writes through instead: its
`put_json` hands the batch, as one JSON line, to a child (`python -m shared.record_writer`, started on the first
write, after any fork) and waits for the child's one-line answer, the GIL released while it waits. Nothing else
changes: the recorder still counts a record pending until the child says its batch landed, retries a failed or
lost write (a child that died is started again on the next attempt) and applies back-pressure.

The child reads the function's environment (`Settings.from_env`) with the S3 endpoint, credentials and region of
the function's settings (`for_settings`), ignores SIGTERM and SIGINT, runs in its own session (a SIGKILL of the
function's process group, as the local stack's crash test sends, does not take it) and exits when its input closes:
when the function process exits, however it exits. It logs no key and no record: errors by type only.

Staged records: `stage` hands each record to the child as its answer is made, before the answer leaves (one pipe
write, no reply awaited; measured ~30 us of the request thread per answer, with its JSON). The child keeps them
per batch until that batch's PUT lands; when its input closes with staged records left — the function was killed
before it wrote their batch — the child writes each such batch itself (retried for up to `ORPHAN_RETRY_S`), so a
SIGKILL of the function process (OOM, `kill -9`) loses no record of an answer it gave. A replaced child is handed
every staged record of the batches not yet written. What this cannot save: the child killed with the function (a
container killed whole).

The recorder writes a staged batch with `commit` (the child builds the object from what it was handed: the batch
is serialized once, record by record on the request threads, instead of again, whole, on the writer thread).

Protocol, one line each way for a write: `{"bucket", "key", "value"}` or `{"commit": {"bucket", "key", "count"}}`
in, `{"etag"}` or `{"error": "<exception type>"}` out; and one line in, none out, per staged record:
`{"stage": {"bucket", "key", "object", "id", "record"}}` (the batch object is `object` plus `records` {id: record}).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from shared.storage import StorageUnavailable

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = ["ORPHAN_RETRY_S", "RecordWriterProcess", "main"]

# How long a child whose function died keeps retrying the batches of its staged records before it gives up.
ORPHAN_RETRY_S = 30.0
# The child reads its input at most once per this window (measured: a pipe write to a blocked reader cost the
# function 16 us per staged record, to one that sleeps 9 us; the child's own wakeups fall likewise). A write's
# answer waits for it too: the writer thread's, off the request path.
READ_GATHER_S = 0.05


class RecordWriterProcess:
    """`put_json` of `shared.storage.Storage`, done by a child process (module docstring); one write at a time."""

    def __init__(self, argv: Sequence[str] | None = None, *, s3: Mapping[str, str | None] | None = None) -> None:
        self.argv = list(argv or (sys.executable, "-m", "shared.record_writer"))
        self._s3 = dict(s3 or {})  # S3 variables the child gets whatever this process's environment says
        self._lock = threading.Lock()  # one write (line out, answer in) at a time
        self._send = threading.Lock()  # the child's input, whole lines; taken after _lock when both are held
        self._child: subprocess.Popen[bytes] | None = None
        self._pid = os.getpid()
        self._staged: dict[tuple[str, str], list[bytes]] = {}  # (bucket, key) -> its staged lines, until written

    @classmethod
    def for_settings(cls, settings: Settings) -> RecordWriterProcess:
        """A writer whose child talks to the S3 of `settings` (endpoint, credentials, region), not just the env's."""
        return cls(s3={"S3_ENDPOINT_URL": settings.s3_endpoint_url, "AWS_ACCESS_KEY_ID": settings.aws_access_key_id,
                       "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key, "AWS_REGION": settings.aws_region})

    @property
    def child_pid(self) -> int | None:
        """The running child's pid, None before the first write (or after it died)."""
        child = self._child
        return None if child is None or child.poll() is not None else child.pid

    def start(self) -> None:
        """Start the child now (the recorder's writer thread calls it at its start, off the request path)."""
        with self._lock:
            self._running()

    def stage(self, bucket: str, key: str, batch: Mapping[str, Any], request_id: str, record: Any) -> None:
        """Hand the child one record of the batch object `bucket/key` (`batch` plus `records`) before its answer
        leaves (module docstring). Never raises, never waits for S3: a child not running (yet) or gone is handed
        the record when the next write starts one."""
        line = json.dumps({"stage": {"bucket": bucket, "key": key, "object": batch, "id": request_id,
                                     "record": record}}, separators=(",", ":")).encode() + b"\n"  # fmt: skip
        with self._send:
            self._forget_if_forked()
            self._staged.setdefault((bucket, key), []).append(line)
            child = self._child
            if child is None or child.stdin is None:
                return
            try:
                child.stdin.write(line)
                child.stdin.flush()
            except (OSError, ValueError):  # gone: the next write replaces it and hands it every staged line
                pass

    def put_json(self, bucket: str, key: str, value: Any) -> str | None:
        """Write `value` as JSON to `bucket/key` through the child; its etag. StorageUnavailable when the child
        could not write it or is gone (the next call starts a new one)."""
        return self._exchange(bucket, key, {"bucket": bucket, "key": key, "value": value})

    def commit(self, bucket: str, key: str, count: int) -> str | None:
        """Write the batch object `bucket/key` from the `count` records staged for it (the batch is not sent again);
        its etag. StorageUnavailable as `put_json`; a child holding another count is replaced (and handed them all)."""
        try:
            return self._exchange(bucket, key, {"commit": {"bucket": bucket, "key": key, "count": count}})
        except StorageUnavailable as exc:
            if "StagedRecordsMissing" in str(exc):
                with self._lock:
                    self._drop()
            raise

    def _exchange(self, bucket: str, key: str, request: Mapping[str, Any]) -> str | None:
        """One write line out, its answer in; the records staged for `bucket/key` dropped once it landed."""
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            child = self._running()
            stdin, stdout = _pipes(child)
            try:
                with self._send:
                    stdin.write(line)
                    stdin.flush()
                reply = stdout.readline()
            except OSError as exc:
                self._drop()
                raise StorageUnavailable(f"the request-record writer process is gone ({type(exc).__name__})") from exc
            if not reply.endswith(b"\n"):
                self._drop()
                raise StorageUnavailable("the request-record writer process exited before answering")
        answer = json.loads(reply)
        if "error" in answer:
            raise StorageUnavailable(f"the request-record writer could not write the batch ({answer['error']})")
        with self._send:
            self._staged.pop((bucket, key), None)  # written: the child has dropped them too
        return answer.get("etag")

    def close(self, timeout_s: float = 30.0) -> None:
        """Close the child's input (it exits once its current write is done) and wait for it."""
        with self._lock:
            child, self._child = self._child, None
        if child is not None and self._pid == os.getpid():
            _close_quietly(child.stdin)
            try:
                child.wait(timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            _close_quietly(child.stdout)

    def _forget_if_forked(self) -> None:
        """Holding _send: in a forked copy, the child and the staged records belong to the parent."""
        if self._pid != os.getpid():
            self._child, self._pid, self._staged = None, os.getpid(), {}

    def _running(self) -> subprocess.Popen[bytes]:
        """Holding the lock: the child, started now if there is none (or it exited, or this is a forked copy),
        and handed every staged record of the batches not yet written."""
        with self._send:
            self._forget_if_forked()
        if self._child is None or self._child.poll() is not None:
            self._drop()
            env = dict(os.environ)
            for name, value in self._s3.items():  # the settings' S3 over the environment's (None: unset)
                if value is None:
                    env.pop(name, None)
                else:
                    env[name] = value
            child = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     start_new_session=True)  # fmt: skip
            with self._send:
                stdin, _ = _pipes(child)
                with contextlib.suppress(OSError):  # a child that died at once is found out by the write
                    stdin.writelines(line for lines in self._staged.values() for line in lines)
                    stdin.flush()
                self._child = child
        return self._child

    def _drop(self) -> None:
        """Holding the lock: forget the child (killed if it still runs: its answer can no longer be matched)."""
        with self._send:
            child, self._child = self._child, None
        if child is None:
            return
        if child.poll() is None:
            child.kill()
        child.wait()
        _close_quietly(child.stdin)
        _close_quietly(child.stdout)


def _pipes(child: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    assert child.stdin is not None and child.stdout is not None
    return child.stdin, child.stdout


def _close_quietly(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):
            stream.close()


def main() -> int:
    """The child: one write per write line, one answer line each; staged records kept per batch until that batch is
    written; when the input closes, the batches of the records still staged are written here (module docstring)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")  # the answers' own channel ...
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # ... so that nothing printed can corrupt it
    from shared.config import Settings
    from shared.storage import Storage

    lines: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
    # Read on a thread: the function's staged lines never wait in a full pipe while a PUT is under way.
    threading.Thread(target=_read_lines, args=(sys.stdin.fileno(), lines), daemon=True).start()
    storage = Storage.from_settings(Settings.from_env())
    staged: dict[tuple[str, str], dict[str, Any]] = {}
    answering = True
    while (read := lines.get()) is not None:
        for line in read:
            request = json.loads(line)
            if "stage" in request:
                item = request["stage"]
                batch = staged.setdefault((item["bucket"], item["key"]), {**item["object"], "records": {}})
                batch["records"][item["id"]] = item["record"]
                continue
            reply = _write(storage, staged, request)
            if answering:
                try:
                    answers.write(json.dumps(reply).encode() + b"\n")
                    answers.flush()
                except BrokenPipeError:  # the function is gone: nobody to answer; what it staged is still written
                    answering = False
    return _write_orphans(storage, staged)


def _write(storage: Any, staged: dict[tuple[str, str], dict[str, Any]], request: Mapping[str, Any]) -> dict[str, Any]:
    """One write line: a whole object, or a commit of the records staged for one; its answer, never an exception
    (the recorder retries). A batch that landed drops its staged records."""
    try:
        if "commit" in request:
            commit = request["commit"]
            where = (commit["bucket"], commit["key"])
            batch = staged.get(where)
            if batch is None or len(batch["records"]) != commit["count"]:
                return {"error": "StagedRecordsMissing"}
            etag = storage.put_json(*where, batch)
        else:
            where = (request["bucket"], request["key"])
            etag = storage.put_json(*where, request["value"])
    except Exception as exc:
        return {"error": type(exc).__name__}
    staged.pop(where, None)
    return {"etag": etag}


def _read_lines(fd: int, lines: queue.SimpleQueue[list[bytes] | None]) -> None:
    """The whole input lines of each read onto `lines` as one list, then None at the end of the input (a line cut
    short is dropped: the function died mid-line). Woken by the first byte, it sleeps READ_GATHER_S before reading
    all there is, so a busy function's staged records cost the child one wakeup per window, not one per answer (the
    pipe holds them meanwhile)."""
    pending = b""
    while True:
        select.select([fd], [], [])
        time.sleep(READ_GATHER_S)
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        *whole, pending = (pending + chunk).split(b"\n")
        if whole:
            lines.put(whole)
    lines.put(None)


def _write_orphans(storage: Any, staged: Mapping[tuple[str, str], Mapping[str, Any]]) -> int:
    """The batches of records staged by a function that is gone, each written whole; retried for ORPHAN_RETRY_S."""
    deadline, delay = time.monotonic() + ORPHAN_RETRY_S, 0.1
    left = dict(staged)
    while left:
        for (bucket, key), batch in list(left.items()):
            try:
                storage.put_json(bucket, key, batch)
                del left[(bucket, key)]
            except Exception as exc:  # S3 down: try again, until the deadline
                error = type(exc).__name__
        if left:
            if time.monotonic() + delay > deadline:
                print(f"record writer: {sum(len(b['records']) for b in left.values())} staged request records "
                      f"could not be written ({error})", file=sys.stderr)  # fmt: skip
                return 1
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
