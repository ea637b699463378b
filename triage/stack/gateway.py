"""Local stand-in for Knative routing: one HTTP entry point that splits traffic between model revisions.

`/predict`, `/explain` and `/feedback` proxy to the function processes; each service has named revisions
(`champion`, `challenger`) with traffic percents summing to 100, like a Knative Service's `traffic` block.
`PUT /admin/traffic` with `{"champion": 90, "challenger": 10}` changes the split of every service that has
those revisions (what `triage canary` drives); the response header `X-Triage-Revision` names the revision
that served. `PUT /admin/revisions` with `{"name": "v8", "model_uri": ...}` starts a new revision of every
routed model function at 0 % (what a new Knative revision is; the canary function's prepare step), and
`GET /admin/revisions` names each service's latest one. `/ingest` is routed too: the broker delivers
bucket events through the gateway, so ingest follows the same split as on Knative. `/review` proxies to the
review function (the radiologist's worklist), like the others.

The admin API needs the gateway's admin token (`triage.stack.admin_token`): 401 without it, 403 with another.
HTTP framing (malformed or slow requests) is `triage.stack.httpd`'s: JSON errors, bounded waits.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import generate_latest

from shared.config import DEFAULT_MAX_INPUT_BYTES
from triage.config import TriageEnv
from triage.stack.admin_token import admin_refusal, new_token, write_token
from triage.stack.httpd import StackHandler, serve_in_thread, threading_server
from triage.stack.revisions import RevisionLauncher, load_launch_config
from triage.stack.routing import Gateway, RevisionConflict, RevisionsUnavailable, Route, TrafficError

log = logging.getLogger("triage.gateway")

__all__ = ["Gateway", "GatewayServer", "RevisionConflict", "Route", "TrafficError", "REVISION_HEADER", "load_routes"]

REVISION_HEADER = "X-Triage-Revision"
# Hop-by-hop headers are the proxy's own business (RFC 9110 §7.6.1), never forwarded.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}
# Above every function's own limit (MAX_BODY_BYTES; dicomweb's MAX_INPUT_BYTES, plus its multipart framing): they
# answer their own 413.
MAX_BODY_BYTES = DEFAULT_MAX_INPUT_BYTES + (1 << 20)


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


class _Handler(StackHandler):
    gateway: Gateway
    upstreams: _Upstreams
    admin_token: str
    timeout_s: float = 60.0
    max_body_bytes = MAX_BODY_BYTES

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self.answer_json(200, {"status": "ok"})
        elif path == "/metrics":
            self.answer(200, generate_latest(self.gateway.registry), "text/plain; version=0.0.4")
        elif path == "/admin/traffic":
            if self._admin_allowed():
                self.answer_json(200, self.gateway.traffic())
        elif path == "/admin/revisions":
            if self._admin_allowed():
                self.answer_json(200, self.gateway.revisions())
        else:
            self._proxy()

    def _admin_allowed(self) -> bool:
        """True for a caller with the admin token; otherwise it has its 401 / 403."""
        refused = admin_refusal(self.headers.get("Authorization"), self.admin_token)
        if refused is not None:
            self.answer_error(*refused, extra={"WWW-Authenticate": 'Bearer realm="triage-gateway-admin"'})
        return refused is None

    def do_PUT(self) -> None:  # noqa: N802
        actions = {"/admin/traffic": self._set_traffic, "/admin/revisions": self._create_revision}
        action = actions.get(self.path.split("?", 1)[0])
        if action is not None and not self._admin_allowed():
            return
        body = self.read_body()
        if body is None:
            return
        if action is None:
            self.answer_error(404, "not_found", f"no route PUT {self.path}")
            return
        try:
            self.answer_json(200, action(json.loads(body or b"null")))
        except json.JSONDecodeError as exc:
            self.answer_error(400, "bad_json", f"invalid JSON: {exc}")
        except RevisionConflict as exc:
            self.answer_error(409, "conflict", str(exc))
        except TrafficError as exc:
            self.answer_error(422, "invalid_field", str(exc))
        except RevisionsUnavailable as exc:
            self.answer_error(503, "revisions_unavailable", str(exc))

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
        body = self.read_body()
        if body is None:
            return
        if service not in self.gateway.routes:
            self.answer_error(404, "not_found", f"no route {path} (have /{', /'.join(self.gateway.routes)})")
            return
        upstream_path = "/" + rest.split("?", 1)[0] if rest else "/"
        if query or "?" in rest:
            upstream_path += "?" + (query or rest.split("?", 1)[1])
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        revision, base_url = self.gateway.choose(service)
        started = time.perf_counter()
        try:
            status, response_headers, content = self.upstreams.request(
                base_url, self.command, upstream_path, body, headers, self.timeout_s)
        except OSError as exc:
            self.gateway.requests.labels(service, revision, "502").inc()
            self.answer_error(502, "bad_gateway", f"{service} revision {revision} unreachable: {type(exc).__name__}")
            return
        self.gateway.latency.labels(service, revision).observe(time.perf_counter() - started)
        self.gateway.requests.labels(service, revision, str(status)).inc()
        headers = [(name, value) for name, value in response_headers if name.lower() not in HOP_BY_HOP]
        self.respond(status, [*headers, (REVISION_HEADER, revision)], content)


class GatewayServer:
    """The gateway on an HTTP port, in a background thread; `admin_token` (a fresh one when None) guards /admin."""

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60.0, *,
                 admin_token: str | None = None) -> None:
        self.gateway = gateway
        self.admin_token = admin_token or new_token()
        handler = type("GatewayHandler", (_Handler,), {"gateway": gateway, "upstreams": _Upstreams(),
                                                        "timeout_s": timeout_s, "admin_token": self.admin_token})
        self.httpd = threading_server(handler, host, port)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"

    def start(self) -> GatewayServer:
        serve_in_thread(self.httpd, "gateway-http")
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
    # The stack hands its processes one token (GATEWAY_ADMIN_TOKEN); `triage canary` reads it from this file.
    server = GatewayServer(gateway, port=args.port, admin_token=TriageEnv.from_env().gateway_admin_token).start()
    token_path = write_token(args.run_dir, server.admin_token)
    log.info("gateway on %s, traffic %s, admin token in %s", server.url, server.gateway.traffic(), token_path)
    stopped.wait()
    server.stop()
    if launcher is not None:
        launcher.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
