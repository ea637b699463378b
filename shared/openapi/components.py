"""The pieces every function's OpenAPI document shares: schemas, request bodies and the error responses.

Schemas say what the code answers (design §5) and leave room for additive fields (`additionalProperties` is
open), so a new field does not break a client that validates against the document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shared.events import EVENT_FIELDS, MAX_KEY_BYTES
from shared.gate import REASONS
from shared.names import (
    CLASS_NAMES,
    HEATMAP_REQUESTED,
    INPUT_BUCKET,
    NOTIFYING_BUCKETS,
    OBJECT_CREATED,
    PREDICTION_CREATED,
    REQUEST_ID,
)

__all__ = [
    "SCHEMAS",
    "SECURITY_SCHEMES",
    "cloud_event_body",
    "cloud_event_headers",
    "errors",
    "event_data",
    "image_body",
    "json_content",
    "oip_errors",
    "operation",
    "ref",
    "standard_paths",
]

Schema = dict[str, Any]

_ERROR_TEXT = {
    400: "Bad request: invalid JSON, an undecodable image or a bad event.",
    401: "No or unknown token (`WWW-Authenticate: Bearer`).",
    403: "A revoked token, or one that may not call this function.",
    404: "Unknown route or unknown resource.",
    405: "Method not allowed on this path.",
    409: "Conflict with the resource's state (a case whose triage failed has no prediction to label).",
    413: "Body over the limit.",
    415: "Unsupported content type.",
    422: "A field is missing or invalid.",
    429: "Over the rate limit (`Retry-After`).",
    500: "Our fault (never the caller's).",
    502: "A downstream service (broker, S3, Kubernetes, Prometheus) refused or failed; resend.",
    503: "Not ready (model loading) or a dependency is unavailable; retry.",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    429: {"Retry-After": {"schema": {"type": "string"}}},
}

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": 'Design §5: `{"error": {"code", "message"}}`.',
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "OipError": {
        "type": "object",
        "description": 'The Open Inference Protocol error: `{"error": "<message>"}`.',
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Prediction": {
        "type": "object",
        "description": (
            "Design §5. `assessable: false` (the gate found no chest radiograph the model can judge: a valid "
            "request, answered 200) comes with a `reason` and `label` / `probability` null, `urgent` false."
        ),
        "required": ["request_id", "assessable", "label", "probability", "threshold", "urgent", "model",
                     "timings_ms"],
        "properties": {
            "request_id": {"type": "string"},
            "assessable": {"type": "boolean"},
            "reason": {
                "type": "object",
                "description": "Why the input is not assessable (only when `assessable` is false).",
                "required": ["code", "message"],
                "properties": {
                    "code": {"enum": list(REASONS)},
                    "message": {"type": "string"},
                },
            },
            "label": {"enum": ["pneumonia", "normal", None]},
            "probability": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "threshold": {"type": "number"},
            "urgent": {"type": "boolean"},
            "model": {
                "type": "object",
                "required": ["name", "version"],
                "properties": {"name": {"type": "string"}, "version": {"type": ["string", "null"]}},
            },
            "timings_ms": {"type": "object", "additionalProperties": {"type": "number"}},
            "correlation_id": {"type": "string"},
            "burned_in_annotation": {"type": "boolean"},
        },
    },
    "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "Notification": {
        "type": "object",
        "description": "A MinIO / S3 event notification (`Records`; only `*ObjectCreated:*` records are forwarded), or "
        "an SNS envelope of one (`Type`, `Message`).",
        "required": ["Records"],
        "properties": {
            "EventName": {"type": "string"},
            "Key": {"type": "string"},
            "Records": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["eventName", "s3"],
                    "properties": {
                        # MinIO's names, AWS's, and one that is skipped; any other name is skipped too.
                        "eventName": {"anyOf": [{"enum": ["s3:ObjectCreated:Put", "ObjectCreated:Put",
                                                          "s3:ObjectRemoved:Delete"]}, {"type": "string"}]},
                        "eventTime": {"type": "string", "format": "date-time"},
                        "s3": {
                            "type": "object",
                            "required": ["bucket", "object"],
                            "properties": {
                                "bucket": {"type": "object", "required": ["name"],
                                           "properties": {"name": {"type": "string", "minLength": 1}}},
                                "object": {
                                    "type": "object",
                                    "required": ["key", "eTag"],
                                    "properties": {
                                        "key": {"type": "string", "minLength": 1},
                                        "eTag": {"type": "string", "pattern": "[^\"]"},
                                        "size": {"type": "integer", "minimum": 0},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

SECURITY_SCHEMES = {
    "apiToken": {"type": "http", "scheme": "bearer", "description": "An API token (`triage tokens add NAME`)."},
    "reviewerToken": {"type": "http", "scheme": "bearer", "description": "A reviewer token (REVIEWER_TOKENS)."},
    "webhookToken": {"type": "http", "scheme": "bearer", "description": "WEBHOOK_TOKEN (or Basic with it)."},
    "reviewSession": {"type": "apiKey", "in": "cookie", "name": "review_session"},
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def errors(*statuses: int, schema: str = "Error") -> dict[str, Any]:
    """Responses for each status, with the JSON error body and the header the status calls for."""
    out: dict[str, Any] = {}
    for status in statuses:
        response: dict[str, Any] = {"description": _ERROR_TEXT[status], "content": json_content(ref(schema))}
        if status in _HEADERS:
            response["headers"] = _HEADERS[status]
        out[str(status)] = response
    return out


def oip_errors(*statuses: int) -> dict[str, Any]:
    return errors(*statuses, schema="OipError")


def operation(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One operation; the operationId is built from the summary by the document builder."""
    return {"summary": summary, "responses": responses, **extra}


def image_body() -> dict[str, Any]:
    """An image as the raw body, multipart field `file`, or JSON `{"url"}` (design §5)."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "required": True,
        "content": {
            "image/png": binary,
            "image/jpeg": binary,
            "application/dicom": binary,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["url"],
                    "properties": {"url": {"type": "string", "format": "uri", "pattern": "^https://"}},
                }
            },
        },
    }


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}
_UNIT = {"minimum": 0, "maximum": 1}
_NO_CONTROL = "^[^\\x00-\\x1f\\x7f]*$"
# What the consumers check beyond the JSON type (shared.monitor, shared.retrain, shared.pacs.export).
_COMMON_RULES: dict[str, Schema] = {
    "request_id": {"pattern": REQUEST_ID.pattern},
    "label": {"enum": list(CLASS_NAMES)},
    "probability": _UNIT,
    "threshold": _UNIT,
    "key": {"maxLength": MAX_KEY_BYTES, "pattern": _NO_CONTROL,
            "description": f"An object key: at most {MAX_KEY_BYTES} bytes UTF-8, no control characters."},
    "etag": {"maxLength": MAX_KEY_BYTES, "pattern": "^[ -~]*$", "description": "Printable ASCII."},
}
_EVENT_RULES: dict[str, dict[str, Schema]] = {  # minio-source announces uploads to these buckets only
    OBJECT_CREATED: {"bucket": {"enum": list(NOTIFYING_BUCKETS)}, "size": {"minimum": 0}},
    # ingest sets `urgent` always (monitor refuses a null), `status` ok or error, for an input in INPUT_BUCKET
    PREDICTION_CREATED: {"urgent": {"type": "boolean"}, "status": {"enum": ["ok", "error"]},
                         "bucket": {"enum": [INPUT_BUCKET]}},
    HEATMAP_REQUESTED: {"bucket": {"enum": [INPUT_BUCKET]}},  # ingest asks itself for the heatmap of an input
}
# What a CloudEvent attribute may be (shared.events checks it: a non-empty string for the required ones).
_ATTRIBUTE = {"type": "string", "minLength": 1}


def event_data(event_type: str, required: Sequence[str] = ()) -> Schema:
    """The data of one event type as its consumers read it (design §4): each field of `shared.events.EVENT_FIELDS`
    with its JSON type, null allowed unless the consumer requires it (a required string is also non-empty)."""
    properties: dict[str, Schema] = {}
    rules = {**_COMMON_RULES, **_EVENT_RULES.get(event_type, {})}
    for name, types in EVENT_FIELDS.get(event_type, {}).items():
        names = {_JSON_TYPES[t] for t in types}
        if "number" in names:
            names.discard("integer")
        kinds = sorted(names) + ([] if name in required else ["null"])
        field: Schema = {"type": kinds[0] if len(kinds) == 1 else kinds}
        if name in required and "string" in names:
            field["minLength"] = 1
        field.update(rules.get(name, {}))
        if "enum" in field:
            field = {"enum": [*field["enum"], *([] if name in required else [None])]}
        properties[name] = field
    return {"type": "object", "description": f"The data of `{event_type}`.", "required": list(required),
            "properties": properties}


def cloud_event_body(events: Mapping[str, Schema] | None, *,
                     extensions: Mapping[str, Schema] | None = None) -> dict[str, Any]:
    """A CloudEvent 1.0 of one of `events` (each type a receiver consumes → the schema of its data; None: any type,
    any data) in binary mode (the `ce-*` headers of `cloud_event_headers`, the data as the JSON body) or structured
    mode (the whole event as the body)."""
    kinds = [(_ATTRIBUTE, {"type": "object"})] if events is None else [({"const": k}, d) for k, d in events.items()]
    structured = [
        {
            "type": "object",
            "required": ["specversion", "type", "source", "id", *(["data"] if data.get("required") else [])],
            "properties": {
                "specversion": {"const": "1.0"},
                "type": kind,
                "source": _ATTRIBUTE,
                "id": _ATTRIBUTE,
                "time": {"type": "string", "format": "date-time"},
                "datacontenttype": {"const": "application/json"},
                "data": data,
                **(extensions or {}),
            },
            # Any other member is an extension attribute (CloudEvents 1.0: a lower-case name, a scalar value).
            "propertyNames": {"pattern": "^[a-z0-9]{1,20}$"},
            "additionalProperties": {"type": ["string", "integer", "boolean"]},
        }
        for kind, data in kinds
    ]
    datas = [data for _, data in kinds]
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {**(datas[0] if len(datas) == 1 else {"anyOf": datas}),
                                            "description": "The event's data (binary mode)."}},
            "application/cloudevents+json": {"schema": {
                **(structured[0] if len(structured) == 1 else {"anyOf": structured}),
                "description": "The whole event (structured mode); its attributes win over any `ce-*` header.",
            }},
        },
    }


def cloud_event_headers(events: Mapping[str, Schema] | None, *,
                        extensions: Mapping[str, Schema] | None = None) -> list[dict[str, Any]]:
    """The binary mode's attributes as `ce-*` headers (as Knative delivers); ignored in structured mode."""
    kind = _ATTRIBUTE if events is None else {"enum": list(events)}
    attributes = {"specversion": {"const": "1.0"}, "type": kind, "source": _ATTRIBUTE, "id": _ATTRIBUTE}
    headers = [
        {"name": f"ce-{name}", "in": "header", "required": True, "schema": schema,
         "description": "Binary mode (ignored when the body is application/cloudevents+json)."}
        for name, schema in attributes.items()
    ]
    headers += [{"name": f"ce-{name}", "in": "header", "required": False, "schema": schema,
                 "description": "A CloudEvent extension attribute (binary mode)."}
                for name, schema in (extensions or {}).items()]
    return headers


def standard_paths(*, model: bool) -> dict[str, Any]:
    """`GET /healthz`, `GET /metrics` and `GET /openapi.json`, which every function serves."""
    healthz: dict[str, Any] = {"200": {"description": "Ready.", "content": json_content(ref("Status"))}}
    if model:
        healthz.update(errors(503))
    return {
        "/healthz": {"get": operation("Readiness (ready only after the model is loaded)", healthz)},
        "/metrics": {
            "get": operation(
                "Prometheus metrics",
                {"200": {"description": "Prometheus text.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            )
        },
        "/openapi.json": {
            "get": operation(
                "This OpenAPI document",
                {"200": {"description": "OpenAPI 3.1.", "content": json_content({"type": "object"})}},
            )
        },
    }
