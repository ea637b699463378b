"""API tokens on predict and explain over HTTP: 401 / 403 / 429 as design §5 says, rotation without a restart,
health and metrics open, no token in any log line or metric."""

from __future__ import annotations

import logging
import time

import pytest

from tests.functions.bad_requests import BODY_LIMIT
from tests.functions.tiny_model import png_bytes

FUNCTIONS = ("predict", "explain")

REFRESH_S = 2.0


def post(client, token: str | None = None, **headers: str):
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post("/", data=png_bytes(), content_type="image/png", headers=headers)


def add(client, name: str, **options) -> str:
    return client.api_tokens.update(lambda table: table.add(name, now="t0", **options)[::-1])


def revoke(client, name: str) -> None:
    client.api_tokens.update(lambda table: (None, table.revoke(name, now="t1")))


def wait_ready(client) -> None:
    deadline = time.monotonic() + 30
    while client.get("/healthz").status_code != 200:
        assert time.monotonic() < deadline, "the model never loaded"
        time.sleep(0.05)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data()[:300]
    body = response.get_json()
    assert body["error"]["code"] == code and body["error"]["message"]
    return body


@pytest.mark.parametrize("name", FUNCTIONS)
def test_no_token_or_a_wrong_one_is_401_and_the_fixture_token_is_200(client_for, name) -> None:
    client = client_for(name, authorized=False)
    missing = post(client)
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(post(client, "xrt_wrong"), 401, "unauthorized")
    assert_error(post(client, client.api_token + "x"), 401, "unauthorized")
    assert_error(client.post("/", data=png_bytes(), content_type="image/png",
                             headers={"Authorization": f"Basic {client.api_token}"}), 401, "unauthorized")
    assert post(client, client.api_token).status_code == 200


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_token_is_checked_before_the_body_is_read(client_for, name) -> None:
    client = client_for(name, authorized=False, MAX_BODY_BYTES=str(BODY_LIMIT))
    response = client.post("/", data=b"\0" * (BODY_LIMIT + 10), content_type="image/png")
    assert_error(response, 401, "unauthorized")  # not 413: an anonymous caller costs no read


def test_a_revoked_token_and_one_not_allowed_this_function_are_403(client_for) -> None:
    predict = client_for("predict", authorized=False, API_TOKENS_REFRESH_S="0.05")
    viewer = add(predict, "ward-3-viewer", functions=["explain"])
    bridge = add(predict, "pacs-bridge")
    time.sleep(0.1)
    assert "may not call predict" in assert_error(post(predict, viewer), 403, "forbidden")["error"]["message"]
    assert post(predict, bridge).status_code == 200
    revoke(predict, "pacs-bridge")
    time.sleep(0.1)
    assert "revoked" in assert_error(post(predict, bridge), 403, "forbidden")["error"]["message"]
    explain = client_for("explain", authorized=False)  # same table, the other function
    assert post(explain, viewer).status_code == 200
    assert_error(post(explain, bridge), 403, "forbidden")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_tokens_added_and_revoked_apply_after_the_refresh_interval_without_a_restart(client_for, name) -> None:
    # An interval a loaded machine cannot outrun between two requests (the exact timing is unit-tested with a
    # fake clock in tests/shared/test_api_auth.py); here: a real process picks changes up without a restart.
    client = client_for(name, authorized=False, API_TOKENS_REFRESH_S=str(REFRESH_S))
    assert post(client, client.api_token).status_code == 200  # the table is read
    new = add(client, "ward-3-viewer")
    assert post(client, new).status_code == 401  # within the interval: the table it has
    time.sleep(REFRESH_S + 0.2)
    assert post(client, new).status_code == 200  # the next request after the interval: accepted
    revoke(client, "ward-3-viewer")
    time.sleep(REFRESH_S + 0.2)
    assert_error(post(client, new), 403, "forbidden")
    assert post(client, client.api_token).status_code == 200  # the others unaffected


@pytest.mark.parametrize("name", FUNCTIONS)
def test_the_sixth_request_over_a_burst_of_five_is_429_with_retry_after(client_for, name) -> None:
    client = client_for(name, API_RATE_PER_S="0.1", API_RATE_BURST="5")
    wait_ready(client)  # so the five go through in well under the 10 s a permit takes to refill
    assert [post(client).status_code for _ in range(5)] == [200] * 5
    limited = post(client)
    assert_error(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["Retry-After"]) <= 10
    other = add(client, "pacs-bridge")  # another token has its own bucket
    time.sleep(0.25)
    assert post(client, other).status_code == 200


@pytest.mark.parametrize("name", FUNCTIONS)
def test_health_and_metrics_stay_open(client_for, name) -> None:
    client = client_for(name, authorized=False)
    wait_ready(client)  # /healthz answers without a token
    assert client.get("/metrics").status_code == 200


def test_tokens_never_reach_a_log_line_or_a_metric(client_for, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for("predict", authorized=False, API_TOKENS_REFRESH_S="0.05")
    viewer = add(client, "ward-3-viewer", functions=["explain"])
    revoked = add(client, "old-bridge")
    revoke(client, "old-bridge")
    time.sleep(0.1)
    for token in (client.api_token, viewer, revoked, "xrt_guess-1234567890"):
        post(client, token)
    client.api_tokens.path.write_text("{broken")  # the error path logs too
    time.sleep(0.1)
    post(client, client.api_token)
    logged = "\n".join(f"{record.getMessage()} {record.args}" for record in caplog.records)
    metrics = client.get("/metrics").get_data(as_text=True)
    for token in (client.api_token, viewer, revoked, "xrt_guess-1234567890"):
        assert token not in logged and token not in metrics
