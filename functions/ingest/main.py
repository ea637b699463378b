"""ingest: `io.minio.object.created` in inference-inputs → the flag, `triage.heatmap.requested` → the heatmap.

An HTTP target (not `@functions_framework.cloud_event`, which answers only POST) that parses the CloudEvent
itself, so the same process also serves GET /healthz (ready once the model is loaded) and GET /metrics. The
event's type picks the step (`shared.ingest`): the flag step writes the result with the label and hands the
heatmap on as `triage.heatmap.requested`, the heatmap step writes the picture and `triage.prediction.created`, so
each is its own delivery and no flag waits behind an occlusion map. Answers 200 for a final outcome (created,
pending, completed, duplicate, stale, error result stored) and 5xx when storage, the model or the event sink
failed, so the broker delivers the event again. Without K_SINK the next event is returned as a Knative reply
event (one per delivery); with K_SINK it is posted there before the step answers.
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, openapi
from shared.config import Settings
from shared.events import EventPublisher, read_event_request, reply_response
from shared.ingest import ingest_event
from shared.model import get_model
from shared.storage import Storage

SETTINGS = Settings.from_env()
MODEL = get_model(SETTINGS)
STORAGE = Storage.from_settings(SETTINGS)
PUBLISHER = EventPublisher(SETTINGS.k_sink) if SETTINGS.k_sink else None


def _ingest(request: flask.Request) -> flask.Response:
    outcome = ingest_event(STORAGE, MODEL, read_event_request(request), publisher=PUBLISHER)
    if outcome.event is not None:
        return flask.make_response(reply_response(outcome.event))
    return http.json_response(outcome.to_json())


@functions_framework.http
def ingest(request: flask.Request) -> flask.Response:
    return http.serve(request, {"POST /": _ingest, **openapi.routes("ingest")}, function="ingest", model=MODEL)
