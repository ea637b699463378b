"""explain: POST /?method=rollout|occlusion an image → prediction + heatmap (JSON with base64 PNG, or image/png).

An image the gate finds not assessable is answered 200 with the JSON (`assessable: false`, `heatmap_png: null`),
also under `Accept: image/png`: there is no heatmap to send.
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, openapi
from shared.api_auth import ApiAuth
from shared.config import Settings
from shared.model import get_model
from shared.request_records import RequestRecorder
from shared.security import IPNetwork, parse_networks

SETTINGS = Settings.from_env()
MODEL = get_model(SETTINGS)
# Callers present an API token (design §5); the table is re-read when it changes (`triage tokens`).
AUTH = ApiAuth.from_settings(SETTINGS)
# Records each answer (batched, off the latency path, never dropped) so a radiologist can label it through feedback.
REQUESTS = RequestRecorder.from_settings(SETTINGS, source="explain")
# Empty unless URL_ALLOW_NETWORKS is set (local stack and tests only): networks a {"url"} may point into.
URL_ALLOW_NETWORKS: tuple[IPNetwork, ...] = parse_networks(SETTINGS.url_allow_networks)


@AUTH.require("explain")
def _explain(request: flask.Request) -> flask.Response:
    data, content_type = http.read_image(request, SETTINGS, allow_networks=URL_ALLOW_NETWORKS)
    method = request.args.get("method", "rollout")
    explanation = MODEL(data, content_type, explain=method)  # the request id is ours (see predict)
    prediction = explanation.prediction
    request_id = REQUESTS.record(http.correlated(prediction.to_json(), request))["request_id"]  # names its batch
    # Not assessable: there is no heatmap to send, so the answer is the JSON (200, `heatmap_png: null`) whatever
    # the Accept header asked for; its Content-Type says so.
    if http.wants_png(request) and explanation.overlay_png is not None:
        headers = {
            "X-Request-Id": request_id,
            "X-Label": prediction.label,
            "X-Probability": f"{prediction.probability:.6f}",
        }
        if http.correlation_id(request):
            headers["X-Correlation-Id"] = http.correlation_id(request)
        return flask.Response(explanation.overlay_png, mimetype="image/png", headers=headers)
    return http.json_response(http.correlated({**explanation.to_json(), "request_id": request_id}, request))


@functions_framework.http
def explain(request: flask.Request) -> flask.Response:
    return http.serve(request, {"POST /": _explain, **openapi.routes("explain")}, function="explain", model=MODEL)
