"""ingest: `io.minio.object.created` in inference-inputs → prediction + heatmap in inference-results.

An HTTP target (not `@functions_framework.cloud_event`, which answers only POST) that parses the CloudEvent
itself, so the same process also serves GET /healthz (ready once the model is loaded) and GET /metrics.
Answers 200 for a final outcome (created, duplicate, stale, error result stored) and 5xx when storage or the
model failed, so the broker delivers the event again. Without K_SINK the `triage.prediction.created` event is
returned as a Knative reply event; with K_SINK it is posted there before the result is written.
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, openapi
from shared.config import Settings
from shared.events import EventPublisher, read_event_request, reply_response
from shared.ingest import ingest_object, object_from_event
from shared.model import get_model
from shared.storage import Storage

SETTINGS = Settings.from_env()
MODEL = get_model(SETTINGS)
STORAGE = Storage.from_settings(SETTINGS)
PUBLISHER = EventPublisher(SETTINGS.k_sink) if SETTINGS.k_sink else None


def _ingest(request: flask.Request) -> flask.Response:
    obj = object_from_event(read_event_request(request))
    outcome = ingest_object(STORAGE, MODEL, obj, publisher=PUBLISHER)
    if outcome.event is not None:
        return flask.make_response(reply_response(outcome.event))
    return http.json_response(outcome.to_json())


@functions_framework.http
def ingest(request: flask.Request) -> flask.Response:
    return http.serve(request, {"POST /": _ingest, **openapi.routes("ingest")}, function="ingest", model=MODEL)
