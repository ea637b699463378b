"""monitor over HTTP: prediction and feedback events in, a report on the PingSource tick, gauges on /metrics."""

from __future__ import annotations

import pytest

from shared.events import (
    NullPublisher,
    event_to_binary_http,
    event_to_structured_http,
    feedback_received_event,
    make_event,
    object_created_event,
    prediction_created_event,
)
from shared.feedback import FeedbackRequest, record_request, submit_feedback
from shared.names import MONITOR_REPORT_KEY, PING

TICK_SOURCE = "/apis/v1/namespaces/triage/pingsources/monitor-tick"


@pytest.fixture
def client(client_for, storage, s3_server):
    return client_for("monitor", S3_ENDPOINT_URL=s3_server, MONITOR_REFERENCE_SIZE="4", MONITOR_MIN_PREDICTIONS="4")


def send(client, event, structured: bool = False):
    headers, body = (event_to_structured_http if structured else event_to_binary_http)(event)
    return client.post("/", data=body, headers=headers)


def prediction_event(n: int, probability: float):
    return prediction_created_event(
        {
            "request_id": f"req{n}",
            "bucket": "inference-inputs",
            "key": f"scan{n}.png",
            "etag": f"etag{n}",
            "label": "pneumonia" if probability >= 0.5 else "normal",
            "probability": probability,
            "urgent": probability >= 0.9,
            "model": {"name": "xray-vit", "version": "7"},
        }
    )


def labelled(storage, request_id: str, predicted: str, truth: str):
    record_request(storage, {"request_id": request_id, "label": predicted, "model": {"version": "7"}}, source="ingest")
    outcome = submit_feedback(storage, FeedbackRequest(request_id, truth, "ann", "ann"), NullPublisher())
    return feedback_received_event({k: v for k, v in outcome.record.items() if k != "notified"})


def test_events_then_a_tick_write_the_report_and_export_the_gauges(client, storage):
    for n, probability in enumerate([0.95, 0.2, 0.7, 0.1, 0.95, 0.2, 0.7, 0.1]):
        answer = send(client, prediction_event(n, probability), structured=n % 2 == 1)
        assert (answer.status_code, answer.get_json()) == (200, {"status": "counted"})
    assert send(client, prediction_event(0, 0.95)).get_json() == {"status": "duplicate"}  # redelivered

    for request_id, predicted, truth in [("a", "pneumonia", "pneumonia"), ("b", "normal", "pneumonia")]:
        answer = send(client, labelled(storage, request_id, predicted, truth))
        assert (answer.status_code, answer.get_json()) == (200, {"status": "updated"})

    tick = send(client, make_event(PING, TICK_SOURCE, {"check": "monitor"}))
    assert tick.status_code == 200 and tick.get_json()["status"] == "reported"
    assert tick.get_json()["drift"] is False

    report = storage.get_json("triage-state", MONITOR_REPORT_KEY)
    assert report["predictions"]["n"] == 8 and report["predictions"]["positive_rate"] == 0.5
    assert report["predictions"]["urgent_rate"] == 0.25 and report["events_counted"] == 8
    version = report["live_accuracy"]["by_version"]["7"]
    assert (version["n"], version["accuracy"], version["sensitivity"]) == (2, 0.5, 0.5)
    assert report["drift_by_version"]["7"]["psi_probability"] == pytest.approx(0.0, abs=1e-9)

    text = client.get("/metrics").get_data(as_text=True)
    assert 'triage_monitor_live_accuracy{version="7"} 0.5' in text
    assert 'triage_monitor_live_sensitivity{version="7"} 0.5' in text
    assert 'triage_monitor_labelled{version="7"} 2.0' in text
    assert "triage_monitor_positive_rate 0.5" in text
    assert "triage_monitor_drift 0.0" in text
    assert 'triage_monitor_psi{statistic="probability",version="7"}' in text
    assert (
        'triage_events_processed_total{function="monitor",outcome="duplicate",type="triage.prediction.created"}' in text
    )


def test_a_shifted_stream_is_reported_as_drift(client, storage):
    for n, probability in enumerate([0.1, 0.2, 0.3, 0.4] + [0.9] * 12):
        send(client, prediction_event(n, probability))
    tick = send(client, make_event(PING, TICK_SOURCE, {"check": "monitor"}))
    assert tick.get_json()["drift"] is True
    assert "triage_monitor_drift 1.0" in client.get("/metrics").get_data(as_text=True)


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [
        ({"Content-Type": "application/json"}, b'{"hello": 1}', "not a CloudEvent"),
        (*event_to_binary_http(object_created_event("raw-data", "a.npz", "e", 1)), "does not handle"),
        (
            *event_to_binary_http(make_event("triage.prediction.created", "triage/ingest", {"label": "x"})),
            "probability",
        ),
    ],
)
def test_bad_events_are_a_400_json_error(client, headers, body, message):
    answer = client.post("/", data=body, headers=headers)
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "bad_event" and message in error["message"]


def test_health_and_wrong_method(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 405
