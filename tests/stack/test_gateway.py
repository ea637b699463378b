"""The gateway: traffic split by weights, admin validation, proxying with the serving revision in a header."""

from __future__ import annotations

import random

import httpx
import pytest

from tests.stack.upstream import Upstream
from triage.stack.admin_token import TOKEN_FILE, admin_refusal, read_token, write_token
from triage.stack.gateway import REVISION_HEADER, Gateway, GatewayServer, Route, TrafficError

ADMIN_TOKEN = "admin-test-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_split_honours_weights_and_never_picks_a_zero_percent_revision():
    route = Route("predict", {"champion": "http://a", "challenger": "http://b"}, {"champion": 75, "challenger": 25})
    rng = random.Random(7)
    picks = [route.pick(rng.random()) for _ in range(4000)]
    assert 0.22 < picks.count("challenger") / len(picks) < 0.28
    route.set_traffic({"champion": 100, "challenger": 0})
    assert {route.pick(rng.random()) for _ in range(500)} == {"champion"}
    assert route.pick(0.999999) == "champion"


@pytest.mark.parametrize("traffic, message", [
    ({"champion": 60, "challenger": 30}, "sum to 100"),
    ({"champion": 110, "challenger": -10}, ">= 0"),
    ({"champion": 50, "canary": 50}, "no service has revisions champion, canary"),
    ({"champion": 50.5, "challenger": 49.5}, "whole numbers"),
])
def test_invalid_traffic_is_rejected_and_changes_nothing(traffic, message):
    gateway = Gateway({
        "predict": Route("predict", {"champion": "http://a", "challenger": "http://b"}),
        "explain": Route("explain", {"champion": "http://c", "challenger": "http://d"}),
    })
    with pytest.raises(TrafficError, match=message):
        gateway.set_traffic(traffic)
    assert gateway.traffic()["predict"] == {"champion": 100, "challenger": 0}


def test_admin_split_applies_to_every_service_with_those_revisions():
    gateway = Gateway({
        "predict": Route("predict", {"champion": "http://a", "challenger": "http://b"}),
        "explain": Route("explain", {"champion": "http://c", "challenger": "http://d"}),
        "feedback": Route("feedback", {"default": "http://e"}),
    })
    result = gateway.set_traffic({"champion": 90, "challenger": 10})
    assert result["predict"] == result["explain"] == {"champion": 90, "challenger": 10}
    assert result["feedback"] == {"default": 100}


def test_http_gateway_proxies_splits_and_reports_the_revision():
    champion, challenger = Upstream("champion"), Upstream("challenger")
    gateway = Gateway({"predict": Route("predict", {"champion": champion.url, "challenger": challenger.url}),
                       "feedback": Route("feedback", {"default": "http://127.0.0.1:9"})})
    server = GatewayServer(gateway, admin_token=ADMIN_TOKEN).start()
    try:
        with httpx.Client(base_url=server.url) as client:
            response = client.post("/predict", content=b"\x89PNG....", headers={"Content-Type": "image/png"})
            assert response.status_code == 200 and response.headers[REVISION_HEADER] == "champion"
            assert response.json() == {"served_by": "champion", "path": "/", "bytes": 8, "content_type": "image/png"}
            admin = client.put("/admin/traffic", json={"champion": 50, "challenger": 50}, headers=ADMIN)
            assert admin.status_code == 200 and admin.json()["predict"] == {"champion": 50, "challenger": 50}
            served = [client.post("/predict?x=1", content=b"x") for _ in range(60)]
            revisions = [r.headers[REVISION_HEADER] for r in served]
            assert all(r.json()["served_by"] == rev for r, rev in zip(served, revisions, strict=True))
            assert 10 < revisions.count("challenger") < 50
            assert served[0].json()["path"] == "/?x=1"
            chunked = client.post("/predict", content=iter([b"abc", b"defg"]))  # an iterator is sent chunked
            assert chunked.status_code == 200 and chunked.json()["bytes"] == 7
            bad = client.put("/admin/traffic", json={"champion": 50}, headers=ADMIN)
            assert bad.status_code == 422 and "sum to 100" in bad.json()["error"]["message"]
            down = client.post("/feedback", json={})
            assert down.status_code == 502 and down.json()["error"]["code"] == "bad_gateway"
            assert client.post("/nothing").status_code == 404
            assert client.get("/review").status_code == 404  # the review function's route now: none here
            metrics = client.get("/metrics").text
            assert 'gateway_requests_total{code="200",revision="challenger",service="predict"}' in metrics
    finally:
        server.stop()
        champion.close()
        challenger.close()


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/admin/traffic", None),
    ("GET", "/admin/revisions", None),
    ("PUT", "/admin/traffic", {"champion": 0, "challenger": 100}),
    ("PUT", "/admin/revisions", {"name": "v8", "model_uri": "models:/xray-vit/8"}),
])
def test_admin_api_needs_the_admin_token(method, path, body):
    gateway = Gateway({"predict": Route("predict", {"champion": "http://127.0.0.1:9", "challenger": "http://b"})})
    server = GatewayServer(gateway, admin_token=ADMIN_TOKEN).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for headers, status, code in [({}, 401, "unauthorized"),
                                          ({"Authorization": "Basic YWRtaW46YWRtaW4="}, 401, "unauthorized"),
                                          ({"Authorization": "Bearer"}, 401, "unauthorized"),
                                          ({"Authorization": "Bearer wrong-token"}, 403, "forbidden"),
                                          ({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, 403, "forbidden")]:
                refused = client.request(method, path, json=body, headers=headers)
                assert refused.status_code == status and refused.json()["error"]["code"] == code, headers
                assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert gateway.traffic()["predict"] == {"champion": 100, "challenger": 0}  # nothing moved
            if method == "GET":
                assert client.get(path, headers=ADMIN).status_code == 200
            elif path == "/admin/traffic":
                assert client.put(path, json=body, headers=ADMIN).status_code == 200
                assert gateway.traffic()["predict"] == {"champion": 0, "challenger": 100}
            else:  # authorized, and then refused for what it asks: this gateway starts no revisions
                assert client.put(path, json=body, headers=ADMIN).status_code == 503
            assert client.get("/healthz").status_code == 200  # the rest stays open
    finally:
        server.stop()


def test_a_gateway_without_a_given_token_makes_its_own():
    first, second = GatewayServer(Gateway({})), GatewayServer(Gateway({}))
    try:
        assert len(first.admin_token) >= 32 and first.admin_token != second.admin_token
    finally:
        first.httpd.server_close()
        second.httpd.server_close()


def test_admin_token_check_and_file(tmp_path):
    assert admin_refusal(None, "s3cret")[0] == 401
    assert admin_refusal("bearer s3cret", "s3cret") is None  # the scheme is case-insensitive
    assert admin_refusal("Bearer s3cre", "s3cret")[0] == 403
    assert admin_refusal("Bearer sécret", "s3cret")[0] == 403  # non-ASCII compares without raising
    assert read_token(tmp_path) is None
    path = write_token(tmp_path, "s3cret")
    assert path.name == TOKEN_FILE and path.stat().st_mode & 0o777 == 0o600
    assert read_token(tmp_path) == "s3cret"
