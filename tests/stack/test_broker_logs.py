"""The broker's log lines name objects by `key_ref`, never by key, even when a subscriber's answer quotes the key."""

from __future__ import annotations

import logging

from cloudevents.http import CloudEvent

from shared.names import key_ref
from triage.stack.broker import Broker, DeliveryQueue, DeliverySpec, SubscriberReply, Trigger

PATIENT_KEY = "ward3/Doe^John_1970-01-01.png"


def test_a_failing_subscriber_quoting_the_key_never_puts_it_in_a_log_line_or_the_queue(tmp_path, caplog):
    def send(url, headers, body, timeout_s):
        if url == "http://down":
            raise ConnectionError(f"cannot deliver {PATIENT_KEY}")
        return SubscriberReply(500, {}, f'{{"error": {{"message": "no such object {PATIENT_KEY}"}}}}'.encode())

    triggers = [Trigger("ingest", "http://ingest", {"type": "io.minio.object.created"}),
                Trigger("other", "http://down", {"type": "io.minio.object.created"})]
    dead: list[dict] = []
    clock = [1000.0]
    queue = DeliveryQueue(tmp_path / "q.sqlite")
    broker = Broker(triggers, queue, delivery=DeliverySpec(retry=2, backoff_delay_s=1.0), send=send,
                    dead_letter=dead.append, clock=lambda: clock[0])
    event = CloudEvent({"type": "io.minio.object.created", "source": "minio:inference-inputs",
                        "bucket": "inference-inputs"}, {"bucket": "inference-inputs", "key": PATIENT_KEY})
    with caplog.at_level(logging.DEBUG):
        broker.publish(event)
        for _ in range(6):
            broker.run_due()
            clock[0] += 10

    assert len(dead) == 2  # both deliveries were retried, then dead-lettered
    logged = [record.getMessage() for record in caplog.records]
    assert logged and not [line for line in logged if "Doe" in line]
    assert any(key_ref("inference-inputs", PATIENT_KEY) in line and "dead-lettered" in line for line in logged)
    assert any("HTTP 500" in line for line in logged) and any("ConnectionError" in line for line in logged)
    # The dead-letter record (the hospital's storage) keeps the subscriber's answer and the event itself.
    by_trigger = {record["trigger"]: record for record in dead}
    assert PATIENT_KEY in by_trigger["ingest"]["error"]["message"]
    assert by_trigger["other"]["event"]["data"]["key"] == PATIENT_KEY
    errors = queue._db.execute("SELECT last_error FROM deliveries").fetchall()
    assert errors and not [e for (e,) in errors if e and "Doe" in e]
