"""dicomweb: DICOMweb STOW-RS (PS3.18 §10.5) — `POST /studies` and `POST /studies/{study}` with a
`multipart/related; type="application/dicom"` body and an API token (`triage tokens add NAME --functions dicomweb`).

Each chest radiograph instance (CR, DX) goes to inference-inputs as the C-STORE receiver's do, where the upload
path starts ingest. Answers the Store Instances Response (`application/dicom+json`): 200 all stored, 202 some,
409 none (503 when storage failed), 400 a malformed body or study UID, 413 a body over MAX_INPUT_BYTES (116 MB,
not MAX_BODY_BYTES: a study's uncompressed instances pass 20 MB) or over 1000 parts, 415 another media type,
401 / 403 for the token (design §5 JSON errors). See `shared.pacs.stow`.
"""

from __future__ import annotations

import json

import flask
import functions_framework

from shared import http, openapi
from shared.api_auth import ApiAuth
from shared.config import Settings
from shared.pacs.stow import DICOM_JSON, multipart_boundary, split_parts, store_parts, study_uid
from shared.route_templates import path_values
from shared.storage import Storage

SETTINGS = Settings.from_env()
STORAGE = Storage.from_settings(SETTINGS)
AUTH = ApiAuth.from_settings(SETTINGS)
STUDY_ROUTE = "/studies/{study}"


@AUTH.require("dicomweb")
def _store(request: flask.Request) -> flask.Response:
    values = path_values(STUDY_ROUTE, request.path)
    study = study_uid(values["study"]) if values else None
    boundary = multipart_boundary(request.headers.get("Content-Type"))  # 415 before the body is read
    parts = split_parts(http.read_body(request, SETTINGS.max_input_bytes), boundary)  # a study: MAX_INPUT_BYTES
    result = store_parts(STORAGE, parts, study=study, max_pixels=SETTINGS.max_pixels)
    body = json.dumps(result.to_dicom_json(request.host_url.rstrip("/"), study))
    return flask.Response(body, status=result.status, mimetype=DICOM_JSON)


@functions_framework.http
def dicomweb(request: flask.Request) -> flask.Response:
    routes = {"POST /studies": _store, f"POST {STUDY_ROUTE}": _store, **openapi.routes("dicomweb")}
    return http.serve(request, routes, function="dicomweb")
