"""Reviewer tokens (hashed), session cookies, CSRF tokens and the sign-in rate limit."""

from __future__ import annotations

import pytest

from shared.errors import Forbidden, Unauthorized
from shared.review.sessions import FailureLimiter, ReviewerKeys, SessionCodec, TooManyAttempts

TOKENS = "ann:tok-ann-secret,bob:tok-bob-secret"


def test_tokens_are_kept_only_as_hashes_and_name_their_reviewer():
    keys = ReviewerKeys(TOKENS)
    assert keys.name_of("tok-bob-secret") == "bob" and keys.name_of(" tok-ann-secret ") == "ann"
    held = repr(vars(keys)).encode() + keys.signing_key
    assert b"tok-ann-secret" not in held and b"tok-bob-secret" not in held
    for wrong in ("tok-ann", "", None, "tok-ann-secret2"):
        with pytest.raises(Unauthorized):
            keys.name_of(wrong)
    with pytest.raises(Forbidden):  # nothing configured: nobody gets in
        ReviewerKeys(None).name_of("anything")


def test_bearer_header():
    keys = ReviewerKeys(TOKENS)
    assert keys.bearer_name("Bearer tok-ann-secret") == "ann"
    assert keys.bearer_name(None) is None
    for header in ("Basic tok-ann-secret", "Bearer nope", "Bearer"):
        with pytest.raises(Unauthorized):
            keys.bearer_name(header)


def test_a_session_cookie_round_trips_and_is_refused_when_tampered_signed_out_expired_or_of_other_tokens(monkeypatch):
    codec = SessionCodec(ReviewerKeys(TOKENS).signing_key, max_age_s=3600)
    session, cookie = codec.issue("ann")
    assert codec.read(cookie) == session and session.reviewer == "ann"
    assert codec.read(cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) is None
    assert codec.read("") is None and codec.read(None) is None
    assert SessionCodec(ReviewerKeys("ann:other").signing_key, max_age_s=3600).read(cookie) is None

    import time
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3601)
    assert codec.read(cookie) is None  # expired
    monkeypatch.setattr(time, "time", real)

    codec.revoke(session)
    assert codec.read(cookie) is None


def test_csrf_token_is_bound_to_its_nonce():
    codec = SessionCodec(ReviewerKeys(TOKENS).signing_key, max_age_s=60)
    nonce = codec.new_nonce()
    codec.check_csrf(nonce, codec.csrf_token(nonce))
    for cookie, header in ((nonce, None), (None, codec.csrf_token(nonce)), (nonce, codec.csrf_token("other")),
                           (nonce, "")):
        with pytest.raises(Forbidden) as raised:
            codec.check_csrf(cookie, header)
        assert raised.value.code == "csrf"


def test_the_sixth_failed_sign_in_within_a_minute_is_a_429_and_the_window_slides():
    now = [1000.0]
    limiter = FailureLimiter(limit=5, window_s=60, clock=lambda: now[0])
    for _ in range(5):
        limiter.check("10.0.0.1")
        limiter.failed("10.0.0.1")
    with pytest.raises(TooManyAttempts) as raised:
        limiter.check("10.0.0.1")
    assert raised.value.status == 429
    limiter.check("10.0.0.2")  # another client is not held back
    now[0] += 61
    limiter.check("10.0.0.1")
