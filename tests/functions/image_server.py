"""A local HTTP server on 127.0.0.1 (free port) serving test images, redirects and misbehaving answers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.functions.tiny_model import png_bytes
from tests.local_http import LocalServer, QuietHandler

ROUTES_REDIRECT = {
    "/to-metadata": "http://169.254.169.254/latest/meta-data/",
    "/to-loopback": "http://127.0.0.1:1/",
    "/to-file": "file:///etc/passwd",
    "/loop": "/loop",
    "/hop1": "/hop2",
    "/hop2": "/image.png",
}


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.0"  # answers end with the connection: bodies without length are allowed

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        if self.path in ROUTES_REDIRECT:
            self.send_response(302)
            self.send_header("Location", ROUTES_REDIRECT[self.path])
            self.end_headers()
        elif self.path == "/image.png":
            self.reply(200, png_bytes(), "image/png")
        elif self.path == "/endless":  # no Content-Length: only the streaming cap can stop it
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(4096):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
        elif self.path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
        elif self.path == "/slow":
            time.sleep(3)
            self.send_response(200)
            self.end_headers()
        elif self.path == "/text":
            self.reply(200, b"not an image", "text/plain")
        else:
            self.reply(404)


@contextmanager
def image_server() -> Iterator[LocalServer]:
    """Yields the server: `server.url + path` is a URL, `server.paths` lists the paths requested."""
    with LocalServer(_Handler) as server:
        server.paths = server.httpd.paths = []  # type: ignore[attr-defined]
        yield server
