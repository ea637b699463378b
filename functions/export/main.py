"""export: `triage.prediction.created` for a DICOM input → an SR and the heatmap as a Secondary Capture in the
original study on the hospital's PACS (design §2; `shared.pacs.export`).

An HTTP target that parses the CloudEvent itself, so the same process serves GET /healthz and GET /metrics.
Answers 200 when exported (a not-assessable input: the SR alone, saying so) or skipped (not DICOM, replaced, gone,
no PACS configured: final);
503 when the PACS or S3 is unreachable or DEID_SECRET is not set, 502 when the PACS refused: the broker retries with
backoff, then dead-letters the event. Another event type is a 400.
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, openapi
from shared.config import ExportSettings, Settings
from shared.events import BadEvent, read_event_request
from shared.names import PREDICTION_CREATED
from shared.pacs.export import export_prediction
from shared.pacs.send import sender_from_settings
from shared.storage import Storage

SETTINGS = Settings.from_env()
EXPORT = ExportSettings.from_env()
STORAGE = Storage.from_settings(SETTINGS)
SENDER = sender_from_settings(EXPORT)


def _export(request: flask.Request) -> flask.Response:
    event = read_event_request(request)
    if event["type"] != PREDICTION_CREATED:
        raise BadEvent(f"expected a {PREDICTION_CREATED} event, got {event['type']}")
    outcome = export_prediction(STORAGE, event, sender=SENDER, secret=SETTINGS.deid_secret,
                                attempts=EXPORT.attempts, backoff_s=EXPORT.backoff_s)
    return http.json_response(outcome.to_json())


@functions_framework.http
def export(request: flask.Request) -> flask.Response:
    return http.serve(request, {"POST /": _export, **openapi.routes("export")}, function="export")
