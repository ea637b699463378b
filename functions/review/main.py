"""review: the radiologist's worklist — `GET /review` (the page), its JSON API under `/review/api/`.

Sign in with a reviewer token (REVIEWER_TOKENS) for a session cookie, or send `Authorization: Bearer <token>`.
`GET /review/api/worklist` answers `{"items": [...], "counts": {...}}` in display order (urgent first; see
`shared.review.worklist`); a label (`POST /review/api/label`) takes the feedback path and emits
`triage.feedback.received` to K_SINK. Images are streamed from the private buckets as PNG.
"""

from __future__ import annotations

from pathlib import Path

import flask
import functions_framework

from shared import openapi
from shared.config import Settings
from shared.events import publisher_from_settings
from shared.review import CaseStore, Page, ReviewApp
from shared.storage import Storage

SETTINGS = Settings.from_env()
APP = ReviewApp(SETTINGS, lambda: CaseStore(Storage.from_settings(SETTINGS)), publisher_from_settings(SETTINGS),
                Page.from_dir(Path(__file__).with_name("page")))
APP.routes.update({f"GET {prefix}/openapi.json": openapi.route("review") for prefix in ("", "/review")})


@functions_framework.http
def review(request: flask.Request) -> flask.Response:
    return APP.handle(request)
