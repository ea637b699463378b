"""monitor: drift of the predictions and live accuracy on radiologists' labels (design §2, §4).

An HTTP target that parses the CloudEvent itself, so the same process serves GET /healthz and GET /metrics.
`triage.prediction.created` → the rolling prediction summary; `triage.feedback.received` → the label joined with
its prediction; the PingSource tick (`dev.knative.sources.ping`) → `triage-state/monitor/report.json` and
the gauges. Any other event type is a 400; an S3 failure a 503, so the broker delivers the event again.
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, openapi
from shared.config import MonitorConfig, Settings
from shared.events import read_event_request
from shared.monitor import Monitor
from shared.storage import Storage

SETTINGS = Settings.from_env()
CONFIG = MonitorConfig.from_env(SETTINGS)
MONITOR = Monitor(Storage.from_settings(SETTINGS), CONFIG)


def _monitor(request: flask.Request) -> flask.Response:
    return http.json_response(MONITOR.handle(read_event_request(request)))


@functions_framework.http
def monitor(request: flask.Request) -> flask.Response:
    return http.serve(request, {"POST /": _monitor, **openapi.routes("monitor")}, function="monitor")
