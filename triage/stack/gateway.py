"""Local stand-in for Knative routing: one HTTP entry point that splits traffic between model revisions.

`/predict`, `/explain` and `/feedback` proxy to the function processes; each service has named revisions
(`champion`, `challenger`) with traffic percents summing to 100, like a Knative Service's `traffic` block.
`PUT /admin/traffic` with `{"champion": 90, "challenger": 10}` changes the split of every service that has
those revisions (what `triage canary` drives); the response header `X-Triage-Revision` names the revision
that served. `PUT /admin/revisions` with `{"name": "v8", "model_uri": ...}` starts a new revision of every
routed model function at 0 % (what a new Knative revision is; the canary function's prepare step), and
`GET /admin/revisions` names each service's latest one. `/ingest` is routed too: the broker delivers
bucket events through the gateway, so ingest follows the same split as on Knative. `/review` is a minimal
page for a radiologist: upload, see prediction and heatmap, confirm or correct.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from triage.stack.processes import ChildFailed
from triage.stack.revisions import RevisionLauncher, load_launch_config

log = logging.getLogger("triage.gateway")

__all__ = ["Gateway", "GatewayServer", "RevisionConflict", "Route", "TrafficError", "REVISION_HEADER"]

REVISION_HEADER = "X-Triage-Revision"
SERVICE_PATHS = ("predict", "explain", "feedback", "ingest")
REVISION_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")  # a DNS label, as Knative's names
# Hop-by-hop headers are the proxy's own business (RFC 9110 §7.6.1), never forwarded.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}


class TrafficError(ValueError):
    """A traffic split that Knative would reject (unknown revision, negative percent, sum != 100)."""


class RevisionConflict(TrafficError):
    """A revision of that name exists and serves another model."""


class RevisionsUnavailable(RuntimeError):
    """This gateway was started without a launcher, or the revision's processes failed to start."""


@dataclass
class Route:
    """One service: revision name → base URL, and revision name → percent of requests."""

    service: str
    revisions: dict[str, str]
    traffic: dict[str, int] = field(default_factory=dict)
    latest: str | None = None  # the most recently created revision (Knative's latestReadyRevisionName)

    def __post_init__(self) -> None:
        if not self.traffic:
            first = next(iter(self.revisions))
            self.traffic = {name: (100 if name == first else 0) for name in self.revisions}
        self.set_traffic(self.traffic)

    def set_traffic(self, traffic: Mapping[str, int]) -> None:
        unknown = sorted(set(traffic) - set(self.revisions))
        if unknown:
            raise TrafficError(f"{self.service}: no revision {', '.join(unknown)} (have {', '.join(self.revisions)})")
        if any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in traffic.values()):
            raise TrafficError(f"{self.service}: traffic percents must be whole numbers >= 0, got {dict(traffic)}")
        if sum(traffic.values()) != 100:
            raise TrafficError(f"{self.service}: traffic percents must sum to 100, got {sum(traffic.values())}")
        self.traffic = {name: int(traffic.get(name, 0)) for name in self.revisions}

    def pick(self, draw: float) -> str:
        """The revision for a uniform draw in [0, 1): cumulative percents, so 0 % is never picked."""
        point = draw * 100
        cumulative = 0
        for name, percent in self.traffic.items():
            cumulative += percent
            if percent and point < cumulative:
                return name
        return next(name for name, percent in self.traffic.items() if percent)


class Gateway:
    """Routes and the traffic admin, independent of HTTP (unit tests call `choose` directly)."""

    def __init__(self, routes: Mapping[str, Route], *, draw: Callable[[], float] = random.random,
                 launcher: RevisionLauncher | None = None) -> None:
        self.routes = dict(routes)
        self._draw = draw
        self._lock = threading.Lock()
        self.launcher = launcher
        self.model_uris: dict[str, str] = {}  # revision → MODEL_URI, for the revisions this gateway started
        self._launch_lock = threading.Lock()  # one launch at a time; routing goes on meanwhile
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests_total", "Requests through the gateway",
                                ["service", "revision", "code"], registry=self.registry)
        self.latency = Histogram("gateway_request_duration_seconds", "Gateway request latency, upstream included",
                                 ["service", "revision"], registry=self.registry,
                                 buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def choose(self, service: str) -> tuple[str, str]:
        """(revision, base URL) for one request to `service`."""
        with self._lock:
            route = self.routes[service]
            revision = route.pick(self._draw())
            return revision, route.revisions[revision]

    def set_traffic(self, traffic: Mapping[str, int], service: str | None = None) -> dict[str, dict[str, int]]:
        """Apply a split to one service or to every service that has all the named revisions; all or nothing."""
        with self._lock:
            targets = [self.routes[service]] if service else [
                r for r in self.routes.values() if set(traffic) <= set(r.revisions)]
            if service and service not in self.routes:
                raise TrafficError(f"no service {service!r}")
            if not targets:
                raise TrafficError(f"no service has revisions {', '.join(traffic)}")
            for route in targets:  # validate everything before changing anything
                Route(route.service, dict(route.revisions), dict(traffic))
            for route in targets:
                route.set_traffic(traffic)
            return self.traffic()

    def traffic(self) -> dict[str, dict[str, int]]:
        return {name: dict(route.traffic) for name, route in self.routes.items()}

    def revisions(self) -> dict[str, dict[str, Any]]:
        """Per service: traffic, the latest revision, and the MODEL_URI of each revision this gateway started."""
        with self._lock:
            return {
                name: {"traffic": dict(route.traffic), "latest": route.latest,
                       "model_uris": {rev: uri for rev, uri in self.model_uris.items() if rev in route.revisions}}
                for name, route in self.routes.items()
            }

    def create_revision(self, name: str, model_uri: str) -> dict[str, dict[str, Any]]:
        """A new revision `name` of every service the launcher knows, serving `model_uri`, at 0 %; idempotent."""
        if self.launcher is None:
            raise RevisionsUnavailable("this gateway starts no revisions (it was started without --launch)")
        if not REVISION_NAME.match(name) or not model_uri:
            raise TrafficError(f"revision name {name!r} must be a DNS label, and model_uri must be given")
        with self._launch_lock:
            with self._lock:
                known = self.model_uris.get(name)
                if known is None and any(name in route.revisions for route in self.routes.values()):
                    known = "(a revision the stack started)"
            if known == model_uri:
                return self.revisions()
            if known is not None:
                raise RevisionConflict(f"revision {name} exists and serves {known}")
            self._retire_idle()
            try:
                urls = self.launcher.launch(name, model_uri)
            except (ChildFailed, OSError) as exc:
                raise RevisionsUnavailable(f"revision {name} did not start: {str(exc).splitlines()[0]}") from exc
            with self._lock:
                for service, url in urls.items():
                    route = self.routes.get(service)
                    if route is not None:
                        route.revisions[name] = url
                        route.traffic[name] = 0
                        route.latest = name
                self.model_uris[name] = model_uri
            log.info("revision %s started for %s (MODEL_URI %s)", name, ", ".join(urls), model_uri)
            return self.revisions()

    def _retire_idle(self) -> None:
        """Stop the revisions this gateway started that no longer take traffic anywhere (they hold port slots)."""
        with self._lock:
            idle = [name for name in self.model_uris
                    if all(route.traffic.get(name, 0) == 0 for route in self.routes.values())]
            for name in idle:
                for route in self.routes.values():
                    route.revisions.pop(name, None)
                    route.traffic.pop(name, None)
                    if route.latest == name:
                        route.latest = None
                del self.model_uris[name]
        for name in idle:
            assert self.launcher is not None
            self.launcher.stop(name)
            log.info("revision %s retired (0 %% everywhere)", name)


class _Upstreams(threading.local):
    """Keep-alive connections per handler thread and upstream, so a warm request costs no TCP handshake."""

    def __init__(self) -> None:
        self.connections: dict[str, http.client.HTTPConnection] = {}

    def request(self, base_url: str, method: str, path: str, body: bytes, headers: dict[str, str],
                timeout_s: float) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = urlsplit(base_url)
        for attempt in (0, 1):
            connection = self.connections.get(base_url)
            reused = connection is not None
            if connection is None:
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
                connection.connect()
                # Small request/response pairs: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms each.
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.connections[base_url] = connection
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.getheaders(), response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                self.connections.pop(base_url, None)
                if not reused or attempt:  # only a stale kept-alive connection earns one more try
                    raise
            except OSError:
                connection.close()
                self.connections.pop(base_url, None)
                raise
        raise AssertionError("unreachable")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    gateway: Gateway
    upstreams: _Upstreams
    timeout_s: float = 60.0

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without TCP_NODELAY the body waits for a delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug(format, *args)

    def _answer(self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._answer(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": {"code": code, "message": message}})

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked_body()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _chunked_body(self) -> bytes:
        """A chunked upload (curl -T, streaming clients) re-framed with a Content-Length for the function."""
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/metrics":
            self._answer(200, generate_latest(self.gateway.registry), "text/plain; version=0.0.4")
        elif path in ("/review", "/review/"):
            self._answer(200, REVIEW_PAGE.encode(), "text/html; charset=utf-8")
        elif path == "/admin/traffic":
            self._json(200, self.gateway.traffic())
        elif path == "/admin/revisions":
            self._json(200, self.gateway.revisions())
        else:
            self._proxy()

    def do_PUT(self) -> None:  # noqa: N802
        actions = {"/admin/traffic": self._set_traffic, "/admin/revisions": self._create_revision}
        action = actions.get(self.path.split("?", 1)[0])
        if action is None:
            self._error(404, "not_found", f"no route PUT {self.path}")
            return
        try:
            self._json(200, action(json.loads(self._body() or b"null")))
        except json.JSONDecodeError as exc:
            self._error(400, "bad_json", f"invalid JSON: {exc}")
        except RevisionConflict as exc:
            self._error(409, "conflict", str(exc))
        except TrafficError as exc:
            self._error(422, "invalid_field", str(exc))
        except RevisionsUnavailable as exc:
            self._error(503, "revisions_unavailable", str(exc))

    def _set_traffic(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise TrafficError('body must be a JSON object like {"champion": 90, "challenger": 10}')
        service = payload.pop("service", None)
        return self.gateway.set_traffic(payload.get("traffic", payload), service)

    def _create_revision(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str) \
                or not isinstance(payload.get("model_uri"), str):
            raise TrafficError('body must be a JSON object like {"name": "v8", "model_uri": "models:/xray-vit/8"}')
        return self.gateway.create_revision(payload["name"], payload["model_uri"])

    def do_POST(self) -> None:  # noqa: N802
        self._proxy()

    def _proxy(self) -> None:
        path = self.path
        service, _, rest = path.lstrip("/").partition("/")
        service, _, query = service.partition("?")
        if service not in self.gateway.routes:
            self._body()
            self._error(404, "not_found", f"no route {path} (have /{', /'.join(self.gateway.routes)}, /review)")
            return
        upstream_path = "/" + rest.split("?", 1)[0] if rest else "/"
        if query or "?" in rest:
            upstream_path += "?" + (query or rest.split("?", 1)[1])
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        revision, base_url = self.gateway.choose(service)
        started = time.perf_counter()
        try:
            status, response_headers, content = self.upstreams.request(
                base_url, self.command, upstream_path, body, headers, self.timeout_s)
        except OSError as exc:
            self.gateway.requests.labels(service, revision, "502").inc()
            self._error(502, "bad_gateway", f"{service} revision {revision} unreachable: {type(exc).__name__}")
            return
        self.gateway.latency.labels(service, revision).observe(time.perf_counter() - started)
        self.gateway.requests.labels(service, revision, str(status)).inc()
        self.send_response(status)
        for name, value in response_headers:
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.send_header(REVISION_HEADER, revision)
        self.end_headers()
        self.wfile.write(content)


class GatewayServer:
    """The gateway on an HTTP port, in a background thread."""

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60.0) -> None:
        self.gateway = gateway
        handler = type("GatewayHandler", (_Handler,), {"gateway": gateway, "upstreams": _Upstreams(),
                                                        "timeout_s": timeout_s})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> GatewayServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="gateway-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def load_routes(path: Path) -> dict[str, Route]:
    """`{"predict": {"revisions": {"champion": URL, ...}, "traffic": {"champion": 100}}, ...}` → routes."""
    try:
        raw = json.loads(Path(path).read_text())
        return {name: Route(name, dict(spec["revisions"]), dict(spec.get("traffic") or {}))
                for name, spec in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise ValueError(f"{path}: invalid gateway routes: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = argparse.ArgumentParser(prog="python -m triage.stack.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=Path, required=True, help="JSON file: service → revisions and traffic")
    parser.add_argument("--launch", type=Path, help="JSON file: how to start revisions (PUT /admin/revisions)")
    parser.add_argument("--run-dir", type=Path, default=Path(".triage"), help="where revision logs go (logs/)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    launcher, initial = None, {}
    if args.launch:
        templates, initial = load_launch_config(args.launch)
        launcher = RevisionLauncher(templates, args.run_dir)
    gateway = Gateway(load_routes(args.routes), launcher=launcher)
    stopped = threading.Event()  # handlers first: a stop while revisions start must still stop their processes
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    try:  # before the port opens: the stack waits for /healthz, so it waits for these too
        for name, model_uri in initial.items():
            gateway.create_revision(name, model_uri)
    except RevisionsUnavailable as exc:
        log.error("%s", exc)
        if launcher is not None:
            launcher.stop_all()
        return 1
    server = GatewayServer(gateway, port=args.port).start()
    log.info("gateway on %s, traffic %s", server.url, server.gateway.traffic())
    stopped.wait()
    server.stop()
    if launcher is not None:
        launcher.stop_all()
    return 0


REVIEW_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>xray-triage review</title>
<style>
body{font-family:system-ui,sans-serif;max-width:56rem;margin:2rem auto;padding:0 1rem}
.row{display:flex;gap:1rem;flex-wrap:wrap;align-items:flex-start}
.row>div:last-child{flex:1;min-width:16rem}
img{max-width:24rem;image-rendering:pixelated;border:1px solid #ccc;width:24rem}
.urgent{color:#b00;font-weight:bold} label{display:block;margin:.3rem 0}
</style></head><body>
<h1>Chest X-ray triage &mdash; review</h1>
<p>Decision support only. Synthetic-data models are for demonstration, not diagnosis.</p>
<form id="f"><label>Image (PNG, JPEG or DICOM) <input type="file" id="file" required></label>
<button>Triage</button></form>
<div id="out" hidden><div class="row"><div><h3>Heatmap</h3><img id="heat" alt="attention heatmap"></div>
<div><h3 id="label"></h3><p id="detail"></p>
<label>Reviewer <input id="reviewer" value="radiologist"></label>
<label>Token <input id="token" type="password"></label>
<button id="confirm">Confirm</button> <button id="correct">Correct (other label)</button>
<p id="fb"></p></div></div></div>
<script>
let last = null;
const $ = (id) => document.getElementById(id);
$("f").onsubmit = async (e) => {
  e.preventDefault();
  const file = $("file").files[0];
  const type = file.type || (file.name.toLowerCase().endsWith(".dcm") ? "application/dicom" : "image/png");
  const r = await fetch("/explain?method=occlusion", {method: "POST", headers: {"Content-Type": type}, body: file});
  const j = await r.json();
  $("out").hidden = false; $("fb").textContent = "";
  if (!r.ok) { $("label").textContent = "Error"; $("detail").textContent = j.error.message; return; }
  last = j;
  $("label").textContent = j.label + " (" + (100 * j.probability).toFixed(1) + " %)";
  $("label").className = j.urgent ? "urgent" : "";
  $("detail").textContent = "threshold " + j.threshold.toFixed(3) + ", model " + j.model.name + " v" + j.model.version
    + ", revision " + r.headers.get("X-Triage-Revision") + (j.urgent ? " - URGENT" : "");
  $("heat").src = "data:image/png;base64," + j.heatmap_png;
};
async function feedback(label) {
  const r = await fetch("/feedback", {method: "POST", headers: {"Content-Type": "application/json",
    "Authorization": "Bearer " + $("token").value},
    body: JSON.stringify({request_id: last.request_id, label: label, reviewer: $("reviewer").value})});
  const j = await r.json();
  $("fb").textContent = r.ok ? "Saved: " + label : "Error: " + j.error.message;
}
$("confirm").onclick = () => feedback(last.label);
$("correct").onclick = () => feedback(last.label === "pneumonia" ? "normal" : "pneumonia");
</script></body></html>
"""


if __name__ == "__main__":
    raise SystemExit(main())
