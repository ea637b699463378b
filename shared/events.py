"""CloudEvents 1.0 of design §4: building them, HTTP encoding, posting to K_SINK, parsing incoming requests.

Event ids are deterministic where a redelivery must be recognisable as the same event (CloudEvents consumers
deduplicate on source + id): the object-created event of one object version always has the same id, so do the
heatmap request and the prediction made from it and the registration of one model version.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

import httpx
from cloudevents import exceptions as ce_exceptions
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http

from shared.config import Settings
from shared.errors import InvalidField, TriageError, UserError
from shared.names import (
    FEEDBACK_RECEIVED,
    HEATMAP_REQUESTED,
    MODEL_REGISTERED,
    OBJECT_CREATED,
    PREDICTION_CREATED,
    SOURCE_FEEDBACK,
    SOURCE_INGEST,
    SOURCE_RETRAIN,
)
from shared.security import read_body
from shared.timestamps import utc_iso

__all__ = [
    # The event types and sources live in shared.names; they are here too because every event user needs them.
    "FEEDBACK_RECEIVED",
    "HEATMAP_REQUESTED",
    "MAX_EVENT_BYTES",
    "MAX_KEY_BYTES",
    "MODEL_REGISTERED",
    "OBJECT_CREATED",
    "PREDICTION_CREATED",
    "SOURCE_FEEDBACK",
    "SOURCE_INGEST",
    "SOURCE_RETRAIN",
    "EVENT_FIELDS",
    "BadEvent",
    "CloudEvent",
    "EventDeliveryError",
    "EventPublisher",
    "InvalidEventData",
    "NullPublisher",
    "Publisher",
    "deterministic_id",
    "event_data",
    "event_from_http",
    "event_to_binary_http",
    "event_to_structured_http",
    "feedback_received_event",
    "heatmap_requested_event",
    "make_event",
    "minio_source",
    "model_registered_event",
    "normalize_etag",
    "object_created_event",
    "prediction_created_event",
    "publisher_from_settings",
    "read_event_request",
    "reply_response",
]

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 1 << 20
MAX_KEY_BYTES = 1024  # S3's limit on an object key


class EventDeliveryError(TriageError):
    """The sink did not accept an event (unreachable or non-2xx): our side's fault, so 502 and a retry."""

    status = 502
    code = "event_delivery_failed"


class BadEvent(UserError):
    """A request that is not a valid CloudEvent (or not the type / data this handler expects)."""

    code = "bad_event"


class InvalidEventData(BadEvent, InvalidField):
    """An event whose data has a field of the wrong JSON type (`key` an object, `size` a string): 422, nothing done."""

    status = 422
    code = "invalid_field"


_NUMBER = (int, float)
# The JSON type of each data field the consumers of an event type read (design §4); a field may be absent or null
# unless the consumer requires it. Checked at the edge (`event_data`), so no consumer formats an object into a key.
EVENT_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    OBJECT_CREATED: {"bucket": (str,), "key": (str,), "etag": (str,), "size": (int,), "event_time": (str,)},
    PREDICTION_CREATED: {
        "request_id": (str,), "label": (str,), "probability": _NUMBER, "threshold": _NUMBER, "urgent": (bool,),
        "bucket": (str,), "key": (str,), "etag": (str,), "status": (str,), "model": (dict,),
    },
    HEATMAP_REQUESTED: {"bucket": (str,), "key": (str,), "etag": (str,), "request_id": (str,)},
    FEEDBACK_RECEIVED: {"request_id": (str,), "label": (str,), "reviewer": (str,), "key": (str,), "time": (str,)},
    MODEL_REGISTERED: {"name": (str,), "version": (str, int), "run_id": (str,), "champion_version": (str, int)},
}
_JSON_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", dict: "an object"}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", dict: "an object", list: "an array"}.get(type(value), type(value).__name__)


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types  # JSON true is no count, size or probability
    if isinstance(value, float) and float in types:
        return value == value and value not in (float("inf"), float("-inf"))
    return isinstance(value, types)


def _check_types(event_type: str, data: Mapping[str, Any]) -> None:
    for name, types in EVENT_FIELDS.get(event_type, {}).items():
        value = data.get(name)
        if value is None or _has_type(value, types):
            continue
        expected = " or ".join(dict.fromkeys(_JSON_NAMES[t] for t in types))
        raise InvalidEventData(f"event {event_type} data field '{name}' must be {expected}, got {_json_type(value)}")
    size = data.get("size") if event_type == OBJECT_CREATED else None
    if isinstance(size, int) and not isinstance(size, bool) and size < 0:
        raise InvalidEventData(f"event {event_type} data field 'size' must not be negative")
    # A key S3 cannot hold, or an ETag that cannot go in an If-Match header, fails on every retry: a 422, not a 503.
    fields = EVENT_FIELDS.get(event_type, {})
    key, etag = data.get("key") if "key" in fields else None, data.get("etag") if "etag" in fields else None
    if isinstance(key, str) and (len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES
                                 or any(ord(ch) < 32 or ord(ch) == 127 for ch in key)):
        raise InvalidEventData(f"event {event_type} data field 'key' must be an object key (at most {MAX_KEY_BYTES} "
                               "bytes, no control characters)")
    if isinstance(etag, str) and (len(etag) > MAX_KEY_BYTES or not all(" " <= ch <= "~" for ch in etag)):
        raise InvalidEventData(f"event {event_type} data field 'etag' must be printable ASCII")


def minio_source(bucket: str) -> str:
    """The `source` of object events of one bucket: `minio:<bucket>`."""
    return f"minio:{bucket}"


def deterministic_id(*parts: str) -> str:
    """sha256 hex of the parts joined by '/': the same inputs always give the same event id."""
    return hashlib.sha256("/".join(parts).encode("utf-8")).hexdigest()


def normalize_etag(etag: str | None) -> str:
    """S3 answers ETags quoted (`"abc"`), S3 events carry them bare; compare the bare form."""
    return (etag or "").strip().strip('"')


def _utc_iso(value: datetime | str | None) -> str:
    """A datetime (or now) as ISO 8601 UTC; a string is taken as already formatted."""
    return value if isinstance(value, str) else utc_iso(value)


def make_event(
    event_type: str,
    source: str,
    data: Mapping[str, Any],
    *,
    event_id: str | None = None,
    time: datetime | str | None = None,
    extensions: Mapping[str, str] | None = None,
) -> CloudEvent:
    """A structured-JSON CloudEvent; a random id unless `event_id` is given."""
    attributes: dict[str, Any] = {
        "type": event_type,
        "source": source,
        "time": _utc_iso(time),
        "datacontenttype": "application/json",
    }
    if event_id is not None:
        attributes["id"] = event_id
    # Extension names must be lower-case alphanumerics (CloudEvents 1.0 §"Attribute Naming Convention").
    for name, value in (extensions or {}).items():
        attributes[name] = value
    return CloudEvent(attributes, dict(data))


def object_created_event(
    bucket: str, key: str, etag: str, size: int | None, event_time: datetime | str | None = None
) -> CloudEvent:
    """`io.minio.object.created` for one object version; id = sha256(bucket/key/etag)."""
    etag = normalize_etag(etag)
    data = {"bucket": bucket, "key": key, "etag": etag, "size": size, "event_time": _utc_iso(event_time)}
    return make_event(
        OBJECT_CREATED,
        minio_source(bucket),
        data,
        event_id=deterministic_id(bucket, key, etag),
        time=event_time,
        extensions={"bucket": bucket},
    )


def prediction_created_event(result: Mapping[str, Any]) -> CloudEvent:
    """`triage.prediction.created` carrying an ingest result; one id per input object version."""
    event_id = deterministic_id("prediction", result["bucket"], result["key"], result["etag"])
    return make_event(PREDICTION_CREATED, SOURCE_INGEST, result, event_id=event_id)


def heatmap_requested_event(result: Mapping[str, Any]) -> CloudEvent:
    """`triage.heatmap.requested`: ingest's flag step hands one object version's heatmap to a delivery of its own
    (the version, not the result: the heatmap step re-reads it); one id per input object version."""
    data = {name: result[name] for name in ("bucket", "key", "etag", "request_id")}
    event_id = deterministic_id("heatmap", result["bucket"], result["key"], result["etag"])
    return make_event(HEATMAP_REQUESTED, SOURCE_INGEST, data, event_id=event_id)


def feedback_received_event(record: Mapping[str, Any]) -> CloudEvent:
    """`triage.feedback.received` for one stored label; resending the same stored record keeps the id."""
    event_id = deterministic_id("feedback", record["request_id"], record["label"], record["time"])
    return make_event(FEEDBACK_RECEIVED, SOURCE_FEEDBACK, record, event_id=event_id)


def model_registered_event(
    version: str | int, run_id: str | None, *, name: str = "xray-vit", extra: Mapping[str, Any] | None = None
) -> CloudEvent:
    """`triage.model.registered` for one registry version (the canary consumes it)."""
    data = {"name": name, "version": str(version), "run_id": run_id, **(extra or {})}
    return make_event(MODEL_REGISTERED, SOURCE_RETRAIN, data, event_id=deterministic_id("model", name, str(version)))


def event_to_binary_http(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary content mode, as Knative delivers: attributes in `ce-*` headers, data as the body.

    JSON data gets `Content-Type: application/json` even when the event names no `datacontenttype` (an event
    parsed from a reply, say), so every subscriber can read it.
    """
    headers, body = to_binary(event)
    headers = dict(headers)
    if "content-type" not in {k.lower() for k in headers} and isinstance(event.get_data(), (dict, list)):
        headers["content-type"] = "application/json"
    if body is None:
        return headers, b""
    return headers, body if isinstance(body, bytes) else str(body).encode("utf-8")


def event_to_structured_http(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Structured content mode: the whole event as `application/cloudevents+json`."""
    headers, body = to_structured(event)
    return dict(headers), body if isinstance(body, bytes) else str(body).encode("utf-8")


def event_from_http(headers: Mapping[str, str], body: bytes | str | None) -> CloudEvent:
    """Parse a binary or structured HTTP CloudEvent; anything else is a 400 `bad_event`."""
    try:
        event = from_http(dict(headers.items()), body)
    except ce_exceptions.GenericException as exc:
        raise BadEvent(f"request body is not a CloudEvent: {_first_line(str(exc))}") from exc
    except (ValueError, TypeError) as exc:
        raise BadEvent(f"request body is not a CloudEvent: {_first_line(str(exc))}") from exc
    _check_attributes(event)
    return event


_REQUIRED_ATTRIBUTES = ("id", "source", "specversion", "type")
_STRING_ATTRIBUTES = ("time", "subject", "datacontenttype", "dataschema")


def _check_attributes(event: CloudEvent) -> None:
    """CloudEvents 1.0: the context attributes are strings (extensions may be integers or booleans too); the
    structured JSON mode lets any JSON through, so a `type` or `time` that is an object is refused here (422)."""
    for name, value in event.get_attributes().items():
        if name in _REQUIRED_ATTRIBUTES and not (isinstance(value, str) and value):
            raise InvalidEventData(f"CloudEvent attribute '{name}' must be a non-empty string, got {_json_type(value)}")
        if name in _STRING_ATTRIBUTES and value is not None and not isinstance(value, str):
            raise InvalidEventData(f"CloudEvent attribute '{name}' must be a string, got {_json_type(value)}")
        if value is not None and not isinstance(value, (str, int, bool)):
            raise InvalidEventData(f"CloudEvent attribute '{name}' must be a string, got {_json_type(value)}")


def read_event_request(request: Any, *, max_bytes: int = MAX_EVENT_BYTES) -> CloudEvent:
    """The CloudEvent of a flask request, its body capped at `max_bytes` (413 above it)."""
    return event_from_http(request.headers, read_body(request, max_bytes))


def event_data(event: CloudEvent, *required: str) -> dict[str, Any]:
    """The event's JSON object data, with each `required` field present (else a 400 naming the field) and every
    field its type reads (EVENT_FIELDS) of the right JSON type (else a 422 naming the field)."""
    data = event.get_data()
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise BadEvent(f"event {event['type']} data is not JSON") from exc
    if not isinstance(data, dict):
        raise BadEvent(f"event {event['type']} data must be a JSON object")
    _check_types(str(event["type"]), data)
    for name in required:
        if data.get(name) is None or data.get(name) == "":
            raise BadEvent(f"event {event['type']} data has no field '{name}'")
    return data


def reply_response(event: CloudEvent) -> tuple[bytes, int, dict[str, str]]:
    """A Flask response (body, status, headers) carrying `event` as a Knative reply event (binary mode)."""
    headers, body = event_to_binary_http(event)
    return body, 200, headers


def _first_line(text: str) -> str:
    return text.splitlines()[0][:200] if text else "invalid"


class Publisher(Protocol):
    """Anything that can emit a CloudEvent: `EventPublisher` (to K_SINK) or `NullPublisher`."""

    def publish(self, event: CloudEvent) -> None: ...


class EventPublisher:
    """Posts CloudEvents to a sink (K_SINK: the broker) over HTTP; a non-2xx or no answer is EventDeliveryError."""

    def __init__(
        self,
        sink: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = 5.0,
        structured: bool = False,
    ) -> None:
        self.sink = sink
        self.structured = structured
        self._client = httpx.Client(transport=transport, timeout=timeout_s)

    def publish(self, event: CloudEvent) -> None:
        encode = event_to_structured_http if self.structured else event_to_binary_http
        headers, body = encode(event)
        try:
            response = self._client.post(self.sink, headers=headers, content=body)
        except httpx.HTTPError as exc:
            raise EventDeliveryError(f"event sink {self.sink} unreachable: {type(exc).__name__}") from exc
        if not response.is_success:
            raise EventDeliveryError(f"event sink {self.sink} answered {response.status_code} to {event['type']}")
        log.info("published %s id=%s", event["type"], event["id"])

    def close(self) -> None:
        self._client.close()


class NullPublisher:
    """Used when K_SINK is unset: logs the event's type and id (never its data, which may name a reviewer)."""

    def publish(self, event: CloudEvent) -> None:
        log.info("K_SINK unset; not publishing %s id=%s", event["type"], event["id"])


def publisher_from_settings(settings: Settings, *, transport: httpx.BaseTransport | None = None) -> Publisher:
    """EventPublisher to `settings.k_sink`, or NullPublisher when it is unset."""
    if not settings.k_sink:
        return NullPublisher()
    return EventPublisher(settings.k_sink, transport=transport)
