"""The API token check without HTTP: 401 / 403 / 429, the table re-read after the refresh interval, no token logged."""

from __future__ import annotations

import logging

import pytest

from shared.api_auth import ApiAuth, AuthUnavailable, RateLimited, TokenCache
from shared.config import ConfigError, Settings
from shared.errors import Forbidden, Unauthorized
from shared.token_store import FileTokenStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def add(store: FileTokenStore, name: str, **options) -> str:
    return store.update(lambda table: table.add(name, now="t0", **options)[::-1])


@pytest.fixture
def setup(tmp_path):
    clock = Clock()
    store = FileTokenStore(tmp_path / "api-tokens.json")
    token = add(store, "pacs-bridge")
    auth = ApiAuth(TokenCache(store, refresh_s=10.0, clock=clock), rate_per_s=100.0, burst=100)
    auth.limiter.clock = clock
    return auth, store, token, clock


def test_a_valid_token_names_its_client(setup) -> None:
    auth, _, token, _ = setup
    assert auth.check(f"Bearer {token}", "predict").name == "pacs-bridge"
    assert auth.check(f"Bearer {token}", "explain").name == "pacs-bridge"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic eDp5", "Bearer wrong", "Bearer xrt_"])
def test_no_or_an_unknown_token_is_401(setup, header) -> None:
    auth, *_ = setup
    with pytest.raises(Unauthorized):
        auth.check(header, "predict")


def test_revoked_and_not_allowed_tokens_are_403(setup) -> None:
    auth, store, token, clock = setup
    viewer = add(store, "ward-3-viewer", functions=["explain"])
    clock.now += 10
    with pytest.raises(Forbidden, match="may not call predict"):
        auth.check(f"Bearer {viewer}", "predict")
    assert auth.check(f"Bearer {viewer}", "explain").name == "ward-3-viewer"
    store.update(lambda table: (None, table.revoke("pacs-bridge", now="t1")))
    clock.now += 10
    with pytest.raises(Forbidden, match="revoked"):
        auth.check(f"Bearer {token}", "predict")


def test_changes_apply_after_the_refresh_interval_without_a_restart(setup) -> None:
    auth, store, token, clock = setup
    assert auth.check(f"Bearer {token}", "predict")
    new = add(store, "ward-3-viewer")
    with pytest.raises(Unauthorized):  # still the cached table within the interval
        auth.check(f"Bearer {new}", "predict")
    clock.now += 10
    assert auth.check(f"Bearer {new}", "predict").name == "ward-3-viewer"
    store.update(lambda table: (None, table.revoke("ward-3-viewer", now="t1")))
    clock.now += 10
    with pytest.raises(Forbidden):
        auth.check(f"Bearer {new}", "predict")


def test_the_sixth_request_over_a_burst_of_five_is_429_with_a_wait(tmp_path) -> None:
    clock = Clock()
    store = FileTokenStore(tmp_path / "api-tokens.json")
    token = add(store, "pacs-bridge")
    limited = add(store, "slow-client", rate_per_s=0.5, burst=2)  # an entry's own settings win
    auth = ApiAuth(TokenCache(store, refresh_s=10.0, clock=clock), rate_per_s=1.0, burst=5)
    auth.limiter.clock = clock
    for _ in range(5):
        auth.check(f"Bearer {token}", "predict")
    with pytest.raises(RateLimited) as refused:
        auth.check(f"Bearer {token}", "predict")
    assert refused.value.status == 429 and refused.value.retry_after_s == pytest.approx(1.0)
    auth.check(f"Bearer {limited}", "predict")
    auth.check(f"Bearer {limited}", "predict")
    with pytest.raises(RateLimited) as slow:
        auth.check(f"Bearer {limited}", "predict")
    assert slow.value.retry_after_s == pytest.approx(2.0)
    clock.now += 1.0
    assert auth.check(f"Bearer {token}", "predict")  # refilled


def test_an_unreadable_table_keeps_the_last_good_one_and_none_at_all_is_503(setup, tmp_path) -> None:
    auth, store, token, clock = setup
    assert auth.check(f"Bearer {token}", "predict")
    store.path.write_text("{broken")
    clock.now += 10
    assert auth.check(f"Bearer {token}", "predict")  # a bad edit does not lock everyone out
    fresh = ApiAuth(TokenCache(FileTokenStore(store.path), refresh_s=10.0), rate_per_s=1.0, burst=1)
    with pytest.raises(AuthUnavailable) as error:
        fresh.check(f"Bearer {token}", "predict")
    assert error.value.status == 503


def test_no_table_yet_refuses_everyone_with_401(tmp_path) -> None:
    auth = ApiAuth(TokenCache(FileTokenStore(tmp_path / "none.json"), refresh_s=10.0), rate_per_s=1.0, burst=1)
    with pytest.raises(Unauthorized):
        auth.check("Bearer xrt_anything", "predict")


def test_tokens_are_never_logged(setup, caplog) -> None:
    auth, store, token, clock = setup
    viewer = add(store, "ward-3-viewer", functions=["explain"])
    store.update(lambda table: (None, table.revoke("pacs-bridge", now="t1")))
    clock.now += 10
    caplog.set_level(logging.DEBUG)
    for header in (f"Bearer {token}", f"Bearer {viewer}", "Bearer xrt_guessed-token-123"):
        with pytest.raises((Unauthorized, Forbidden)) as error:
            auth.check(header, "predict")
        assert header.split()[1] not in error.value.message
    store.path.write_text("{broken")
    clock.now += 10
    auth.check(f"Bearer {viewer}", "explain")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "pacs-bridge" in logged and "ward-3-viewer" in logged  # the client is named ...
    for secret in (token, viewer, "xrt_guessed-token-123"):
        assert secret not in logged  # ... its token never


def test_settings_read_the_table_location_refresh_and_rate() -> None:
    default = Settings.from_env({})
    assert default.api_tokens_uri == "s3://triage-state/auth/api-tokens.json"
    assert (default.api_tokens_refresh_s, default.api_rate_per_s, default.api_rate_burst) == (10.0, 10.0, 20)
    custom = Settings.from_env({"API_TOKENS_URI": "/run/tokens.json", "API_TOKENS_REFRESH_S": "2",
                                "API_RATE_PER_S": "0.5", "API_RATE_BURST": "3"})
    assert (custom.api_tokens_uri, custom.api_tokens_refresh_s, custom.api_rate_per_s, custom.api_rate_burst) == (
        "/run/tokens.json", 2.0, 0.5, 3)
    for name, value in (("API_RATE_PER_S", "0"), ("API_RATE_BURST", "1.5"), ("API_TOKENS_REFRESH_S", "-1")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})
