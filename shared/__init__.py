"""xray-triage's own library for the serving functions (never imports torch).

The names below are what the functions and the CLI use; each is imported from its module on first use (PEP 562),
so a function that needs only storage and events never loads numpy, ONNX Runtime or Flask through this package.
Where things live: settings `config`, names and keys `names`, S3 `storage`, the served model `model` (its files:
`model_store`), event-triggered inference `ingest`, labels `feedback`, the preprocess clean-up `uploads`,
CloudEvents `events` (bucket notifications: `s3_events`), the HTTP edge `http`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.dead_letter import dead_letter_record, store_dead_letter
    from shared.errors import TriageError, UserError
    from shared.events import CloudEvent, EventPublisher, publisher_from_settings, read_event_request, reply_response
    from shared.feedback import RequestRecorder, parse_feedback, submit_feedback
    from shared.ingest import ingest_object, object_from_event
    from shared.model import Explanation, Prediction, TriageModel, get_model
    from shared.model_store import ModelLoadError, resolve_model
    from shared.s3_events import check_webhook_auth, forward_notification, parse_notification
    from shared.storage import Storage
    from shared.uploads import clean_upload, store_upload

_EXPORTS = {
    "Settings": "config",
    "TriageError": "errors",
    "UserError": "errors",
    "Storage": "storage",
    "Explanation": "model",
    "Prediction": "model",
    "TriageModel": "model",
    "get_model": "model",
    "ModelLoadError": "model_store",
    "resolve_model": "model_store",
    "ingest_object": "ingest",
    "object_from_event": "ingest",
    "RequestRecorder": "feedback",
    "parse_feedback": "feedback",
    "submit_feedback": "feedback",
    "clean_upload": "uploads",
    "store_upload": "uploads",
    "CloudEvent": "events",
    "EventPublisher": "events",
    "publisher_from_settings": "events",
    "read_event_request": "events",
    "reply_response": "events",
    "check_webhook_auth": "s3_events",
    "forward_notification": "s3_events",
    "parse_notification": "s3_events",
    "dead_letter_record": "dead_letter",
    "store_dead_letter": "dead_letter",
}

__all__ = [
    "CloudEvent",
    "EventPublisher",
    "Explanation",
    "ModelLoadError",
    "Prediction",
    "RequestRecorder",
    "Settings",
    "Storage",
    "TriageError",
    "TriageModel",
    "UserError",
    "check_webhook_auth",
    "clean_upload",
    "dead_letter_record",
    "forward_notification",
    "get_model",
    "ingest_object",
    "object_from_event",
    "parse_feedback",
    "parse_notification",
    "publisher_from_settings",
    "read_event_request",
    "reply_response",
    "resolve_model",
    "store_dead_letter",
    "store_upload",
    "submit_feedback",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shared' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"shared.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
