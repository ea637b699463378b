"""preprocess: POST / an image → validated, DICOM de-identified, normalized image.

Answers JSON {format, shape, deidentified, sha256, stats, stored} or, with `Accept: image/png`, the normalized
gray image as PNG at its own size. `?store=true` writes the de-identified bytes to `inference-inputs/<sha256>.<ext>`
(which triggers inference there); nothing is stored before de-identification succeeded.
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, imaging, runtime
from shared.config import Settings
from shared.security import IPNetwork, parse_networks

SETTINGS = Settings.from_env()
# Empty unless URL_ALLOW_NETWORKS is set (local stack and tests only): networks a {"url"} may point into.
URL_ALLOW_NETWORKS: tuple[IPNetwork, ...] = parse_networks(SETTINGS.url_allow_networks)
INPUT_BUCKET = "inference-inputs"
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "dicom": "dcm"}


def _store(upload: runtime.CleanUpload) -> dict[str, str]:
    from shared.storage import Storage

    key = f"{upload.sha256}.{_EXTENSIONS[upload.format]}"
    Storage.from_settings(SETTINGS).put_bytes(INPUT_BUCKET, key, upload.data, content_type=upload.content_type)
    return {"bucket": INPUT_BUCKET, "key": key}


def _preprocess(request: flask.Request) -> flask.Response:
    data, content_type = http.read_image(request, SETTINGS, allow_networks=URL_ALLOW_NETWORKS)
    upload = runtime.clean_upload(data, content_type, max_pixels=SETTINGS.max_pixels)
    stored = _store(upload) if request.args.get("store", "").lower() in ("1", "true", "yes") else None
    if http.wants_png(request):
        return flask.Response(imaging.encode_png(upload.image), mimetype="image/png")
    return http.json_response({**upload.to_json(), "stored": stored})


@functions_framework.http
def preprocess(request: flask.Request) -> flask.Response:
    return http.serve(request, {"POST /": _preprocess}, function="preprocess")
