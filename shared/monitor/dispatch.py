"""The monitor function's one entry point: its three kinds of events → state updates and reports.

`triage.prediction.created` → the rolling prediction summary; `triage.feedback.received` → the label joined with
its prediction; the PingSource tick → the report and the gauges. S3 failures are a 503, so the event comes again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared.config import MonitorConfig
from shared.events import BadEvent, CloudEvent, event_data
from shared.metrics import EVENTS_PROCESSED
from shared.modelcard import ModelCard
from shared.monitor.drift import load_card
from shared.monitor.labels import record_label
from shared.monitor.predictions import record_prediction
from shared.monitor.report import write_report
from shared.names import FEEDBACK_RECEIVED, MONITOR_REPORT_KEY, PING, PREDICTION_CREATED, STATE_BUCKET
from shared.storage import Storage, unavailable_on_s3_failure

__all__ = ["Monitor"]


class Monitor:
    """Turns the monitor's three kinds of events into state updates and reports (one per process)."""

    def __init__(
        self,
        storage: Storage,
        config: MonitorConfig,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        card_loader: Callable[[], ModelCard | None] | None = None,
    ) -> None:
        self.storage = storage
        self.config = config
        self.now = now
        self._card_loader = card_loader or (lambda: load_card(config.model_uri, storage))
        self._card: tuple[ModelCard | None] | None = None
        self._lock = threading.Lock()

    def card(self) -> ModelCard | None:
        """The model card, read once per process (the served model changes with a new revision, i.e. process)."""
        with self._lock:
            if self._card is None:
                self._card = (self._card_loader(),)
            return self._card[0]

    def handle(self, event: CloudEvent) -> dict[str, Any]:
        """Dispatch on the event type; unknown types are a 400 `bad_event`. S3 failures are 503 (retried)."""
        kind = event["type"]
        with unavailable_on_s3_failure("in the monitor"):
            if kind == PREDICTION_CREATED:
                data = event_data(event)  # record_prediction checks the fields (a not-assessable one has no label)
                body = {"status": record_prediction(self.storage, self.config, event["id"], data, now=self.now())}
            elif kind == FEEDBACK_RECEIVED:
                request_id = str(event_data(event, "request_id")["request_id"])
                body = {"status": record_label(self.storage, self.config, request_id, now=self.now())}
            elif kind == PING:
                report = write_report(self.storage, self.config, now=self.now(), card=self.card())
                where = f"s3://{STATE_BUCKET}/{MONITOR_REPORT_KEY}"
                body = {"status": "reported", "drift": report["drift"], "report": where}
            else:
                raise BadEvent(
                    f"monitor does not handle events of type {kind!r} "
                    f"(expects {PREDICTION_CREATED}, {FEEDBACK_RECEIVED} or {PING})"
                )
        EVENTS_PROCESSED.labels(function="monitor", type=kind, outcome=body["status"]).inc()
        return body
