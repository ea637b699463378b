"""retrain: on `triage.feedback.received` and on new objects in raw-data, launch training once enough labels are new.

An HTTP target that parses the CloudEvent itself (so GET /healthz and GET /metrics work too). The backend is
RETRAIN_BACKEND (local | kubernetes | github); the threshold RETRAIN_MIN_LABELS. Answers 200 with the decision
(waiting, launched, already_launched, ignored); 502 / 503 when the launch or the state write failed,
so the broker delivers the event again.
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, openapi
from shared.config import RetrainConfig, Settings
from shared.events import read_event_request
from shared.retrain import item_from_event, launcher_from_config, maybe_launch
from shared.storage import Storage

SETTINGS = Settings.from_env()
CONFIG = RetrainConfig.from_env(SETTINGS)
STORAGE = Storage.from_settings(SETTINGS)
LAUNCHER = launcher_from_config(CONFIG)


def _retrain(request: flask.Request) -> flask.Response:
    item = item_from_event(read_event_request(request))
    if item is None:
        return http.json_response({"status": "ignored"})
    return http.json_response(maybe_launch(STORAGE, CONFIG, LAUNCHER, new_item=item).to_json())


@functions_framework.http
def retrain(request: flask.Request) -> flask.Response:
    return http.serve(request, {"POST /": _retrain, **openapi.routes("retrain")}, function="retrain")
