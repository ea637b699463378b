"""A real HTTP function stand-in for gateway tests: answers every POST with its name, what it got, and `status`."""

from __future__ import annotations

import json
import socket

from tests.local_http import LocalServer, QuietHandler


class Upstream(LocalServer):
    """Serves on 127.0.0.1 (a free port) until `close()`."""

    def __init__(self, name: str = "upstream", status: int = 200) -> None:
        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # Headers and body leave in two writes: without TCP_NODELAY each answer waits ~40 ms for an ACK.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):  # noqa: N802
                body = self.body()
                payload = json.dumps({"served_by": name, "path": self.path, "bytes": len(body),
                                      "content_type": self.headers.get("Content-Type")}).encode()
                self.reply(status, payload, "application/json")

        super().__init__(Handler)
