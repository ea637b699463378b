"""The gateway: traffic split by weights, admin validation, proxying with the serving revision in a header."""

from __future__ import annotations

import random

import httpx
import pytest

from tests.stack.upstream import Upstream
from triage.stack.gateway import REVISION_HEADER, Gateway, GatewayServer, Route, TrafficError


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
    server = GatewayServer(gateway).start()
    try:
        with httpx.Client(base_url=server.url) as client:
            response = client.post("/predict", content=b"\x89PNG....", headers={"Content-Type": "image/png"})
            assert response.status_code == 200 and response.headers[REVISION_HEADER] == "champion"
            assert response.json() == {"served_by": "champion", "path": "/", "bytes": 8, "content_type": "image/png"}
            admin = client.put("/admin/traffic", json={"champion": 50, "challenger": 50})
            assert admin.status_code == 200 and admin.json()["predict"] == {"champion": 50, "challenger": 50}
            served = [client.post("/predict?x=1", content=b"x") for _ in range(60)]
            revisions = [r.headers[REVISION_HEADER] for r in served]
            assert all(r.json()["served_by"] == rev for r, rev in zip(served, revisions, strict=True))
            assert 10 < revisions.count("challenger") < 50
            assert served[0].json()["path"] == "/?x=1"
            chunked = client.post("/predict", content=iter([b"abc", b"defg"]))  # an iterator is sent chunked
            assert chunked.status_code == 200 and chunked.json()["bytes"] == 7
            bad = client.put("/admin/traffic", json={"champion": 50})
            assert bad.status_code == 422 and "sum to 100" in bad.json()["error"]["message"]
            down = client.post("/feedback", json={})
            assert down.status_code == 502 and down.json()["error"]["code"] == "bad_gateway"
            assert client.post("/nothing").status_code == 404
            assert "<form" in client.get("/review").text
            metrics = client.get("/metrics").text
            assert 'gateway_requests_total{code="200",revision="challenger",service="predict"}' in metrics
    finally:
        server.stop()
        champion.close()
        challenger.close()
