"""The review function over HTTP: the page, sign-in / sign-out, the worklist and case JSON, images, labels.

Routes (each also under `/review/...`, the path the gateway and the README use):
`GET /` the page · `GET /api/session` (who is signed in, the CSRF token) · `POST /api/session` sign in with
`{"token"}` · `POST /api/signout` · `GET /api/worklist` · `GET /api/case?key=` · `GET /api/image?key=` ·
`GET /api/heatmap?key=` · `POST /api/label` `{"key", "label"}`. Reading needs a session cookie or
`Authorization: Bearer <reviewer token>`; every POST with a session needs the CSRF header. Every answer carries
a Content-Security-Policy (the page's script and style are allowed by their hashes, nothing else inline).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import flask

from shared import http
from shared.config import Settings
from shared.errors import Unauthorized
from shared.events import Publisher
from shared.payloads import parse_json
from shared.review.labels import MAX_LABEL_BODY_BYTES, parse_label, submit_label
from shared.review.sessions import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SESSION_COOKIE,
    FailureLimiter,
    ReviewerKeys,
    Session,
    SessionCodec,
)
from shared.review.store import CaseStore, check_case_key
from shared.review.worklist import WorklistFilter, counts, worklist

__all__ = ["MOUNT", "Page", "ReviewApp"]

MOUNT = "/review"  # the same routes answer with and without this prefix
_SIGN_IN_BODY_BYTES = 4 * 1024


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@dataclass(frozen=True)
class Page:
    """The page: index.html with review.css and review.js inlined, and the CSP that admits exactly those."""

    html: bytes
    csp: str

    @classmethod
    def from_dir(cls, directory: Path) -> Page:
        style = (directory / "review.css").read_text()
        script = (directory / "review.js").read_text()
        html = (directory / "index.html").read_text()
        html = html.replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
        csp = (f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; "
               "img-src 'self'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
        return cls(html.encode(), csp)


def _client(request: flask.Request) -> str:
    """The caller as the nearest proxy saw it (the last X-Forwarded-For hop), for the sign-in rate limit."""
    forwarded = [hop.strip() for hop in request.headers.get("X-Forwarded-For", "").split(",") if hop.strip()]
    return forwarded[-1] if forwarded else (request.remote_addr or "unknown")


def _https(request: flask.Request) -> bool:
    return request.scheme == "https" or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


class ReviewApp:
    """Everything the review function serves, built once per process from its settings."""

    def __init__(self, settings: Settings, storage_factory: Callable[[], CaseStore], publisher: Publisher,
                 page: Page, *, limiter: FailureLimiter | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.keys = ReviewerKeys(settings.reviewer_tokens)
        self.sessions = SessionCodec(self.keys.signing_key, max_age_s=settings.review_session_hours * 3600)
        self.max_wait_s = settings.review_max_wait_min * 60
        self.max_pixels = settings.max_pixels
        self.limiter = limiter or FailureLimiter()
        self.publisher = publisher
        self.page = page
        self.now = now
        self._store_factory = storage_factory
        self._store: CaseStore | None = None
        routes: dict[str, http.Handler] = {
            "GET /": self._page,
            "GET /api/session": self._session_info,
            "POST /api/session": self._sign_in,
            "POST /api/signout": self._sign_out,
            "GET /api/worklist": self._worklist,
            "GET /api/case": self._case,
            "GET /api/image": self._image,
            "GET /api/heatmap": self._heatmap,
            "POST /api/label": self._label,
        }
        self.routes = dict(routes)
        for route, handler in routes.items():
            verb, path = route.split(" ", 1)
            self.routes[f"{verb} {MOUNT}{'' if path == '/' else path}"] = handler

    @property
    def store(self) -> CaseStore:
        if self._store is None:  # the S3 client is built on the first request, off cold start
            self._store = self._store_factory()
        return self._store

    def handle(self, request: flask.Request) -> flask.Response:
        response = http.serve(request, self.routes, function="review")
        headers = response.headers
        headers["Content-Security-Policy"] = self.page.csp
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Frame-Options"] = "DENY"
        headers.setdefault("Cache-Control", "no-store")
        return response

    # -- who is asking -----------------------------------------------------------------------------------------
    def _session(self, request: flask.Request) -> Session | None:
        return self.sessions.read(request.cookies.get(SESSION_COOKIE))

    def _reader(self, request: flask.Request) -> tuple[str, bool]:
        """(reviewer, by bearer token) of a request; 401 without a session or token, 429 after repeated failures."""
        if request.headers.get("Authorization"):
            client = _client(request)
            self.limiter.check(client)
            try:
                name = self.keys.bearer_name(request.headers.get("Authorization"))
            except Unauthorized:
                self.limiter.failed(client)
                raise
            assert name is not None
            return name, True
        session = self._session(request)
        if session is None:
            raise Unauthorized("sign in first: no session (or it expired), and no 'Authorization: Bearer' token")
        return session.reviewer, False

    def _check_csrf(self, request: flask.Request) -> None:
        self.sessions.check_csrf(request.cookies.get(CSRF_COOKIE), request.headers.get(CSRF_HEADER))

    def _cookie(self, response: flask.Response, request: flask.Request, name: str, value: str,
                max_age: int | None) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="Strict",
                            secure=_https(request))

    # -- handlers ----------------------------------------------------------------------------------------------
    def _page(self, request: flask.Request) -> flask.Response:
        return flask.Response(self.page.html, status=200, mimetype="text/html")

    def _session_info(self, request: flask.Request) -> flask.Response:
        nonce = request.cookies.get(CSRF_COOKIE) or self.sessions.new_nonce()
        session = self._session(request)
        response = http.json_response({"signed_in": session is not None,
                                       "reviewer": session.reviewer if session else None,
                                       "csrf": self.sessions.csrf_token(nonce)})
        if not request.cookies.get(CSRF_COOKIE):
            self._cookie(response, request, CSRF_COOKIE, nonce, None)
        return response

    def _sign_in(self, request: flask.Request) -> flask.Response:
        self._check_csrf(request)
        client = _client(request)
        self.limiter.check(client)
        payload = parse_json(http.read_body(request, _SIGN_IN_BODY_BYTES))
        token = payload.get("token") if isinstance(payload, dict) else None
        try:
            reviewer = self.keys.name_of(token)
        except Unauthorized:
            self.limiter.failed(client)
            raise
        _, cookie = self.sessions.issue(reviewer)
        response = http.json_response({"signed_in": True, "reviewer": reviewer})
        self._cookie(response, request, SESSION_COOKIE, cookie, self.sessions.max_age_s)
        return response

    def _sign_out(self, request: flask.Request) -> flask.Response:
        self._check_csrf(request)
        session = self._session(request)
        if session is not None:
            self.sessions.revoke(session)
        response = http.json_response({"signed_in": False})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict", secure=_https(request))
        return response

    def _worklist(self, request: flask.Request) -> flask.Response:
        self._reader(request)
        keep = WorklistFilter.parse(request.args.to_dict())
        now = self.now()
        cases = self.store.cases()
        items = [case.to_json(now, self.max_wait_s) for case in worklist(cases, now=now, max_wait_s=self.max_wait_s,
                                                                          keep=keep)]
        return http.json_response({"items": items, "counts": counts(cases, now=now, max_wait_s=self.max_wait_s),
                                   "max_wait_min": self.max_wait_s / 60,
                                   "models": sorted({str(c.model["version"]) for c in cases
                                                     if c.model.get("version") is not None})})

    def _key(self, request: flask.Request) -> str:
        return check_case_key(request.args.get("key"))

    def _case(self, request: flask.Request) -> flask.Response:
        self._reader(request)
        return http.json_response(self.store.case(self._key(request)).to_json(self.now(), self.max_wait_s))

    def _png(self, data: bytes) -> flask.Response:
        response = flask.Response(data, status=200, mimetype="image/png")
        response.headers["Cache-Control"] = "private, max-age=300"
        return response

    def _image(self, request: flask.Request) -> flask.Response:
        self._reader(request)
        return self._png(self.store.image_png(self._key(request), max_pixels=self.max_pixels))

    def _heatmap(self, request: flask.Request) -> flask.Response:
        self._reader(request)
        return self._png(self.store.heatmap_png(self._key(request)))

    def _label(self, request: flask.Request) -> flask.Response:
        reviewer, by_bearer = self._reader(request)
        if not by_bearer:  # a bearer token is no ambient credential: a cross-site page cannot send it
            self._check_csrf(request)
        label = parse_label(http.read_body(request, MAX_LABEL_BODY_BYTES))
        return http.json_response(submit_label(self.store, self.publisher, label, reviewer=reviewer))
