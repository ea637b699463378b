"""A local HTTP server on 127.0.0.1 (free port) serving test images, redirects and misbehaving answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.functions.tiny_model import png_bytes

ROUTES_REDIRECT = {
    "/to-metadata": "http://169.254.169.254/latest/meta-data/",
    "/to-loopback": "http://127.0.0.1:1/",
    "/to-file": "file:///etc/passwd",
    "/loop": "/loop",
    "/hop1": "/hop2",
    "/hop2": "/image.png",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # answers end with the connection: bodies without length are allowed

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        if self.path in ROUTES_REDIRECT:
            self.send_response(302)
            self.send_header("Location", ROUTES_REDIRECT[self.path])
            self.end_headers()
        elif self.path == "/image.png":
            body = png_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
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
            body = b"not an image"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.end_headers()


@contextmanager
def image_server() -> Iterator[ThreadingHTTPServer]:
    """Yields the server; `server.url(path)` builds a URL, `server.paths` lists the paths requested."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.paths = []  # type: ignore[attr-defined]
    server.url = lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
