"""The HTTP plumbing of the local stand-ins (gateway, broker, S3 webhook relay): one request handler base.

`StackHandler` answers over HTTP/1.1 keep-alive with TCP_NODELAY, logs requests at debug level only, writes
JSON answers and the design's JSON errors, and reads a request body — `Content-Length` or chunked — capped at
`max_body_bytes` (413 above it). `serve_in_thread` runs a server on a daemon thread.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["StackHandler", "serve_in_thread", "threading_server"]


class StackHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    max_body_bytes: int = 1 << 20

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without TCP_NODELAY the body waits for a delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        logging.getLogger(type(self).__module__).debug(format, *args)

    def answer(self, status: int, body: bytes, content_type: str = "application/json",
               extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def answer_json(self, status: int, payload: Any) -> None:
        self.answer(status, json.dumps(payload).encode(), "application/json")

    def answer_error(self, status: int, code: str, message: str) -> None:
        self.answer_json(status, {"error": {"code": code, "message": message}})

    def read_body(self) -> bytes | None:
        """The request body, or None after answering 413 when it is over `max_body_bytes` (the connection closes)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._chunked_body()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = None if length > self.max_body_bytes else self.rfile.read(length)
        if body is None:
            self.close_connection = True  # the rest of the body is never read
            self.answer_error(413, "payload_too_large", f"body: over the limit of {self.max_body_bytes} bytes")
        return body

    def _chunked_body(self) -> bytes | None:
        """A chunked upload (curl -T, streaming clients), re-framed whole; None once it passes the cap."""
        parts: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > self.max_body_bytes:
                return None
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk


def threading_server(handler: type[BaseHTTPRequestHandler], host: str, port: int) -> ThreadingHTTPServer:
    """A threading server on (host, port) whose request threads never keep the process alive."""
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    return httpd


def serve_in_thread(httpd: ThreadingHTTPServer, name: str) -> threading.Thread:
    thread = threading.Thread(target=httpd.serve_forever, name=name, daemon=True)
    thread.start()
    return thread
