"""OpenAPI 3.1 documents of the HTTP functions, served by each at `GET /openapi.json` (no token).

`document("predict")` builds a function's document from its routes (`shared.openapi.paths`) and the shared
schemas (`shared.openapi.components`); `route("predict")` is the handler a function puts in its route table.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import flask

from shared.http import Handler
from shared.openapi.components import SCHEMAS, SECURITY_SCHEMES, standard_paths
from shared.openapi.paths import FUNCTION_PATHS, MODEL_FUNCTIONS

__all__ = ["FUNCTIONS", "document", "route", "routes"]

FUNCTIONS = tuple(FUNCTION_PATHS)
OPENAPI_VERSION = "3.1.0"


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    return f"{method}_{words}"


@cache
def document(function: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `function` (a key of FUNCTIONS); KeyError for another name."""
    paths = {**FUNCTION_PATHS[function](), **standard_paths(model=function in MODEL_FUNCTIONS)}
    for path, item in paths.items():
        for method, op in item.items():
            if method != "parameters":
                op.setdefault("operationId", _operation_id(method, path))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": f"xray-triage {function}",
            "version": "1",
            "description": "Design §5. Errors are JSON `{\"error\": {\"code\", \"message\"}}` (the /v2 routes: "
            "`{\"error\": \"<message>\"}`, as the Open Inference Protocol says).",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }


@cache
def _body(function: str) -> bytes:
    return json.dumps(document(function)).encode()


def route(function: str) -> Handler:
    """The `GET /openapi.json` handler of `function` (the document is built once per process)."""
    _body(function)  # an unknown function fails at import, not on the first request

    def openapi_json(request: flask.Request) -> flask.Response:
        return flask.Response(_body(function), status=200, mimetype="application/json")

    return openapi_json


@cache
def routes(function: str) -> dict[str, Handler]:
    """`{"GET /openapi.json": route(function)}`, to spread into a function's route table."""
    return {"GET /openapi.json": route(function)}
