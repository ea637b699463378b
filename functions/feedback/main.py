"""feedback: POST / `{request_id, label, reviewer}` with a reviewer's bearer token → `feedback/<request_id>.json`.

Emits `triage.feedback.received` to K_SINK (the broker). Answers 200 `{status: stored|updated|unchanged, ...}`;
401 for a missing or unknown token (403 when none is configured), 422 for a bad field, 404 for an unknown
request id, 502 when the broker refused the event (the label is kept; resend it).
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, openapi
from shared.config import Settings
from shared.events import publisher_from_settings
from shared.feedback import MAX_BODY_BYTES, parse_feedback, submit_feedback
from shared.storage import Storage

SETTINGS = Settings.from_env()
STORAGE = Storage.from_settings(SETTINGS)
PUBLISHER = publisher_from_settings(SETTINGS)


def _feedback(request: flask.Request) -> flask.Response:
    body = http.read_body(request, MAX_BODY_BYTES)
    label = parse_feedback(body, request.headers.get("Authorization"), SETTINGS.reviewer_tokens)
    return http.json_response(submit_feedback(STORAGE, label, PUBLISHER).to_json())


@functions_framework.http
def feedback(request: flask.Request) -> flask.Response:
    return http.serve(request, {"POST /": _feedback, **openapi.routes("feedback")}, function="feedback")
