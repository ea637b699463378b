"""The HTTP edge shared by every function: request → image bytes, errors → design §5 JSON, /healthz and /metrics.

functions-framework gives one function per target and routes every path to it, so `serve()` routes
`GET /healthz`, `GET /metrics` and the function's own routes, times each request and turns every exception
into the JSON error of design §5.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import flask
from werkzeug.exceptions import HTTPException

from shared import metrics
from shared.config import Settings
from shared.errors import ImageError, InvalidField, PayloadTooLarge, TriageError, UnsupportedMediaType, UserError
from shared.names import IMAGE_CONTENT_TYPES, REQUEST_ID
from shared.payloads import parse_json
from shared.route_templates import route_of
from shared.security import IPNetwork, content_coding, fetch_url, read_body

__all__ = [
    "Handler",
    "Readiness",
    "correlated",
    "correlation_id",
    "error_response",
    "json_response",
    "read_body",
    "read_image",
    "serve",
    "wants_png",
]

log = logging.getLogger(__name__)

RAW_IMAGE_TYPES = IMAGE_CONTENT_TYPES

Handler = Callable[[flask.Request], flask.Response]


class Readiness(Protocol):
    """What /healthz needs from a model: its `ready` flag and a way to start loading it."""

    ready: bool

    def start_loading(self) -> None: ...


def json_response(payload: Mapping[str, Any], status: int = 200) -> flask.Response:
    return flask.Response(json.dumps(payload), status=status, mimetype="application/json")


def error_response(exc: BaseException) -> flask.Response:
    """Design §5's `{"error": {"code", "message"}}`: a TriageError keeps its status; anything else is a generic 500."""
    if isinstance(exc, TriageError):
        return json_response(exc.to_json(), exc.status)
    if isinstance(exc, HTTPException) and exc.code is not None and exc.code < 500:
        code = "payload_too_large" if exc.code == 413 else (exc.name or "http_error").lower().replace(" ", "_")
        return json_response({"error": {"code": code, "message": exc.description or exc.name}}, exc.code)
    # Only the type and the stack: an exception's message may quote the request (image bytes, URLs, names).
    log.error("unhandled %s:\n%s", type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))
    return json_response({"error": {"code": "internal", "message": "internal error"}}, 500)


def _read_multipart(request: flask.Request, limit: int) -> tuple[bytes, str | None]:
    if content_coding(request) is not None:  # the form parser reads the body as sent
        raise UnsupportedMediaType("content-encoding: a multipart form is accepted as is; gzip the raw image instead")
    request.max_content_length = limit
    try:
        upload = request.files.get("file")
    except HTTPException as exc:
        if exc.code == 413:
            raise PayloadTooLarge(f"file: over the limit of {limit} bytes") from exc
        raise UserError("body: malformed multipart form") from exc
    if upload is None:
        raise InvalidField("file: the multipart form has no field 'file'")
    return read_body(upload, limit, what="file"), upload.mimetype or None


def _read_url(
    request: flask.Request, settings: Settings, allow_networks: tuple[IPNetwork, ...]
) -> tuple[bytes, str | None]:
    body = read_body(request, min(settings.max_body_bytes, 64 * 1024))
    payload = parse_json(body)
    if not isinstance(payload, dict) or "url" not in payload:
        raise InvalidField('url: expected a JSON object {"url": "https://..."}')
    url = payload["url"]
    if not isinstance(url, str) or not url.strip():
        got = "an empty string" if isinstance(url, str) else "null" if url is None else f"a JSON {type(url).__name__}"
        raise InvalidField(f"url: must be a non-empty string (got {got})")
    return fetch_url(
        url,
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.url_fetch_timeout_s,
        allow_networks=allow_networks,
    )


def read_image(
    request: flask.Request, settings: Settings, *, allow_networks: tuple[IPNetwork, ...] = ()
) -> tuple[bytes, str | None]:
    """(image bytes, content type) from a raw body, multipart field `file` or JSON `{"url"}` (fetched safely).

    Raises PayloadTooLarge (413), UnsupportedMediaType (415), UserError (400: empty, invalid JSON) or
    InvalidField (422: missing field, refused URL). `allow_networks` is for tests and the local stack only.
    """
    media = request.mimetype or "application/octet-stream"
    if media == "multipart/form-data":
        data, content_type = _read_multipart(request, settings.max_body_bytes)
    elif media == "application/json":
        data, content_type = _read_url(request, settings, allow_networks)
    elif media in RAW_IMAGE_TYPES:
        data, content_type = read_body(request, settings.max_body_bytes), media
    else:
        raise UnsupportedMediaType(
            f"content-type: {media} is not accepted; send image/png, image/jpeg, application/dicom, "
            'a multipart field "file" or JSON {"url": ...}'
        )
    if not data:
        raise ImageError("body: the image is empty")
    return data, content_type


def correlation_id(request: flask.Request) -> str | None:
    """The caller's `X-Request-Id` when it is a short plain token, else None.

    Only a correlation field (echoed in the response and kept in the request record): it never becomes a
    request id or any part of a key, so two callers sending the same one get two requests of their own.
    """
    value = request.headers.get("X-Request-Id", "")
    return value if REQUEST_ID.match(value) else None


def correlated(payload: Mapping[str, Any], request: flask.Request) -> dict[str, Any]:
    """`payload` plus `correlation_id` (the caller's `X-Request-Id`) when the caller sent one."""
    value = correlation_id(request)
    return {**payload, "correlation_id": value} if value else dict(payload)


def wants_png(request: flask.Request) -> bool:
    """True when the caller prefers `image/png` over JSON in its Accept header."""
    return request.accept_mimetypes.best_match(["application/json", "image/png"]) == "image/png"


def _healthz(model: Readiness | None) -> flask.Response:
    if model is None:
        return json_response({"status": "ready"})
    model.start_loading()
    if model.ready:
        return json_response({"status": "ready"})
    return json_response({"error": {"code": "not_ready", "message": "the model is not loaded yet"}}, 503)


def _metrics() -> flask.Response:
    body, content_type = metrics.metrics_response()
    return flask.Response(body, status=200, content_type=content_type)


def serve(
    request: flask.Request,
    handlers: Mapping[str, Handler],
    *,
    function: str,
    model: Readiness | None = None,
) -> flask.Response:
    """Route "METHOD /path" to a handler (plus GET /healthz and GET /metrics), time it, and map errors to JSON."""
    start = time.perf_counter()
    path = route_of(request.path.rstrip("/") or "/", [key.split(" ", 1)[1] for key in handlers])  # a template
    routes: dict[str, Callable[[], flask.Response]] = {
        "GET /healthz": lambda: _healthz(model),
        "GET /metrics": _metrics,
    }
    routes.update({key: (lambda handler=handler: handler(request)) for key, handler in handlers.items()})
    known_paths = {key.split(" ", 1)[1] for key in routes}
    route = path if path in known_paths else "other"
    try:
        action = routes.get(f"{request.method} {path}")
        if action is None:
            if path in known_paths:
                raise TriageError(f"{request.method} is not allowed on {path}", code="method_not_allowed", status=405)
            raise TriageError(f"no route {path}", code="not_found", status=404)
        response = action()
    except Exception as exc:  # the one place that turns failures into design §5 errors; the process keeps serving
        response = error_response(exc)
    metrics.REQUEST_LATENCY.labels(function=function, route=route, status=str(response.status_code)).observe(
        time.perf_counter() - start
    )
    return response


def _framework_errors_as_json() -> None:
    """What the framework answers before any function code runs (a path its route cannot match, e.g. one holding a
    newline) in design §5's JSON too: registered on the app functions-framework is building, since a function's
    main.py imports this module while functions-framework loads it (one app per process, as in every image)."""
    import functions_framework

    for status in (404, 405):
        functions_framework.errorhandler(status)(error_response)


_framework_errors_as_json()
