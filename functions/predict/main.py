"""predict: POST / an image (raw body, multipart field `file`, or JSON {"url"}) → design §5's prediction JSON.

Also the Open Inference Protocol v2 under `/v2` (shared.inference_protocol) and `GET /openapi.json`.
"""

from __future__ import annotations

import sys

import flask
import functions_framework

from shared import http
from shared.api_auth import ApiAuth
from shared.config import Settings
from shared.inference_protocol import InferenceProtocol
from shared.model import get_model
from shared.request_records import RequestRecorder
from shared.security import IPNetwork, parse_networks

# The request thread gets the GIL back within 1 ms (not 5) of its I/O or ONNX call when the record writers hold it:
# c=1 p50 0.67x and 0.74x (p99 0.94x) against 5 ms in two interleaved A/B runs (README, "the predict path").
sys.setswitchinterval(0.001)
SETTINGS = Settings.from_env()
MODEL = get_model(SETTINGS)
# Callers present an API token (design §5); the table is re-read when it changes (`triage tokens`).
AUTH = ApiAuth.from_settings(SETTINGS)
# Records each answer (batched, off the latency path, never dropped) so a radiologist can label it through feedback.
REQUESTS = RequestRecorder.from_settings(SETTINGS, source="predict")
# Empty unless URL_ALLOW_NETWORKS is set (local stack and tests only): networks a {"url"} may point into.
URL_ALLOW_NETWORKS: tuple[IPNetwork, ...] = parse_networks(SETTINGS.url_allow_networks)
# KServe / Triton clients: the same model and token rule; /v2/health/* and model readiness stay open.
OIP = InferenceProtocol(MODEL, guard=AUTH.require("predict"), max_body_bytes=SETTINGS.max_body_bytes)


@AUTH.require("predict")
def _predict(request: flask.Request) -> flask.Response:
    data, content_type = http.read_image(request, SETTINGS, allow_networks=URL_ALLOW_NETWORKS)
    prediction = MODEL(data, content_type)  # the request id is ours; X-Request-Id is only a correlation field
    answer = REQUESTS.record(http.correlated(prediction.to_json(), request))  # its id now names its record's batch
    return http.json_response(answer)


def _openapi(request: flask.Request) -> flask.Response:
    from shared import openapi  # its schemas import the event module and httpx: kept off cold start

    return openapi.route("predict")(request)


ROUTES = {"POST /": _predict, "GET /openapi.json": _openapi}


@functions_framework.http
def predict(request: flask.Request) -> flask.Response:
    if OIP.owns(request):
        return OIP.handle(request)
    return http.serve(request, ROUTES, function="predict", model=MODEL)
