"""The pieces every function's OpenAPI document shares: schemas, request bodies and the error responses.

Schemas say what the code answers (design §5) and leave room for additive fields (`additionalProperties` is
open), so a new field does not break a client that validates against the document.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SCHEMAS",
    "SECURITY_SCHEMES",
    "cloud_event_body",
    "cloud_event_headers",
    "errors",
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
        "required": ["request_id", "label", "probability", "threshold", "urgent", "model", "timings_ms"],
        "properties": {
            "request_id": {"type": "string"},
            "assessable": {"type": "boolean"},
            "reason": {"type": "string"},
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
        "description": "A MinIO / S3 event notification (`Records` of `s3:ObjectCreated:*`).",
        "properties": {"Records": {"type": "array", "items": {"type": "object"}}},
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


def cloud_event_body() -> dict[str, Any]:
    """A CloudEvent 1.0 in binary mode (`ce-*` headers, JSON data) or structured mode."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "description": "The event's data (binary mode)."}},
            "application/cloudevents+json": {
                "schema": {
                    "type": "object",
                    "required": ["specversion", "type", "source", "id"],
                    "properties": {
                        "specversion": {"const": "1.0"},
                        "type": {"type": "string"},
                        "source": {"type": "string"},
                        "id": {"type": "string"},
                        "data": {},
                    },
                }
            },
        },
    }


def cloud_event_headers() -> list[dict[str, Any]]:
    return [
        {"name": f"ce-{name}", "in": "header", "required": False, "schema": {"type": "string"}}
        for name in ("specversion", "type", "source", "id")
    ]


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
