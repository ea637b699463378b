"""A real local CloudEvents sink for the function tests: an HTTP server on 127.0.0.1 that records what it gets."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from shared.events import CloudEvent, EventPublisher, event_from_http


class EventSink:
    """Accepts CloudEvents (binary or structured) with `status` (202 by default) and keeps the accepted ones."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self.status = 202
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if sink.status < 300:
                    sink.events.append(event_from_http(dict(self.headers.items()), body))
                self.send_response(sink.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class RecordingSink:
    """An httpx transport that parses every POSTed CloudEvent (real binary encoding) and can be told to fail."""

    def __init__(self, status: int = 202) -> None:
        self.events: list[CloudEvent] = []
        self.status = status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.status < 300:
            self.events.append(event_from_http(dict(request.headers), request.content))
        return httpx.Response(self.status)

    def publisher(self) -> EventPublisher:
        return EventPublisher("http://broker.local/", transport=httpx.MockTransport(self))
