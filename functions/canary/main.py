"""canary: `triage.model.registered` starts a canary for that version; each PingSource wake-up steps it.

An HTTP target that parses the CloudEvent itself (so GET /healthz and GET /metrics work too). The state lives
in S3 (`triage-state/canary/state.json`), since the function scales to zero between ticks. Traffic is
split on the Knative Services (in-cluster service account) or, with CANARY_GATEWAY_URL, on the local gateway
(its revisions started there, its own /metrics observed unless PROMETHEUS_URL is set).
A new canary first replays stored uploads offline (CANARY_REPLAY, CANARY_REPLAY_UPLOADS; `shared.canary.replay`):
only a challenger that passes gets a revision and traffic. With CANARY_REQUIRE_APPROVAL the last step waits for
`triage canary approve`. Answers 200 with the decision; 502 when Prometheus, S3 or the Kubernetes API failed
(503 for S3 during a replay), so the event comes again.
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, openapi
from shared.canary import CanaryController, controller_from_settings
from shared.config import CanarySettings, Settings
from shared.events import event_data, read_event_request
from shared.names import MODEL_REGISTERED, PING
from shared.storage import Storage

SETTINGS = Settings.from_env()
CONFIG = CanarySettings.from_env()
STORAGE = Storage.from_settings(SETTINGS)
_CONTROLLER: list[CanaryController] = []  # built on the first event: /healthz answers before credentials are read


def _controller() -> CanaryController:
    if not _CONTROLLER:
        _CONTROLLER.append(controller_from_settings(CONFIG, SETTINGS, STORAGE))
    return _CONTROLLER[0]


def _canary(request: flask.Request) -> flask.Response:
    event = read_event_request(request)
    if event["type"] == MODEL_REGISTERED:
        data = event_data(event, "version")
        return http.json_response(_controller().start(str(data["version"]), data.get("champion_version")))
    if event["type"] == PING:
        return http.json_response(_controller().tick())
    return http.json_response({"status": "ignored", "type": event["type"]})


@functions_framework.http
def canary(request: flask.Request) -> flask.Response:
    return http.serve(request, {"POST /": _canary, **openapi.routes("canary")}, function="canary")
