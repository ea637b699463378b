"""The HTTP edge: request → image bytes for every input form, errors → design §5 JSON, health and metrics routes."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import flask
import pytest

from shared import http
from shared.config import Settings
from shared.errors import ImageError
from shared.security import parse_networks
from tests.functions.image_server import image_server
from tests.functions.tiny_model import png_bytes

SETTINGS = Settings(max_body_bytes=50_000)


class FakeReadiness:
    """A model stand-in for /healthz: counts load requests, becomes ready when told."""

    def __init__(self) -> None:
        self.ready = False
        self.load_requests = 0

    def start_loading(self) -> None:
        self.load_requests += 1


@pytest.fixture
def app() -> Iterator[flask.Flask]:
    yield flask.Flask(__name__)


def read(app: flask.Flask, **request: object) -> tuple[bytes, str | None]:
    with app.test_request_context("/", method="POST", **request):
        return http.read_image(flask.request, SETTINGS, allow_networks=parse_networks("127.0.0.1/32"))


def error_of(call: Callable[[], object]) -> tuple[int, dict]:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the test turns any failure into its JSON answer
        response = http.error_response(exc)
        return response.status_code, json.loads(response.get_data())
    raise AssertionError("no error raised")


def test_raw_body_multipart_and_url_give_the_same_bytes(app: flask.Flask) -> None:
    image = png_bytes()
    assert read(app, data=image, content_type="image/png") == (image, "image/png")
    multipart = {"file": (io.BytesIO(image), "x.png", "image/png")}
    assert read(app, data=multipart, content_type="multipart/form-data") == (image, "image/png")
    with image_server() as server:
        assert read(app, json={"url": server.url + "/image.png"}) == (image, "image/png")


@pytest.mark.parametrize(
    ("request_args", "status", "code", "names"),
    [
        ({"data": b"", "content_type": "image/png"}, 400, "bad_image", "body"),
        ({"data": b"hello", "content_type": "text/plain"}, 415, "unsupported_media_type", "content-type"),
        ({"data": b"x" * 50_001, "content_type": "image/png"}, 413, "payload_too_large", "body"),
        ({"data": b"{not json", "content_type": "application/json"}, 400, "invalid_json", "JSON"),
        ({"json": {"link": "https://example.com"}}, 422, "invalid_field", "url"),
        ({"json": ["https://example.com"]}, 422, "invalid_field", "url"),
        ({"json": {"url": "file:///etc/passwd"}}, 422, "bad_url", "url"),
        ({"json": {"url": "http://169.254.169.254/latest/meta-data/"}}, 422, "bad_url", "url"),
        ({"data": {"image": (io.BytesIO(b"x"), "x.png")}, "content_type": "multipart/form-data"}, 422, "invalid_field",
         "file"),
        ({"data": {"file": (io.BytesIO(b"x" * 60_000), "x.png")}, "content_type": "multipart/form-data"}, 413,
         "payload_too_large", ""),
    ],
)  # fmt: skip
def test_bad_requests_get_a_4xx_json_error_naming_the_field(
    app: flask.Flask, request_args: dict, status: int, code: str, names: str
) -> None:
    got_status, body = error_of(lambda: read(app, **request_args))
    assert (got_status, body["error"]["code"]) == (status, code)
    assert names in body["error"]["message"]


def crash_with(name: str) -> None:
    raise RuntimeError(f"patient {name}")


def test_unexpected_errors_are_a_generic_500_without_request_data(caplog: pytest.LogCaptureFixture) -> None:
    patient = "DOE^JANE"
    with caplog.at_level(logging.ERROR):
        status, body = error_of(lambda: crash_with(patient))
    assert status == 500 and body == {"error": {"code": "internal", "message": "internal error"}}
    assert "RuntimeError" in caplog.text and "DOE^JANE" not in caplog.text


def route(app: flask.Flask, method: str, path: str, model: FakeReadiness | None = None, **kwargs: object):
    def handle(request: flask.Request) -> flask.Response:
        if request.args.get("fail") == "image":
            raise ImageError("body: not an image")
        if request.args.get("fail") == "crash":
            raise KeyError("secret")
        return http.json_response({"ok": True})

    with app.test_request_context(path, method=method, **kwargs):
        return http.serve(flask.request, {"POST /": handle}, function="unit", model=model)


def test_healthz_is_ready_only_after_the_model_loaded(app: flask.Flask) -> None:
    model = FakeReadiness()
    response = route(app, "GET", "/healthz", model)
    assert response.status_code == 503 and response.json["error"]["code"] == "not_ready"
    assert model.load_requests == 1  # the probe starts the load instead of waiting for traffic
    model.ready = True
    assert route(app, "GET", "/healthz", model).status_code == 200
    assert route(app, "GET", "/healthz").status_code == 200  # functions without a model are always ready


def test_routes_methods_and_errors(app: flask.Flask) -> None:
    assert route(app, "POST", "/").json == {"ok": True}
    assert route(app, "GET", "/").status_code == 405
    assert route(app, "GET", "/nope").json["error"]["code"] == "not_found"
    assert route(app, "POST", "/?fail=image").status_code == 400
    crashed = route(app, "POST", "/?fail=crash")
    assert crashed.status_code == 500 and "secret" not in crashed.get_data(as_text=True)


def test_metrics_exposes_request_latency_by_function_route_and_status(app: flask.Flask) -> None:
    route(app, "POST", "/?fail=image")
    text = route(app, "GET", "/metrics").get_data(as_text=True)
    assert 'triage_request_duration_seconds_bucket{function="unit",le="0.005",route="/",status="400"}' in text


def test_correlation_id_and_accept_negotiation(app: flask.Flask) -> None:
    with app.test_request_context("/", headers={"X-Request-Id": "abc-123", "Accept": "image/png"}):
        assert http.correlation_id(flask.request) == "abc-123" and http.wants_png(flask.request)
    with app.test_request_context("/", headers={"X-Request-Id": "<script>", "Accept": "*/*"}):
        assert http.correlation_id(flask.request) is None and not http.wants_png(flask.request)
