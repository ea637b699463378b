"""dead-letter: the Triggers' dead-letter sink; stores each undeliverable CloudEvent in the `dead-letter` bucket.

Answers 200 once the event is stored (Knative then forgets it) and 5xx when storage failed, so Knative retries.
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, openapi
from shared.config import Settings
from shared.dead_letter import dead_letter_record, store_dead_letter
from shared.events import read_event_request
from shared.names import DEAD_LETTER_BUCKET
from shared.storage import Storage

SETTINGS = Settings.from_env()
STORAGE = Storage.from_settings(SETTINGS)


def _store(request: flask.Request) -> flask.Response:
    key = store_dead_letter(STORAGE, dead_letter_record(read_event_request(request)))
    return http.json_response({"status": "stored", "bucket": DEAD_LETTER_BUCKET, "key": key})


@functions_framework.http
def dead_letter(request: flask.Request) -> flask.Response:
    return http.serve(request, {"POST /": _store, **openapi.routes("dead_letter")}, function="dead_letter")
