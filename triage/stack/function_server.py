"""How each function runs in the local stack: functions-framework's app under its gunicorn, with bounded waits.

`python -m triage.stack.function_server --target predict --source functions/predict/main.py --port 8101` is
`functions-framework` with the same options, served by the same gunicorn gthread worker, plus what that worker
lacks against slow clients: it parses a request head on a pool thread, so 50 connections that send their
headers a byte at a time hold every thread and stall the function (measured: 29 s). `BoundedThreadWorker`
gathers each request head without a thread (a partial head goes back to the poller until more arrives), closes
a head that is not whole within `HEAD_TIMEOUT_S` of its first byte (with a JSON 408), bounds every read of a
body by `IDLE_TIMEOUT_S` of silence, and answers gunicorn's own refusals (400, 431, 501) in the design's JSON
instead of HTML. Request lines and header fields are limited as in gunicorn's defaults (functions-framework
turns the line limit off).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import socket
import time
from collections.abc import Mapping
from typing import Any

from gunicorn import util
from gunicorn.workers import gthread

__all__ = ["GUNICORN_OPTIONS", "HEAD_TIMEOUT_S", "HEARTBEAT_S", "IDLE_TIMEOUT_S", "BoundedThreadWorker", "main",
           "request_threads"]

HEAD_TIMEOUT_S = 10.0  # the whole request head, from its first byte
IDLE_TIMEOUT_S = 30.0  # the longest silence while a body is read
MAX_HEAD_BYTES = 64 * 1024  # past this the parser takes over (and answers its limits)
HEARTBEAT_S = 1.0  # the worker's heartbeat to the arbiter, far inside any worker timeout
GUNICORN_OPTIONS: dict[str, Any] = {
    "worker_class": "triage.stack.function_server.BoundedThreadWorker",
    "keepalive": 5,  # seconds an idle kept-alive (or headless) connection is kept
    "limit_request_line": 8190,
    "limit_request_fields": 100,
    "limit_request_field_size": 8190,
    # gunicorn >= 25.1 starts a control socket server in the master after forking the worker: it imports asyncio
    # (~45 ms of CPU beside the worker's model load on cold start) and every function's master would bind the same
    # ~/.gunicorn/gunicorn.ctl. Nothing here uses `gunicornc`.
    "control_socket_disable": True,
}
_READY, _WAIT, _EXPIRED = "ready", "wait", "expired"


def _timeout_answer() -> bytes:
    from triage.stack.httpd import error_answer  # refusals only: h11 and the stand-ins' HTTP stay off cold start

    return error_answer(408, "request_timeout", f"the request head did not arrive within {HEAD_TIMEOUT_S:g} s")


def _write_json_error(sock: Any, status: int, reason: str, message: str) -> None:
    """gunicorn's `util.write_error`, in the design's JSON (its own writes an HTML page)."""
    from triage.stack.httpd import ERROR_CODES, error_answer

    code = {500: "internal", 403: "forbidden", 417: "expectation_failed"}.get(status) or ERROR_CODES.get(
        status, "bad_request")
    util.write_nonblock(sock, error_answer(status, code, message or reason))


class _BoundedSocket:
    """A client socket that first hands gunicorn's parser the head gathered without blocking, then reads the
    body with a timeout; everything else is the socket's own."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.reading_head = True
        self.head = bytearray()
        self.head_deadline: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def gather_head(self) -> str:
        """Take what has arrived, without waiting: ready once the head is whole, over the limit or the peer closed."""
        if self._sock.gettimeout() != 0.0:  # a kept-alive socket comes back from the poller non-blocking already
            self._sock.setblocking(False)
        while True:
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                return _READY  # the parser meets the same error and closes quietly
            if not data:
                return _READY
            if self.head_deadline is None:
                self.head_deadline = time.monotonic() + HEAD_TIMEOUT_S
            self.head += data
            if b"\r\n\r\n" in self.head or b"\n\n" in self.head or len(self.head) > MAX_HEAD_BYTES:
                return _READY
        if self.head_deadline is not None and time.monotonic() > self.head_deadline:
            return _EXPIRED
        return _WAIT

    def head_read(self) -> None:
        self.reading_head, self.head_deadline = False, None

    def next_request(self) -> None:
        self.reading_head = True

    def recv(self, size: int, *flags: int) -> bytes:
        if self.head:
            data, self.head = bytes(self.head[:size]), self.head[size:]
            return data
        if self._sock.gettimeout() != IDLE_TIMEOUT_S:  # set once per request (each set is two fcntl calls)
            self._sock.settimeout(IDLE_TIMEOUT_S)  # a read that times out fails the request, the thread goes free
        return self._sock.recv(size, *flags)


class BoundedThreadWorker(gthread.ThreadWorker):
    """gunicorn's gthread worker whose pool threads never wait for a request head (see the module docstring)."""

    def init_process(self) -> None:
        util.write_error = _write_json_error  # this worker process's refusals (handle_error) in JSON
        self._notified_at = -HEARTBEAT_S
        super().init_process()

    def notify(self) -> None:
        """The heartbeat the arbiter watches (a utime of the worker's temp file), at most every HEARTBEAT_S:
        gthread's loop calls it on every wake-up, i.e. about twice per request (~5% of the worker's CPU at c=1)."""
        now = time.monotonic()
        if now - self._notified_at >= HEARTBEAT_S:
            self._notified_at = now
            super().notify()

    def enqueue_req(self, conn: gthread.TConn) -> None:
        if not isinstance(conn.sock, _BoundedSocket):
            conn.sock = _BoundedSocket(conn.sock)
        super().enqueue_req(conn)

    def handle(self, conn: gthread.TConn) -> Any:
        sock: _BoundedSocket = conn.sock
        pipelined = conn.parser is not None and conn.parser.unreader.buf.getbuffer().nbytes
        if sock.reading_head and not pipelined:
            state = sock.gather_head()
            if state == _WAIT:
                return gthread._DEFER  # back to the poller until more arrives; gunicorn drops it after `keepalive`
            if state == _EXPIRED:
                with contextlib.suppress(OSError):
                    sock.sendall(_timeout_answer())
                return False
            conn.data_ready = True  # the head is here: no further wait before parsing it
        sock.head_read()
        return super().handle(conn)

    def handle_request(self, req: Any, conn: gthread.TConn) -> Any:
        try:
            return super().handle_request(req, conn)
        finally:
            conn.sock.next_request()


def request_threads(target: str, asked: int | None = None, env: Mapping[str, str] | None = None) -> int | None:
    """The worker's request threads: `asked` (--threads), else THREADS, else the function's own
    (`shared.topology.Function.threads`), else None (functions-framework's default)."""
    import os

    from shared import topology
    from triage.config import env_threads  # THREADS alone: nothing else of the CLI's environment is read here

    if asked is not None:
        return asked
    from_env = env_threads(os.environ if env is None else env)
    if from_env is not None:
        return from_env
    try:
        return topology.function(target).threads
    except KeyError:  # not one of the project's functions (a test's own target)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m triage.stack.function_server", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="the function's name in its source file")
    parser.add_argument("--source", required=True, help="the function's main.py")
    parser.add_argument("--signature-type", default="http", choices=("http", "event", "cloudevent"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--threads", type=int, default=None,
                        help="request threads (default: THREADS, else the function's own in shared/topology, "
                             "else functions-framework's)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    threads = request_threads(args.target, args.threads)
    # Python's gc docs for a pre-forking server: no collections in the parent while the app is imported (the
    # framework and the function's modules: ~7 % of that time), then freeze what it imported before the worker is
    # forked (shared copy-on-write with the worker, never scanned again by its collections), then collect as usual.
    gc.disable()
    try:
        from functions_framework import create_app
        from functions_framework._http import create_server  # what the functions-framework command runs

        app = create_app(args.target, args.source, args.signature_type)
        gc.freeze()
    finally:
        gc.enable()
    create_server(app, False, **GUNICORN_OPTIONS, **({"threads": threads} if threads else {})).run(args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
