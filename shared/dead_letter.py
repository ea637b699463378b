"""The dead-letter sink: an event that failed every delivery attempt is stored, never dropped.

Knative Eventing sends such an event to the Trigger's `deadLetterSink` with the extensions
`knativeerrordest` (the subscriber that failed), `knativeerrorcode` (its last HTTP status) and
`knativeerrordata` (the start of its last response). The local broker stores the same record through
`store_dead_letter`, so `dead-letter/<subscriber>/<event id>.json` looks the same everywhere.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib.parse import urlsplit

from cloudevents.http import CloudEvent

from shared import metrics
from shared.names import DEAD_LETTER_BUCKET
from shared.storage import Storage
from shared.timestamps import utc_iso

__all__ = ["dead_letter_record", "store_dead_letter", "subscriber_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def subscriber_name(destination: str | None) -> str:
    """A key-safe name for the subscriber: `http://ingest.ns.svc.cluster.local/` → `ingest`."""
    if not destination:
        return "unknown"
    parts = urlsplit(destination)
    host = parts.hostname or destination
    # A cluster-local service name is the first DNS label; an IP address (the local stack) is kept whole with its port.
    name = parts.netloc if host.replace(".", "").isdigit() else host.split(".")[0]
    return _UNSAFE.sub("-", name).strip("-") or "unknown"


def _error_data(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8", "replace")[:2000]
    except (binascii.Error, ValueError):
        return raw[:2000]


def dead_letter_record(event: CloudEvent, *, error: str | None = None, subscriber: str | None = None) -> dict[str, Any]:
    """The stored form: the event (attributes + data) and why it is here."""
    attributes = {name: value for name, value in event.get_attributes().items() if not name.startswith("knativeerror")}
    data = event.get_data()
    if isinstance(data, bytes):
        data = base64.b64encode(data).decode()
    return {
        "event": {**attributes, "data": data},
        "subscriber": subscriber or subscriber_name(event.get("knativeerrordest")),
        "error": {
            "status": event.get("knativeerrorcode"),
            "message": error if error is not None else _error_data(event.get("knativeerrordata")),
        },
        "stored_at": utc_iso(),
    }


def store_dead_letter(storage: Storage, record: dict[str, Any]) -> str:
    """Write `record` to `dead-letter/<subscriber>/<event id>.json` (a redelivery overwrites the same key) and
    count it in `triage_dead_letters_total` (a redelivery to the sink counts again: the alert asks "any?")."""
    key = f"{_UNSAFE.sub('-', record['subscriber'])}/{_UNSAFE.sub('-', str(record['event']['id']))}.json"
    storage.put_json(DEAD_LETTER_BUCKET, key, record)
    metrics.DEAD_LETTERS.labels(subscriber=record["subscriber"]).inc()
    return key
