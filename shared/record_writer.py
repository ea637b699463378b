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
the function's settings (`for_settings`), ignores SIGTERM
and SIGINT (the stack signals a function's whole process group; the function's graceful exit flushes through the
child) and exits when its input closes: when the function process exits, however it exits. A batch it has read
whole is still written if the function is killed meanwhile. It logs no key and no record: errors by type only.

Protocol, one line each way: `{"bucket", "key", "value"}` in, `{"etag"}` or `{"error": "<exception type>"}` out.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from shared.storage import StorageUnavailable

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = ["RecordWriterProcess", "main"]


class RecordWriterProcess:
    """`put_json` of `shared.storage.Storage`, done by a child process (module docstring); one write at a time."""

    def __init__(self, argv: Sequence[str] | None = None, *, s3: Mapping[str, str | None] | None = None) -> None:
        self.argv = list(argv or (sys.executable, "-m", "shared.record_writer"))
        self._s3 = dict(s3 or {})  # S3 variables the child gets whatever this process's environment says
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._pid = os.getpid()

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

    def put_json(self, bucket: str, key: str, value: Any) -> str | None:
        """Write `value` as JSON to `bucket/key` through the child; its etag. StorageUnavailable when the child
        could not write it or is gone (the next call starts a new one)."""
        line = json.dumps({"bucket": bucket, "key": key, "value": value}, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            child = self._running()
            stdin, stdout = _pipes(child)
            try:
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

    def _running(self) -> subprocess.Popen[bytes]:
        """Holding the lock: the child, started now if there is none (or it exited, or this is a forked copy)."""
        if self._pid != os.getpid():  # forked: that child belongs to the parent
            self._child, self._pid = None, os.getpid()
        if self._child is None or self._child.poll() is not None:
            self._drop()
            env = dict(os.environ)
            for name, value in self._s3.items():  # the settings' S3 over the environment's (None: unset)
                if value is None:
                    env.pop(name, None)
                else:
                    env[name] = value
            self._child = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        return self._child

    def _drop(self) -> None:
        """Holding the lock: forget the child (killed if it still runs: its answer can no longer be matched)."""
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
    """The child: one write per input line, one answer line each, until the input closes."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")  # the answers' own channel ...
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # ... so that nothing printed can corrupt it
    from shared.config import Settings
    from shared.storage import Storage

    storage = Storage.from_settings(Settings.from_env())
    for line in sys.stdin.buffer:
        if not line.endswith(b"\n"):
            break  # the function died mid-line: nothing whole to write
        try:
            request = json.loads(line)
            reply: dict[str, Any] = {"etag": storage.put_json(request["bucket"], request["key"], request["value"])}
        except Exception as exc:  # answered, never raised: the recorder retries
            reply = {"error": type(exc).__name__}
        try:
            answers.write(json.dumps(reply).encode() + b"\n")
            answers.flush()
        except BrokenPipeError:  # the function is gone: nobody to answer
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
