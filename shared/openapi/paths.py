"""The routes of each HTTP function as OpenAPI 3.1 path items (design §5), beside what every function serves."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shared.names import (
    FEEDBACK_RECEIVED,
    HEATMAP_REQUESTED,
    MODEL_REGISTERED,
    NOTIFYING_BUCKETS,
    OBJECT_CREATED,
    PING,
    PREDICTION_CREATED,
    REQUEST_ID,
)
from shared.openapi.components import (
    cloud_event_body,
    cloud_event_headers,
    errors,
    event_data,
    image_body,
    json_content,
    oip_errors,
    operation,
    ref,
)

__all__ = ["FUNCTION_PATHS", "MODEL_FUNCTIONS"]

Paths = dict[str, Any]

MODEL_FUNCTIONS = frozenset({"predict", "explain", "ingest"})  # /healthz waits for the model (503 before)
_API = [{"apiToken": []}]
_IMAGE_ERRORS = (400, 401, 403, 413, 415, 422, 429, 503)
_EVENT_ERRORS = (400, 413, 422, 502, 503)
_PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
# A model name is a plain token (control characters in a path never reach the function: see the lead's note).
_MODEL = {"name": "model", "in": "path", "required": True, "example": "xray-vit",
          "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}}


def _ok(description: str, schema: dict[str, Any] | None = None, **content: Any) -> dict[str, Any]:
    return {"200": {"description": description, "content": {**json_content(schema or {"type": "object"}), **content}}}


def _tensor(*, data: bool) -> dict[str, Any]:
    """A tensor (with `data`) or a tensor's metadata (without: -1 marks a variable dimension)."""
    properties: dict[str, Any] = {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0 if data else -1}},
        "parameters": {"type": "object"},
    }
    if data:
        properties["data"] = {"type": "array"}
    return {"type": "object", "required": ["name", "datatype", "shape"], "properties": properties}


def _predict() -> Paths:
    return {
        "/": {
            "post": operation(
                "Triage one chest X-ray",
                {**_ok("The prediction.", ref("Prediction")), **errors(*_IMAGE_ERRORS)},
                requestBody=image_body(),
                security=_API,
            )
        },
        **_inference_protocol(),
    }


def _inference_protocol() -> Paths:
    """The Open Inference Protocol v2 (KServe) routes of predict (shared.inference_protocol)."""
    infer_request = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": _tensor(data=True)},
            "outputs": {
                "type": "array",
                "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
            },
        },
    }
    infer_response = {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": _tensor(data=True)},
        },
    }
    metadata = {
        "type": "object",
        "required": ["name", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _tensor(data=False)},
            "outputs": {"type": "array", "items": _tensor(data=False)},
        },
    }
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    health = {"200": {"description": "True.", "content": json_content({"type": "object"})}}
    return {
        "/v2/health/live": {"get": operation("OIP server live", health)},
        "/v2/health/ready": {"get": operation("OIP server ready (the model is loaded)", {**health, **oip_errors(503)})},
        "/v2": {
            "get": operation(
                "OIP server metadata",
                {**_ok("Server metadata."), **oip_errors(401, 403, 429, 503)},
                security=_API,
            )
        },
        "/v2/models/{model}": {
            "parameters": [_MODEL],
            "get": operation(
                "OIP model metadata",
                {**_ok("Model metadata.", metadata), **oip_errors(401, 403, 404, 429, 503)},
                security=_API,
            ),
        },
        "/v2/models/{model}/ready": {
            "parameters": [_MODEL],
            "get": operation("OIP model ready", {**health, **oip_errors(404, 503)}),
        },
        "/v2/models/{model}/infer": {
            "parameters": [_MODEL],
            "post": operation(
                "OIP inference on preprocessed images",
                {
                    **_ok("The outputs (binary tensor data after the JSON header when asked).", infer_response,
                          **binary),
                    **oip_errors(400, 401, 403, 404, 413, 429, 503),
                },
                description=(
                    "Input `image` FP32 `[N, 1, S, S]`, (x - 0.5) / 0.5 of a [0, 1] image, as JSON `data` or binary "
                    "tensor data (`Inference-Header-Content-Length`). Outputs: probability, logits, label, urgent."
                ),
                requestBody={"required": True, "content": json_content(infer_request)},
                security=_API,
            ),
        },
    }


def _explain() -> Paths:
    method = {"name": "method", "in": "query", "schema": {"enum": ["rollout", "occlusion"]}}
    explanation = {
        "allOf": [ref("Prediction")],
        "type": "object",
        "required": ["method", "heatmap_size", "heatmap_png"],
        "properties": {
            "method": {"type": "string"},
            # null (both) when the input is not assessable: no finding, no heatmap
            "heatmap_size": {"type": ["array", "null"], "items": {"type": "integer"}},
            "heatmap_png": {"type": ["string", "null"], "contentEncoding": "base64"},
        },
    }
    return {
        "/": {
            "post": operation(
                "Prediction with a heatmap (JSON with base64 PNG, or image/png with Accept: image/png)",
                {**_ok("The explanation.", explanation, **_PNG), **errors(*_IMAGE_ERRORS)},
                parameters=[method],
                requestBody=image_body(),
                security=_API,
            )
        }
    }


def _feedback() -> Paths:
    body = {
        "type": "object",
        "required": ["request_id", "label"],
        "properties": {
            "request_id": {"type": "string", "pattern": REQUEST_ID.pattern},
            "label": {"enum": ["pneumonia", "normal"]},
            "reviewer": {"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$"},
        },
    }
    return {
        "/": {
            "post": operation(
                "A radiologist's label for a request",
                {**_ok("Stored, updated or unchanged.", ref("Status")),
                 **errors(400, 401, 403, 404, 413, 422, 502, 503)},
                requestBody={"required": True, "content": json_content(body)},
                security=[{"reviewerToken": []}],
            )
        }
    }


def _review() -> Paths:
    reader = [{"reviewerToken": []}, {"reviewSession": []}]
    key = [{"name": "key", "in": "query", "required": True, "description": "An input key (at most 1024 bytes UTF-8).",
            "schema": {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": "^[^\\x00-\\x1f\\x7f]+$"}}]
    failures = errors(400, 401, 403, 404, 422, 429, 503)
    return {
        "/review": {
            "get": operation("The worklist page", {"200": {"description": "HTML.", "content": {"text/html": {}}}})
        },
        "/review/api/session": {
            "get": operation("Who is signed in", _ok("Session.")),
            "post": operation(
                "Sign in with a reviewer token (sets the session cookie; needs the CSRF cookie and header)",
                {**_ok("Signed in."), **errors(400, 401, 403, 413, 422, 429)},
                requestBody={"required": True, "content": json_content(
                    {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}})},
            ),
        },
        "/review/api/signout": {"post": operation("Sign out", {**_ok("Signed out."), **errors(403)})},
        "/review/api/worklist": {
            "get": operation(
                "The worklist in display order",
                {**_ok("Items and counts.", {"type": "object", "required": ["items"],
                                             "properties": {"items": {"type": "array"}}}), **failures},
                security=reader,
            )
        },
        "/review/api/case": {
            "get": operation("One case", {**_ok("The case."), **failures}, parameters=key, security=reader)
        },
        "/review/api/image": {
            "get": operation("A case's image as PNG", {"200": {"description": "PNG.", "content": _PNG}, **failures},
                             parameters=key, security=reader)
        },
        "/review/api/heatmap": {
            "get": operation("A case's heatmap as PNG", {"200": {"description": "PNG.", "content": _PNG}, **failures},
                             parameters=key, security=reader)
        },
        "/review/api/label": {
            "post": operation(
                "Label a case (the feedback path)",
                {**_ok("Stored."), **errors(400, 401, 403, 404, 409, 413, 422, 429, 502, 503)},
                requestBody={"required": True, "content": json_content({
                    "type": "object", "required": ["key", "label"],
                    "properties": {"key": key[0]["schema"], "label": {"enum": ["pneumonia", "normal"]}}})},
                security=reader,
            )
        },
    }


def _preprocess() -> Paths:
    store = {"name": "store", "in": "query", "schema": {"type": "string", "enum": ["true", "false", "1", "0"]}}
    return {
        "/": {
            "post": operation(
                "Validate, de-identify and normalize an image (JSON, or image/png with Accept: image/png)",
                {**_ok("Format, shape, stats and where it was stored.", **_PNG),
                 **errors(400, 413, 415, 422, 502, 503)},
                parameters=[store],
                requestBody=image_body(),
            )
        }
    }


def _minio_source() -> Paths:
    return {
        "/": {
            "post": operation(
                "A MinIO webhook notification → one io.minio.object.created CloudEvent per object",
                {**_ok("Forwarded."), **errors(400, 401, 403, 413, 422, 502, 503)},
                requestBody={"required": True, "content": json_content(ref("Notification"))},
                security=[{"webhookToken": []}],
            )
        }
    }


def _dicomweb() -> Paths:
    stored = {"description": "Store Instances Response (PS3.18).",
              "content": {"application/dicom+json": {"schema": {"type": "object"}}}}
    store = operation(
        "STOW-RS: store DICOM instances (multipart/related; type=application/dicom)",
        {"200": stored, "202": {**stored, "description": "Some stored."},
         "409": {**stored, "description": "None stored."}, **errors(400, 401, 403, 413, 415, 429, 503)},
        requestBody={"required": True, "content": {"multipart/related": {"schema": {
            "type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"},
            "description": 'The parts, each one DICOM instance (`Content-Type: multipart/related; '
                           'type="application/dicom"; boundary=...`).'}}}},
        security=_API,
    )
    study = {"name": "study", "in": "path", "required": True,
             "schema": {"type": "string", "maxLength": 64, "pattern": r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"}}
    return {"/studies": {"post": store}, "/studies/{study}": {"parameters": [study], "post": dict(store)}}


_REPLY = ", or (without K_SINK) a Knative reply event: its `ce-*` headers, its data as the body."
_REPLY_HEADERS = {f"ce-{name}": {"schema": {"type": "string"}, "description": "Set on a reply event."}
                  for name in ("specversion", "type", "source", "id")}


def _event_function(summary: str, types: Mapping[str, Sequence[str]] | None, *, ignores_others: bool = False,
                    extensions: Mapping[str, Any] | None = None, replies: bool = False) -> Callable[[], Paths]:
    """A CloudEvent receiver at POST /: `types` maps each event type it consumes to the data fields it requires
    (None: any type, any data). Another type is a 400, or 200 `ignored` with `ignores_others`. `extensions`: the
    extension attributes it reads (name → schema); `replies`: it may answer with a Knative reply event."""
    note = "Any event type." if types is None else (
        f"Event types: {', '.join(types)}; another type is "
        + ("answered 200 `ignored`." if ignores_others else "a 400."))

    def paths() -> Paths:
        events = None if types is None else {name: event_data(name, required) for name, required in types.items()}
        return {
            "/": {
                "post": operation(
                    summary,
                    {
                        "200": {"description": "The outcome" + (_REPLY if replies else "."),
                                "content": json_content(ref("Status")),
                                **({"headers": _REPLY_HEADERS} if replies else {})},
                        **errors(*_EVENT_ERRORS),
                    },
                    parameters=cloud_event_headers(events, extensions=extensions),
                    requestBody=cloud_event_body(events, extensions=extensions),
                    description=f"A CloudEvent 1.0, binary or structured mode. {note}",
                )
            }
        }

    return paths


FUNCTION_PATHS: dict[str, Callable[[], Paths]] = {
    "predict": _predict,
    "explain": _explain,
    "feedback": _feedback,
    "review": _review,
    "preprocess": _preprocess,
    "minio_source": _minio_source,
    "ingest": _event_function("io.minio.object.created in inference-inputs → the flag (label, probability, "
                              "urgent), then triage.heatmap.requested → the heatmap",
                              {OBJECT_CREATED: ("bucket", "key", "etag"), HEATMAP_REQUESTED: ("bucket", "key", "etag")},
                              replies=True),
    "retrain": _event_function("Feedback or new raw data → maybe launch training",
                               {FEEDBACK_RECEIVED: ("request_id",), OBJECT_CREATED: ("key",)}, ignores_others=True,
                               extensions={"bucket": {"enum": list(NOTIFYING_BUCKETS)}}),
    "monitor": _event_function("Predictions, feedback and the ping → drift and live accuracy",
                               {PREDICTION_CREATED: ("probability", "label"), FEEDBACK_RECEIVED: ("request_id",),
                                PING: ()}),
    "canary": _event_function("model.registered starts a canary; each ping steps it",
                              {MODEL_REGISTERED: ("version",), PING: ()}, ignores_others=True),
    "dead_letter": _event_function("An undeliverable CloudEvent → the dead-letter bucket", None),
    "dicomweb": _dicomweb,
    "export": _event_function("prediction.created for a DICOM input → SR and secondary capture on the PACS",
                              {PREDICTION_CREATED: ("bucket", "key", "etag", "status", "label", "probability",
                                                    "threshold")}),
}
