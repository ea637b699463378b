"""Knative Eventing: the Broker, a Trigger per subscription of the topology (with retries and a dead-letter
sink), a PingSource per ping schedule, and the SinkBinding that gives the emitting functions K_SINK."""

from __future__ import annotations

import json

from infra_pulumi.manifests.kube import meta
from infra_pulumi.manifests.settings import ManifestSettings
from shared import topology

__all__ = ["DELIVERY_BACKOFF", "DELIVERY_RETRIES", "eventing_objects"]

DELIVERY_RETRIES = 5
DELIVERY_BACKOFF = "PT1S"  # ISO 8601; doubles on each retry (exponential)
BROKER = "default"


def _service_ref(name: str) -> dict:
    return {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": name}}


def _delivery() -> dict:
    return {
        "retry": DELIVERY_RETRIES,
        "backoffPolicy": "exponential",
        "backoffDelay": DELIVERY_BACKOFF,
        "deadLetterSink": _service_ref(topology.DEAD_LETTER_SINK),
    }


def _trigger(s: ManifestSettings, sub: topology.Subscription) -> dict:
    attributes = {"type": sub.event_type}
    if sub.bucket:
        attributes["bucket"] = sub.bucket
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": meta(sub.name, s.namespace),
        "spec": {
            "broker": BROKER,
            "filter": {"attributes": attributes},
            "subscriber": _service_ref(sub.subscriber),
            "delivery": _delivery(),
        },
    }


def _ping_source(s: ManifestSettings, ping: topology.PingSchedule) -> dict:
    return {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": meta(ping.name, s.namespace),
        "spec": {
            "schedule": ping.cron,
            "contentType": "application/json",
            "data": json.dumps({"check": ping.subscriber}),
            "sink": _service_ref(ping.subscriber),
        },
    }


def eventing_objects(s: ManifestSettings) -> list[dict]:
    ns = s.namespace
    broker = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": meta(BROKER, ns, annotations={"eventing.knative.dev/broker.class": "MTChannelBasedBroker"}),
        "spec": {"delivery": _delivery()},
    }
    sink_binding = {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "SinkBinding",
        "metadata": meta("functions-to-broker", ns),
        "spec": {
            "subject": {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                "selector": {"matchLabels": {"xray-triage/emits-events": "true"}},
            },
            "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": BROKER}},
        },
    }
    return [
        broker,
        sink_binding,
        *(_trigger(s, sub) for sub in topology.SUBSCRIPTIONS),
        *(_ping_source(s, ping) for ping in topology.PING_SCHEDULES),
    ]
