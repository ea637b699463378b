"""The HTTP server of the local stand-ins (gateway, broker, S3 webhook relay): strict HTTP/1.1 on h11, bounded waits.

`StackHandler` serves one connection. h11 (the parser under uvicorn and httpx) frames every request and refuses
what is malformed — a Content-Length that is not a number, a bad chunk size, a head over `max_head_bytes` (431),
a Transfer-Encoding other than chunked (501) — and a request line that is not HTTP/1.x is refused as soon as it
ends (HTTP/0.9: 400; another version: 505); every refusal, like every answer, is the design's JSON error, and
none leaves a traceback in the log. Every wait is bounded: the head must be whole within `head_timeout_s` of its
first byte, a body may fall silent for at most `idle_timeout_s` (408: a Content-Length larger than the body ends
there), and an idle kept-alive connection is closed after `keepalive_timeout_s`. A handler defines `do_GET`,
`do_POST`, ... (others get 501) and answers with `answer`, `answer_json`, `answer_error` or `respond`;
`read_body` reads the body (Content-Length or chunked) capped at `max_body_bytes` (413). `threading_server`
serves a handler with a thread per connection, at most `max_connections` at once (503 above that).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import socketserver
import threading
import time
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from http.client import HTTPMessage
from typing import Any

import h11

__all__ = ["StackHandler", "StackServer", "error_answer", "error_body", "serve_in_thread", "threading_server"]

log = logging.getLogger(__name__)

# method SP request-target SP HTTP-version (RFC 9112 §3); anything else is refused once its line ends.
REQUEST_LINE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^ ]+ HTTP/(\d)\.(\d)$")
ERROR_CODES = {400: "bad_request", 408: "request_timeout", 413: "payload_too_large",
               431: "header_fields_too_large", 501: "not_implemented", 503: "overloaded",
               505: "http_version_not_supported"}
DRAIN_MAX_BYTES = 64 * 1024  # an unread body up to this is drained to keep the connection; larger: close


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def error_answer(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection (for refusals, where h11's state is spent)."""
    body = error_body(code, message)
    return (f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Refusal(Exception):
    """The request cannot be served: answer `status` with a JSON error and close the connection."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code or ERROR_CODES.get(status, "bad_request")


class StackHandler(socketserver.BaseRequestHandler):
    max_body_bytes: int = 1 << 20
    max_head_bytes: int = 16 * 1024
    head_timeout_s: float = 10.0
    idle_timeout_s: float = 10.0
    keepalive_timeout_s: float = 30.0

    # The request being served (set before do_<METHOD> runs).
    command: str = ""
    path: str = ""
    request_version: str = ""
    headers: HTTPMessage
    close_connection: bool = False

    def setup(self) -> None:
        self.connection: socket.socket = self.request
        # Headers and body leave in one write, but small answers still must not wait for a delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_bytes)
        self._served = 0
        self._unread_input = False

    def handle(self) -> None:
        try:
            while self._serve_one():
                self._served += 1
        except OSError:  # the peer went away (reset, broken pipe): nobody to answer
            self._unread_input = False

    def finish(self) -> None:
        if self._unread_input:  # let the peer read the refusal before a close with unread input resets it
            self._linger()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        logging.getLogger(type(self).__module__).debug(format, *args)

    # -- one request ---------------------------------------------------------------------------------------------
    def _serve_one(self) -> bool:
        try:
            request = self._read_head()
        except _Refusal as refusal:
            self._refuse(refusal)
            return False
        if request is None:
            return False
        self.command = request.method.decode("ascii")
        self.path = request.target.decode("latin-1")
        self.request_version = "HTTP/" + request.http_version.decode("ascii")
        self.headers = HTTPMessage()
        for name, value in request.headers.raw_items():
            self.headers[name.decode("latin-1")] = value.decode("latin-1")
        self.close_connection = False
        self._answered = False
        self._body: bytes | None = None
        handler = getattr(self, f"do_{self.command}", None)
        try:
            if handler is None:
                self.close_connection = True  # its body, if any, is not read
                self.answer_error(501, "not_implemented", f"method {self.command} is not served here")
            else:
                handler()
        except OSError:
            raise
        except Exception:  # a bug of ours: a 500, never a dropped connection
            log.exception("%s handler failed on %s", type(self).__name__, self.command)
            if not self._answered:
                self._refuse(_Refusal(500, "the server failed on this request", "internal"))
        if not self._answered:
            self.close_connection = True
            self.answer_error(500, "internal", "the handler gave no answer")
        return self._next_cycle()

    def _read_head(self) -> h11.Request | None:
        """The next request's head; None when the peer closed or an idle connection timed out."""
        wait_s = self.keepalive_timeout_s if self._served else self.head_timeout_s
        deadline = time.monotonic() + wait_s  # until the first byte; then head_timeout_s from it
        received = bytearray()
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Refusal(exc.error_status_hint, f"malformed request: {exc}") from None
            if isinstance(event, h11.Request):
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers.raw_items())
                if size > self.max_head_bytes:  # h11 bounds a head that is still arriving; this, one that came whole
                    raise _Refusal(431, f"request head over {self.max_head_bytes} bytes")
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            data = self._recv(deadline)
            if data is None:
                if not received:
                    return None  # nothing asked: close quietly
                raise _Refusal(408, f"the request head did not arrive within {self.head_timeout_s:g} s")
            if not received and data:
                deadline = time.monotonic() + self.head_timeout_s
            if len(received) <= self.max_head_bytes and b"\n" not in received.lstrip(b"\r\n"):
                received += data
                self._check_request_line(received)
            self._h11.receive_data(data)

    @staticmethod
    def _check_request_line(received: bytes) -> None:
        start = received.lstrip(b"\r\n")
        if b"\n" not in start:
            return
        line = start.split(b"\n", 1)[0].rstrip(b"\r")
        match = REQUEST_LINE.match(line)
        if match is None:
            if len(line.split()) == 2:
                raise _Refusal(400, "HTTP/0.9 requests are not served: send HTTP/1.1")
            raise _Refusal(400, "malformed request line")
        if match.group(1) != b"1":
            raise _Refusal(505, f"HTTP/{match.group(1).decode()}.{match.group(2).decode()} is not served: "
                                "send HTTP/1.1")

    def _recv(self, deadline: float) -> bytes | None:
        """What arrives before `deadline` (b"" when the peer closed); None when nothing did."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self.connection.settimeout(remaining)
        try:
            return self.connection.recv(65536)
        except TimeoutError:
            return None

    def _refuse(self, refusal: _Refusal) -> None:
        self._answered = True
        self.close_connection = True
        self._unread_input = True
        self.log_message("refused: %d %s", refusal.status, refusal.message)
        self.connection.settimeout(self.idle_timeout_s)
        self.connection.sendall(error_answer(refusal.status, refusal.code, refusal.message))

    def _next_cycle(self) -> bool:
        """Whether the connection takes another request: the body read (or drained) and both sides done."""
        if self.close_connection or self._h11.our_state is not h11.DONE:
            self._unread_input = self._h11.their_state is not h11.DONE
            return False
        if self._h11.their_state is not h11.DONE and not self._drain():
            self._unread_input = True
            return False
        try:
            self._h11.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        return True

    def _drain(self) -> bool:
        """Read and drop a small body the handler did not read; False when it is large, slow or malformed."""
        drained = 0
        deadline = time.monotonic() + self.idle_timeout_s
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                return False
            if isinstance(event, h11.EndOfMessage):
                return True
            if isinstance(event, h11.Data):
                drained += len(event.data)
                if drained > DRAIN_MAX_BYTES:
                    return False
            elif event is h11.NEED_DATA:
                data = self._recv(deadline)
                if not data:
                    return False
                self._h11.receive_data(data)
            else:
                return False

    def _linger(self) -> None:
        deadline = time.monotonic() + 1.0
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            while self._recv(deadline):
                pass

    # -- answers -------------------------------------------------------------------------------------------------
    def respond(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        """One answer with `headers` (Content-Length is set here); a second answer to one request is dropped."""
        if self._answered:
            log.debug("a second answer (%d) to one request dropped", status)
            return
        fields = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers
                  if name.lower() not in ("content-length", "connection", "transfer-encoding")]
        if status not in (204, 304):
            fields.append((b"Content-Length", str(len(body)).encode()))
        if self.close_connection:
            fields.append((b"Connection", b"close"))
        out = self._h11.send(h11.Response(status_code=status, headers=fields, reason=_reason(status).encode()))
        if body and self.command != "HEAD" and status not in (204, 304):
            out += self._h11.send(h11.Data(data=body))
        out += self._h11.send(h11.EndOfMessage())
        self._answered = True
        self.connection.settimeout(self.idle_timeout_s)  # a peer that never reads cannot hold the thread
        self.connection.sendall(out)
        self.log_message("%s %d", self.command, status)

    def answer(self, status: int, body: bytes, content_type: str = "application/json",
               extra: Mapping[str, str] | None = None) -> None:
        self.respond(status, [("Content-Type", content_type), *(extra or {}).items()], body)

    def answer_json(self, status: int, payload: Any, extra: Mapping[str, str] | None = None) -> None:
        self.answer(status, json.dumps(payload).encode(), "application/json", extra)

    def answer_error(self, status: int, code: str, message: str, extra: Mapping[str, str] | None = None) -> None:
        self.answer(status, error_body(code, message), "application/json", extra)

    def read_body(self) -> bytes | None:
        """The request body, or None once it was answered: 413 over `max_body_bytes`, 400 malformed, 408 stalled."""
        if self._body is not None:
            return self._body
        length = self.headers.get("Content-Length")
        if length is not None and int(length) > self.max_body_bytes:  # h11 checked it is a number
            return self._too_large()
        if self._h11.client_is_waiting_for_100_continue:
            self.connection.sendall(self._h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        parts: list[bytes] = []
        total = 0
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(_Refusal(exc.error_status_hint, f"malformed request body: {exc}"))
                return None
            if isinstance(event, h11.EndOfMessage):
                self._body = b"".join(parts)
                return self._body
            if isinstance(event, h11.Data):
                total += len(event.data)
                if total > self.max_body_bytes:
                    return self._too_large()
                parts.append(event.data)
            elif event is h11.NEED_DATA:
                data = self._recv(time.monotonic() + self.idle_timeout_s)
                if data is None:
                    self._refuse(_Refusal(408, f"the body stopped arriving for {self.idle_timeout_s:g} s "
                                               "(is Content-Length larger than the body?)"))
                    return None
                self._h11.receive_data(data)
            else:  # the peer closed before the body ended: nobody left to answer
                self._answered = self.close_connection = True
                return None

    def _too_large(self) -> None:
        self.close_connection = True  # the rest of the body is never read
        self._unread_input = True
        self.answer_error(413, "payload_too_large", f"body: over the limit of {self.max_body_bytes} bytes")
        return None


class StackServer(socketserver.ThreadingTCPServer):
    """A thread per connection, at most `max_connections` at once; request threads never keep the process alive."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    max_connections = 512
    # socketserver's listen backlog is 5: a burst of new connections (Locust at 50 req/s) overflowed it and clients
    # saw resets / SYN retries. The kernel caps this at net.core.somaxconn.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], handler: type[StackHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(error_answer(503, "overloaded", "too many connections; try again shortly"))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("connection from %s failed", client_address[0] if client_address else "?")


def threading_server(handler: type[StackHandler], host: str, port: int) -> StackServer:
    """A server of `handler` on (host, port) (port 0: a free one, in `server_address`)."""
    return StackServer((host, port), handler)


def serve_in_thread(httpd: socketserver.BaseServer, name: str) -> threading.Thread:
    thread = threading.Thread(target=httpd.serve_forever, name=name, daemon=True)
    thread.start()
    return thread
