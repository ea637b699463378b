"""The local broker's /metrics carries `triage_dead_letters_total`, so the local Prometheus's dead-letter alert sees
the events its sink stores (the platform's dead-letter function exports the same counter)."""

from __future__ import annotations

import httpx

from shared import metrics
from triage.stack.broker import Broker, BrokerServer, DeliveryQueue


def test_the_broker_exports_the_dead_letters_its_sink_stored(tmp_path) -> None:
    metrics.DEAD_LETTERS.labels(subscriber="broker-test").inc()  # what store_dead_letter counts in this process
    server = BrokerServer(Broker([], DeliveryQueue(tmp_path / "q.sqlite"))).start(workers=1)
    try:
        text = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    assert 'triage_dead_letters_total{subscriber="broker-test"} 1.0' in text
    assert "broker_deliveries" in text and "triage_predictions_total" not in text
