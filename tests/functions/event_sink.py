"""A real local CloudEvents sink for the function tests: an HTTP server on 127.0.0.1 that records what it gets."""

from __future__ import annotations

import httpx

from shared.events import CloudEvent, EventPublisher, event_from_http
from tests.local_http import LocalServer, QuietHandler


class EventSink(LocalServer):
    """Accepts CloudEvents (binary or structured) with `status` (202 by default) and keeps the accepted ones."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self.status = 202
        sink = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.body()
                if sink.status < 300:
                    sink.events.append(event_from_http(dict(self.headers.items()), body))
                self.reply(sink.status)

        super().__init__(Handler)


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
