"""The canary function: model.registered starts a canary on the gateway, PingSource events step it."""

from __future__ import annotations

import pytest

from shared.canary import load_state
from shared.events import event_to_binary_http, event_to_structured_http, make_event, model_registered_event
from tests.shared.canary.test_observe import FakePrometheus
from triage.stack.gateway import Gateway, GatewayServer, Route


@pytest.fixture
def gateway():
    server = GatewayServer(Gateway({
        "predict": Route("predict", {"champion": "http://127.0.0.1:9", "challenger": "http://127.0.0.1:9"}),
        "explain": Route("explain", {"champion": "http://127.0.0.1:9", "challenger": "http://127.0.0.1:9"}),
    })).start()
    yield server
    server.stop()


PING_HEADERS = {  # what a PingSource without data sends: binary mode, no body
    "ce-specversion": "1.0", "ce-type": "dev.knative.sources.ping", "ce-id": "p-1",
    "ce-source": "/apis/v1/namespaces/xray-triage/pingsources/canary",
}


def ping() -> tuple[dict[str, str], bytes]:
    return PING_HEADERS, b""


def test_registered_model_starts_at_the_first_step_and_pings_advance_it(client_for, storage, gateway, monkeypatch):
    prom = FakePrometheus({"requests": {"champion": "500", "challenger": "60"}, "errors": {"challenger": "0"},
                           "p99": {"champion": "0.05", "challenger": "0.06"}})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        # No CANARY_MODEL_URI: the gateway's running challenger is canaried as it is (no revision to start).
        client = client_for("canary", CANARY_GATEWAY_URL=gateway.url, GATEWAY_ADMIN_TOKEN=gateway.admin_token,
                            PROMETHEUS_URL=prom.url, CANARY_MODEL_URI="",
                            CANARY_STEPS="10,50,100", CANARY_MIN_REQUESTS="20")
        assert client.get("/healthz").status_code == 200
        headers, body = event_to_binary_http(model_registered_event("7", "run-1"))
        started = client.post("/", headers=headers, data=body)
        assert started.status_code == 200, started.json
        assert started.json["status"] == "started" and started.json["weight"] == 10
        assert gateway.gateway.traffic()["predict"] == {"champion": 90, "challenger": 10}

        headers, body = event_to_structured_http(model_registered_event("7", "run-1"))  # redelivered
        again = client.post("/", headers=headers, data=body).json
        assert again == {"status": "unchanged", "version": "7", "weight": 10}

        stepped = client.post("/", headers=ping()[0], data=ping()[1]).json
        assert stepped["outcome"] == "advance" and stepped["weight"] == 50
        assert gateway.gateway.traffic()["explain"] == {"champion": 50, "challenger": 50}
        assert load_state(storage).weight == 50  # kept in S3 between (scale-to-zero) invocations
        assert client.post("/", headers=ping()[0], data=ping()[1]).json["weight"] == 100
        done = client.post("/", headers=ping()[0], data=ping()[1]).json
        assert done["status"] == "promoted" and done["outcome"] == "promote"
        assert client.post("/", headers=ping()[0], data=ping()[1]).json == {"status": "idle", "version": "7"}

        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'triage_canary_weight_percent{service="predict"} 100.0' in metrics
        assert 'triage_canary_decisions_total{outcome="promote"}' in metrics
    finally:
        prom.close()


def test_bad_events_and_unreachable_backends_are_clear_errors(client_for, storage, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = client_for("canary", CANARY_GATEWAY_URL="http://127.0.0.1:9", PROMETHEUS_URL="http://127.0.0.1:9",
                        CANARY_MODEL_URI="")
    bad = client.post("/", data=b"not an event", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json["error"]["code"] == "bad_event"
    headers, body = event_to_binary_http(make_event("triage.model.registered", "triage/retrain", {"name": "x"}))
    missing = client.post("/", headers=headers, data=body)
    assert missing.status_code == 400 and "no field 'version'" in missing.json["error"]["message"]
    other = event_to_binary_http(make_event("triage.feedback.received", "triage/feedback", {"request_id": "r"}))
    assert client.post("/", headers=other[0], data=other[1]).json["status"] == "ignored"
    headers, body = event_to_binary_http(model_registered_event("8", None))
    down = client.post("/", headers=headers, data=body)
    assert down.status_code == 502 and down.json["error"]["code"] == "canary_backend_failed"
    assert load_state(storage).version == "8"  # saved before routing: the next ping retries the split
