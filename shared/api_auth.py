"""Who may call predict and explain (design §5): an API token per client system, checked on every request.

`ApiAuth.require("predict")` decorates any route handler (`POST /` today; the OIP `/v2/...` and `/openapi.json`
routes take the same decorator); `GET /healthz` and `GET /metrics` are served by `shared.http` outside it, so
health stays open and metrics are scraped inside the cluster (Prometheus reaches them; Kourier publishes only
the function's routes). The check, in order:

- no `Authorization: Bearer <token>`, or a token that is in no entry → 401 (`WWW-Authenticate: Bearer`);
- a revoked token, or one not allowed this function → 403;
- over its rate (a token bucket per token: API_RATE_PER_S, burst API_RATE_BURST, or the entry's own) → 429
  with `Retry-After`.

The table (`shared.api_tokens`, hashes only) is re-read from its store when it changed, checked at most every
API_TOKENS_REFRESH_S seconds, so `triage tokens add / revoke / rotate` take effect without a restart. A store
that cannot be read keeps the last good table; with none yet, every call is refused with 503 (our fault, not
the caller's). Log lines name the client, never the token.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable

import flask

from shared import http
from shared.api_tokens import TokenEntry, TokenTable
from shared.config import Settings
from shared.errors import Forbidden, TriageError, Unauthorized, UserError
from shared.rate_limit import TokenBucketLimiter
from shared.security import bearer_token
from shared.storage import Storage
from shared.token_store import TokenStore, token_store

__all__ = ["ApiAuth", "AuthUnavailable", "RateLimited", "TokenCache"]

log = logging.getLogger(__name__)

Handler = Callable[[flask.Request], flask.Response]


class RateLimited(UserError):
    """Over the token's rate: 429, with the seconds until the next request is allowed."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AuthUnavailable(TriageError):
    """The token table has never been readable in this process: 503, the caller may retry."""

    status = 503
    code = "auth_unavailable"


class TokenCache:
    """The current token table, re-read from `store` when its version changed, looked at every `refresh_s`."""

    def __init__(self, store: TokenStore, *, refresh_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.clock = clock
        self._table: TokenTable | None = None
        self._version: str | None = None
        self._checked_at = -math.inf
        self._lock = threading.Lock()

    def table(self) -> TokenTable:
        if self.clock() - self._checked_at >= self.refresh_s:
            with self._lock:
                if self.clock() - self._checked_at >= self.refresh_s:
                    self._refresh()
        if self._table is None:
            raise AuthUnavailable("authorization: the API token table cannot be read; retry later")
        return self._table

    def _refresh(self) -> None:
        try:
            version = self.store.version()
            if self._table is None or version != self._version:
                table = TokenTable.parse(self.store.read()) if version is not None else TokenTable()
                if version is None:
                    log.warning("no API token table at %s: every call is refused until one is written", self.store.uri)
                self._table, self._version = table, version
        except Exception as exc:  # keep the last good table; the next refresh tries again
            log.error("cannot read the API token table at %s (%s); %s", self.store.uri, type(exc).__name__,
                      "keeping the last one" if self._table is not None else "refusing every call")
        self._checked_at = self.clock()


class ApiAuth:
    """The API token check of predict and explain, with a per-token rate limit."""

    def __init__(self, cache: TokenCache, *, rate_per_s: float, burst: int,
                 limiter: TokenBucketLimiter | None = None) -> None:
        self.cache = cache
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.limiter = limiter or TokenBucketLimiter()

    @classmethod
    def from_settings(cls, settings: Settings, *, storage: Callable[[], Storage] | None = None) -> ApiAuth:
        store = token_store(settings.api_tokens_uri, storage or (lambda: Storage.from_settings(settings)))
        return cls(TokenCache(store, refresh_s=settings.api_tokens_refresh_s),
                   rate_per_s=settings.api_rate_per_s, burst=settings.api_rate_burst)

    def check(self, authorization: str | None, function: str) -> TokenEntry:
        """The caller's entry; raises Unauthorized (401), Forbidden (403), RateLimited (429), AuthUnavailable."""
        token = bearer_token(authorization)
        entry = self.cache.table().lookup(token)
        if entry is None:
            log.info("%s: refused a call with an unknown API token", function)
            raise Unauthorized("authorization: unknown API token")
        if not entry.active:
            log.info("%s: refused a call with the revoked API token of %s", function, entry.name)
            raise Forbidden(f"authorization: the API token of {entry.name!r} was revoked")
        if not entry.allows(function):
            log.info("%s: refused %s, whose API token does not allow it", function, entry.name)
            raise Forbidden(f"authorization: the API token of {entry.name!r} may not call {function}")
        rate = entry.rate_per_s or self.rate_per_s
        wait_s = self.limiter.acquire(entry.sha256, rate, entry.burst or self.burst)
        if wait_s > 0:
            raise RateLimited(f"rate limit: {entry.name!r} may make {rate:g} requests per second; retry later",
                              retry_after_s=wait_s)
        return entry

    def require(self, function: str) -> Callable[[Handler], Handler]:
        """Decorate a route handler so that it runs only for a caller with a valid API token for `function`."""

        def decorate(handler: Handler) -> Handler:
            @functools.wraps(handler)
            def guarded(request: flask.Request) -> flask.Response:
                try:
                    self.check(request.headers.get("Authorization"), function)
                except (Unauthorized, RateLimited, AuthUnavailable) as exc:
                    return _refusal(exc)
                return handler(request)

            return guarded

        return decorate


def _refusal(exc: TriageError) -> flask.Response:
    """The design §5 JSON error, with the header its status calls for (RFC 6750 / RFC 9110)."""
    response = http.error_response(exc)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="xray-triage"'
    elif isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    elif isinstance(exc, AuthUnavailable):
        response.headers["Retry-After"] = "5"
    return response
