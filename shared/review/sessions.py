"""Sign-in for the review pages: hashed reviewer tokens, signed session cookies, CSRF tokens, sign-in rate limits.

- `ReviewerKeys` keeps only the SHA-256 of each reviewer token (REVIEWER_TOKENS, "name:token,...") and compares a
  presented token's hash with every one in constant time. The session signing key is derived from the tokens, so
  every instance of the function agrees on it without another secret, and changing the tokens ends every session.
- A session is a signed, expiring cookie `{sid, reviewer}` (itsdangerous): HttpOnly, SameSite=Strict, Secure on
  HTTPS. Signing out clears it and revokes its id in this process (sessions also end at their expiry).
- CSRF: a random nonce in its own HttpOnly cookie; the page learns HMAC(key, nonce) from `GET api/session` (a
  cross-site page cannot read that answer) and sends it as `X-CSRF-Token` with every POST.
- `FailureLimiter`: after `limit` failed sign-ins from one client within `window_s`, the next attempt is a 429.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from shared.errors import Forbidden, TriageError, Unauthorized
from shared.security import parse_tokens

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "FailureLimiter",
    "ReviewerKeys",
    "Session",
    "SessionCodec",
    "TooManyAttempts",
]

SESSION_COOKIE = "review_session"
CSRF_COOKIE = "review_csrf"
CSRF_HEADER = "X-CSRF-Token"


class TooManyAttempts(TriageError):
    status = 429
    code = "too_many_attempts"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class ReviewerKeys:
    """The reviewers' tokens, as hashes only; `name_of(token)` says whose it is."""

    def __init__(self, spec: str | None) -> None:
        tokens = {name: token for name, token in parse_tokens(spec).items() if name and token}
        self._hashes = {name: _digest(token) for name, token in tokens.items()}
        # The signing key depends on every token, never equals one, and is not stored anywhere.
        material = "\0".join(f"{name}:{token}" for name, token in sorted(tokens.items()))
        self.signing_key = hashlib.sha256(b"xray-triage review session\0" + material.encode()).digest()

    @property
    def configured(self) -> bool:
        return bool(self._hashes)

    def name_of(self, token: str | None) -> str:
        """The reviewer whose token this is; 401 for an unknown or empty token, 403 when none are configured."""
        if not self._hashes:
            raise Forbidden("sign-in: no reviewer tokens are configured for this service (REVIEWER_TOKENS)")
        if not isinstance(token, str) or not token.strip():
            raise Unauthorized("token: expected a reviewer token")
        presented = _digest(token.strip())
        matched = None
        for name, expected in self._hashes.items():  # every one compared: the timing names none of them
            if hmac.compare_digest(presented, expected) and matched is None:
                matched = name
        if matched is None:
            raise Unauthorized("token: unknown reviewer token")
        return matched

    def bearer_name(self, authorization: str | None) -> str | None:
        """The reviewer of `Authorization: Bearer <token>`; None without that header (401 for a bad token)."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if not authorization:
            return None
        if scheme.lower() != "bearer":
            raise Unauthorized("authorization: expected 'Authorization: Bearer <reviewer token>'")
        return self.name_of(token)


@dataclass(frozen=True)
class Session:
    sid: str
    reviewer: str


class SessionCodec:
    """Session cookies and CSRF tokens signed with the reviewers' derived key; sessions expire after `max_age_s`."""

    def __init__(self, signing_key: bytes, *, max_age_s: float) -> None:
        self._key = signing_key
        self._serializer = URLSafeTimedSerializer(signing_key, salt="review-session")
        self.max_age_s = int(max_age_s)
        self._revoked: dict[str, float] = {}  # sid -> when it would have expired anyway
        self._lock = threading.Lock()

    def issue(self, reviewer: str) -> tuple[Session, str]:
        session = Session(secrets.token_urlsafe(18), reviewer)
        return session, self._serializer.dumps({"sid": session.sid, "reviewer": reviewer})

    def read(self, cookie: str | None) -> Session | None:
        """The session of a cookie value; None when absent, tampered with, expired or signed out."""
        if not cookie:
            return None
        try:
            payload = self._serializer.loads(cookie, max_age=self.max_age_s)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("sid"), str) \
                or not isinstance(payload.get("reviewer"), str):
            return None
        with self._lock:
            if payload["sid"] in self._revoked:
                return None
        return Session(payload["sid"], payload["reviewer"])

    def revoke(self, session: Session) -> None:
        now = time.time()
        with self._lock:
            self._revoked = {sid: until for sid, until in self._revoked.items() if until > now}
            self._revoked[session.sid] = now + self.max_age_s

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_urlsafe(18)

    def csrf_token(self, nonce: str) -> str:
        return hmac.new(self._key, b"csrf\0" + nonce.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, nonce: str | None, presented: str | None) -> None:
        """403 unless `presented` is the CSRF token of the nonce cookie."""
        if not nonce or not presented or not hmac.compare_digest(self.csrf_token(nonce), presented.strip()):
            raise Forbidden(f"csrf: missing or wrong {CSRF_HEADER} header (reload the page)", code="csrf")


class FailureLimiter:
    """Counts failed sign-ins per client over a sliding window; `check` raises 429 once `limit` are reached."""

    def __init__(self, *, limit: int = 5, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000) -> None:
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.get(client, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def check(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            failures = self._recent(client, now)
            if len(failures) >= self.limit:
                retry = max(1, int(failures[0] + self.window_s - now) + 1)
                raise TooManyAttempts(f"sign-in: too many failed attempts; try again in {retry} s")

    def failed(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._failures) >= self.max_clients:  # bounded memory: forget the clients with no recent failure
                self._failures = {c: f for c, f in self._failures.items() if self._recent(c, now)}
            failures = self._recent(client, now)
            failures.append(now)
            self._failures[client] = failures
