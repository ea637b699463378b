"""Knative Eventing objects follow the event table of design §4 (the topology's subscriptions and pings)."""

from __future__ import annotations

from tests.infra.manifests.example import by_kind


def test_triggers_follow_the_event_table(objects: list[dict]) -> None:
    routes = {
        (
            t["spec"]["filter"]["attributes"]["type"],
            t["spec"]["filter"]["attributes"].get("bucket"),
            t["spec"]["subscriber"]["ref"]["name"],
        )
        for t in by_kind(objects, "Trigger")
    }
    assert routes == {
        ("io.minio.object.created", "inference-inputs", "ingest"),
        ("triage.heatmap.requested", None, "ingest"),  # issue 12: the heatmap, ingest's second step, after the flag
        ("io.minio.object.created", "raw-data", "retrain"),
        ("triage.prediction.created", None, "monitor"),
        ("triage.prediction.created", None, "export"),  # design §4: export (DICOM inputs)
        ("triage.feedback.received", None, "retrain"),
        ("triage.feedback.received", None, "monitor"),
        ("triage.model.registered", None, "canary"),
    }
    (broker,) = by_kind(objects, "Broker")
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "MTChannelBasedBroker"
    assert {p["spec"]["sink"]["ref"]["name"] for p in by_kind(objects, "PingSource")} == {"canary", "monitor"}


def test_pings_keep_their_production_schedules(objects: list[dict]) -> None:
    schedules = {p["metadata"]["name"]: p["spec"]["schedule"] for p in by_kind(objects, "PingSource")}
    assert schedules == {"canary-tick": "*/5 * * * *", "monitor-tick": "*/15 * * * *"}
