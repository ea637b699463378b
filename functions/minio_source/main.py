"""minio_source: a MinIO webhook (or S3 → SNS → HTTP) notification → one `io.minio.object.created` per object.

Needs `Authorization: Bearer <WEBHOOK_TOKEN>` (or Basic credentials with that password, for SNS). Posts the
CloudEvents to K_SINK and answers 200 only when the sink accepted all of them, else 502 so the sender retries
(the event ids are deterministic, so a resent notification does not duplicate work downstream).
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, openapi
from shared.config import Settings
from shared.events import EventPublisher
from shared.s3_events import MAX_NOTIFICATION_BYTES, check_webhook_auth, forward_notification, parse_notification

SETTINGS = Settings.from_env()
PUBLISHER = EventPublisher(SETTINGS.k_sink) if SETTINGS.k_sink else None


def _notify(request: flask.Request) -> flask.Response:
    check_webhook_auth(request.headers.get("Authorization"), SETTINGS.webhook_token)
    body = http.read_body(request, MAX_NOTIFICATION_BYTES)
    return http.json_response(forward_notification(parse_notification(body), PUBLISHER))


@functions_framework.http
def minio_source(request: flask.Request) -> flask.Response:
    return http.serve(request, {"POST /": _notify, **openapi.routes("minio_source")}, function="minio_source")
