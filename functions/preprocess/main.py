"""preprocess: POST / an image → validated, DICOM de-identified, normalized image.

Answers JSON {format, shape, deidentified, sha256, stats, stored} or, with `Accept: image/png`, the normalized
gray image as PNG at its own size. `?store=true` writes the de-identified bytes to `inference-inputs/<sha256>.<ext>`
(which triggers inference there); nothing is stored before de-identification succeeded. DICOM needs DEID_SECRET
(503 without it); BurnedInAnnotation YES is refused (400) unless BURNED_IN_ANNOTATION=mark. The image is reported
at its working size (at most 1024 pixels on the longer side).
"""

from __future__ import annotations

import flask
import functions_framework

from shared import http, imaging, openapi
from shared.config import Settings
from shared.security import IPNetwork, parse_networks
from shared.uploads import clean_upload, store_upload

SETTINGS = Settings.from_env()
# Empty unless URL_ALLOW_NETWORKS is set (local stack and tests only): networks a {"url"} may point into.
URL_ALLOW_NETWORKS: tuple[IPNetwork, ...] = parse_networks(SETTINGS.url_allow_networks)


def _preprocess(request: flask.Request) -> flask.Response:
    data, content_type = http.read_image(request, SETTINGS, allow_networks=URL_ALLOW_NETWORKS)
    upload = clean_upload(data, content_type, max_pixels=SETTINGS.max_pixels, deid_secret=SETTINGS.deid_secret,
                          burned_in=SETTINGS.burned_in_annotation)
    if request.args.get("store", "").lower() in ("1", "true", "yes"):
        from shared.storage import Storage  # only storing requests pay for boto3

        stored = store_upload(Storage.from_settings(SETTINGS), upload)
    else:
        stored = None
    if http.wants_png(request):
        return flask.Response(imaging.encode_png(upload.image), mimetype="image/png")
    return http.json_response({**upload.to_json(), "stored": stored})


@functions_framework.http
def preprocess(request: flask.Request) -> flask.Response:
    return http.serve(request, {"POST /": _preprocess, **openapi.routes("preprocess")}, function="preprocess")
