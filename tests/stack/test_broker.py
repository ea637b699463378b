"""The broker without processes: trigger filters, retries with backoff, dead letter, reply events, persistence."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from cloudevents.http import CloudEvent

from tests.local_http import LocalServer, QuietHandler
from triage.stack.broker import (
    Broker,
    BrokerServer,
    DeliveryQueue,
    DeliverySpec,
    SubscriberReply,
    Trigger,
    load_config,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingSubscribers:
    """Answers per subscriber URL with a scripted status list (the last one repeats)."""

    def __init__(self, script: dict[str, list[int]] | None = None) -> None:
        self.script = script or {}
        self.calls: list[tuple[str, dict, bytes]] = []

    def __call__(self, url: str, headers, body: bytes, timeout_s: float) -> SubscriberReply:
        self.calls.append((url, dict(headers), body))
        statuses = self.script.get(url, [200])
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        if status == 0:
            raise ConnectionRefusedError("connection refused")
        return SubscriberReply(status, {}, b"nope" if status >= 300 else b"")


def created(bucket: str, key: str = "a.png") -> CloudEvent:
    return CloudEvent({"type": "io.minio.object.created", "source": f"minio:{bucket}", "bucket": bucket},
                      {"bucket": bucket, "key": key})


TRIGGERS = [
    Trigger("ingest", "http://ingest", {"type": "io.minio.object.created", "bucket": "inference-inputs"}),
    Trigger("retrain-data", "http://retrain", {"type": "io.minio.object.created", "bucket": "raw-data"}),
    Trigger("retrain-feedback", "http://retrain", {"type": "triage.feedback.received"}),
]


def make_broker(tmp_path, send, dead, clock, retry=2):
    return Broker(TRIGGERS, DeliveryQueue(tmp_path / "q.sqlite"),
                  delivery=DeliverySpec(retry=retry, backoff_delay_s=1.0), send=send, dead_letter=dead.append,
                  clock=clock)


def test_trigger_filters_on_type_and_extension(tmp_path):
    send, dead, clock = RecordingSubscribers(), [], FakeClock()
    broker = make_broker(tmp_path, send, dead, clock)
    assert broker.publish(created("inference-inputs")) == 1
    assert broker.publish(created("raw-data")) == 1
    assert broker.publish(created("feedback")) == 0
    assert broker.publish(CloudEvent({"type": "triage.feedback.received", "source": "triage/feedback"}, {})) == 1
    broker.run_due()
    assert sorted(url for url, _, _ in send.calls) == ["http://ingest", "http://retrain", "http://retrain"]
    headers = send.calls[0][1]
    assert headers["ce-type"] == "io.minio.object.created" and "ce-bucket" in headers  # binary mode, extension kept


def test_failed_delivery_is_retried_with_exponential_backoff_then_succeeds(tmp_path):
    send, dead, clock = RecordingSubscribers({"http://ingest": [500, 0, 200]}), [], FakeClock()
    broker = make_broker(tmp_path, send, dead, clock)
    broker.publish(created("inference-inputs"))
    assert broker.run_due() == 1  # 500
    assert broker.run_due() == 0  # not due before the backoff (1 s)
    clock.now += 1.0
    assert broker.run_due() == 1  # connection refused
    clock.now += 1.5
    assert broker.run_due() == 0  # second backoff is 2 s
    clock.now += 0.5
    assert broker.run_due() == 1
    assert len(send.calls) == 3 and dead == []
    assert broker.queue.counts() == {"done": 1}


def test_delivery_that_keeps_failing_lands_in_dead_letter_with_its_error(tmp_path):
    send, dead, clock = RecordingSubscribers({"http://ingest": [503]}), [], FakeClock()
    broker = make_broker(tmp_path, send, dead, clock, retry=2)
    event = created("inference-inputs", "x.png")
    broker.publish(event)
    for _ in range(6):
        broker.run_due()
        clock.now += 10
    assert len(send.calls) == 3  # first try + 2 retries
    assert len(dead) == 1
    assert dead[0]["event"]["id"] == event["id"] and dead[0]["event"]["data"]["key"] == "x.png"
    assert dead[0]["subscriber"] == dead[0]["trigger"] == "ingest" and dead[0]["attempts"] == 3
    assert dead[0]["error"]["status"] == "503" and "HTTP 503" in dead[0]["error"]["message"]
    assert not any(name.startswith("knativeerror") for name in dead[0]["event"])
    assert broker.queue.counts() == {"dead": 1}


def test_dead_letter_sink_failure_keeps_the_event_queued(tmp_path):
    send, clock = RecordingSubscribers({"http://ingest": [500]}), FakeClock()
    stored = []

    def flaky_sink(record):
        if not stored:
            stored.append(None)
            raise OSError("s3 down")
        stored.append(record)

    broker = Broker(TRIGGERS, DeliveryQueue(tmp_path / "q.sqlite"), delivery=DeliverySpec(retry=0),
                    send=send, dead_letter=flaky_sink, clock=clock)
    broker.publish(created("inference-inputs"))
    broker.run_due()
    assert broker.queue.counts() == {"pending": 1}
    clock.now += 5
    broker.run_due()
    assert broker.queue.counts() == {"dead": 1} and stored[1]["trigger"] == "ingest"


def test_reply_event_is_published(tmp_path):
    clock = FakeClock()
    calls = []

    def send(url, headers, body, timeout_s):
        calls.append(url)
        if url == "http://ingest":
            return SubscriberReply(200, {"ce-specversion": "1.0", "ce-id": "r1", "ce-type": "triage.feedback.received",
                                         "ce-source": "triage/ingest", "content-type": "application/json"}, b"{}")
        return SubscriberReply(204, {}, b"")

    broker = Broker(TRIGGERS, DeliveryQueue(tmp_path / "q.sqlite"), send=send, clock=clock)
    broker.publish(created("inference-inputs"))
    broker.run_due()
    broker.run_due()
    assert calls == ["http://ingest", "http://retrain"]


def test_queue_survives_a_broker_restart_and_redelivers_in_flight_events(tmp_path):
    clock = FakeClock()
    first = Broker(TRIGGERS, DeliveryQueue(tmp_path / "q.sqlite"), send=RecordingSubscribers(), clock=clock)
    first.publish(created("inference-inputs"))
    assert len(first.queue.claim_due(clock(), lease_s=60)) == 1  # in flight when the broker "dies"
    first.queue.close()
    send = RecordingSubscribers()
    second = Broker(TRIGGERS, DeliveryQueue(tmp_path / "q.sqlite"), send=send, clock=clock)
    assert second.run_due() == 1 and send.calls[0][0] == "http://ingest"


def test_delivery_spec_rejects_unknown_policy_and_computes_linear_backoff():
    with pytest.raises(ValueError, match="backoff_policy"):
        DeliverySpec(backoff_policy="random")
    assert [DeliverySpec(backoff_policy="linear", backoff_delay_s=0.5).delay_after(n) for n in (1, 2, 3)] == [
        0.5, 1.0, 1.5]


def test_load_config_names_the_file_on_error(tmp_path):
    bad = tmp_path / "broker.json"
    bad.write_text('{"triggers": [{"name": "x"}]}')
    with pytest.raises(ValueError, match="broker.json"):
        load_config(bad)


def test_http_broker_accepts_binary_and_structured_events_and_delivers(tmp_path):
    received = []
    done = threading.Event()

    class Subscriber(QuietHandler):
        def do_POST(self):  # noqa: N802
            received.append((self.headers["ce-type"], self.headers.get("ce-bucket"), json.loads(self.body())))
            self.reply(200)
            if len(received) == 2:
                done.set()

    sub = LocalServer(Subscriber)
    trigger = Trigger("ingest", sub.url, {"type": "io.minio.object.created", "bucket": "inference-inputs"})
    server = BrokerServer(Broker([trigger], DeliveryQueue(tmp_path / "q.sqlite"))).start(workers=2)
    try:
        binary = {"ce-specversion": "1.0", "ce-id": "1", "ce-type": "io.minio.object.created", "ce-source": "minio:x",
                  "ce-bucket": "inference-inputs", "content-type": "application/json"}
        assert httpx.post(server.url, headers=binary, content=b'{"key": "a"}').status_code == 202
        structured = {"specversion": "1.0", "id": "2", "type": "io.minio.object.created", "source": "minio:x",
                      "bucket": "inference-inputs", "datacontenttype": "application/json", "data": {"key": "b"}}
        response = httpx.post(server.url, headers={"content-type": "application/cloudevents+json"},
                              content=json.dumps(structured))
        assert response.status_code == 202 and response.json()["deliveries"] == 1
        bad = httpx.post(server.url, headers={"content-type": "application/json"}, content=b"{}")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_event"
        huge = httpx.post(server.url, headers=binary, content=b"x" * (2 << 20))
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
        assert done.wait(5)
        assert sorted(r[2]["key"] for r in received) == ["a", "b"]
        assert all(r[1] == "inference-inputs" for r in received)
        assert "broker_deliveries" in httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
        sub.close()


def test_a_trigger_can_override_the_delivery_spec(tmp_path):
    send, dead, clock = RecordingSubscribers({"http://flaky": [500]}), [], FakeClock()
    triggers = [Trigger("flaky", "http://flaky", {"type": "t"}, DeliverySpec(retry=0))]
    broker = Broker(triggers, DeliveryQueue(tmp_path / "q.sqlite"), delivery=DeliverySpec(retry=9), send=send,
                    dead_letter=dead.append, clock=clock)
    broker.publish(CloudEvent({"type": "t", "source": "s"}, {}))
    broker.run_due()
    assert len(send.calls) == 1 and len(dead) == 1  # no retry for this trigger, despite the broker's 9


def test_ping_sources_publish_on_their_schedule_until_stopped():
    from triage.stack.pings import PING, PingSource, run_ping_sources

    class Recording:
        def __init__(self):
            self.events = []

        def publish(self, event):
            self.events.append(event)
            return 1

    broker, stop = Recording(), threading.Event()
    thread = threading.Thread(target=run_ping_sources,
                              args=(broker, [PingSource("fast", 0.05), PingSource("slow", 10.0)], stop))
    thread.start()
    time.sleep(0.4)
    stop.set()
    thread.join(timeout=2)
    assert not thread.is_alive()
    sources = [event["source"] for event in broker.events]
    # 0.4 s at one ping per 0.05 s: about 8, fewer on a loaded machine, never more than 9; none of the slow one.
    assert 2 <= sources.count("/local/pingsources/fast") <= 9 and "/local/pingsources/slow" not in sources
    assert {event["type"] for event in broker.events} == {PING}


def test_the_config_file_carries_ping_sources(tmp_path):
    from triage.stack.broker import PingSource, load_full_config

    path = tmp_path / "broker.json"
    path.write_text(json.dumps({"triggers": [], "pings": [{"name": "monitor-tick", "every_s": 60}]}))
    assert load_full_config(path)[2] == [PingSource("monitor-tick", 60.0)]


def test_each_trigger_is_dispatched_on_its_own_so_slow_deliveries_never_hold_another_triggers(tmp_path):
    """Knative delivers per Trigger: two heatmap-like deliveries holding the one slot of their trigger (workers=1)
    neither delay the flag-like delivery of another trigger nor get a second slot of their own."""
    release, lock = threading.Event(), threading.Lock()
    in_flight, most, delivered = {"http://slow": 0}, {"http://slow": 0}, []

    def send(url, headers, body, timeout_s):
        if url == "http://slow":
            with lock:
                in_flight[url] += 1
                most[url] = max(most[url], in_flight[url])
            release.wait(10)
            with lock:
                in_flight[url] -= 1
        delivered.append((url, json.loads(body)["key"]))
        return SubscriberReply(200, {}, b"")

    triggers = [Trigger("heatmaps", "http://slow", {"type": "triage.heatmap.requested"}),
                Trigger("flags", "http://fast", {"type": "io.minio.object.created"})]
    broker = Broker(triggers, DeliveryQueue(tmp_path / "q.sqlite"), send=send)
    for key in ("h1", "h2"):
        broker.publish(CloudEvent({"type": "triage.heatmap.requested", "source": "triage/ingest"}, {"key": key}))
    broker.start(workers=1)
    try:
        deadline = time.monotonic() + 5
        while in_flight["http://slow"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        broker.publish(created("inference-inputs", "flag"))
        while ("http://fast", "flag") not in delivered and time.monotonic() < deadline:
            time.sleep(0.01)
        assert delivered == [("http://fast", "flag")]  # while the first heatmap still holds its trigger's slot
        release.set()
        while len(delivered) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(delivered) == [("http://fast", "flag"), ("http://slow", "h1"), ("http://slow", "h2")]
        assert most["http://slow"] == 1 and broker.queue.counts() == {"done": 3}
    finally:
        release.set()
        broker.stop()


def test_deliveries_of_a_trigger_removed_from_the_config_die_at_start_without_a_send(tmp_path):
    old = Broker([*TRIGGERS, Trigger("gone", "http://gone", {"type": "io.minio.object.created"})],
                 DeliveryQueue(tmp_path / "q.sqlite"), send=RecordingSubscribers())
    old.publish(created("inference-inputs"))  # one for ingest, one for "gone"
    old.queue.failed(old.queue.claim_due(time.time(), 60, only="gone")[0].id, "down", time.time() + 3600)
    old.queue.close()  # its retry an hour away: still buried at once
    send = RecordingSubscribers()
    broker = Broker(TRIGGERS, DeliveryQueue(tmp_path / "q.sqlite"), send=send)
    broker.start()
    try:
        deadline = time.monotonic() + 5
        while broker.queue.counts() != {"done": 1, "dead": 1} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broker.queue.counts() == {"done": 1, "dead": 1}
        assert [url for url, _, _ in send.calls] == ["http://ingest"]
    finally:
        broker.stop()


def test_the_idle_dispatch_loop_waits_to_be_woken_instead_of_querying_twice_a_second(tmp_path, monkeypatch):
    broker = Broker(TRIGGERS, DeliveryQueue(tmp_path / "q.sqlite"), send=RecordingSubscribers())
    passes = []
    next_due_at = broker.queue.next_due_at
    monkeypatch.setattr(broker.queue, "next_due_at", lambda *a: passes.append(1) or next_due_at(*a))
    broker.start()
    try:
        time.sleep(1.6)
        assert len(passes) == 1  # it was one pass per 0.5 s
        broker.publish(created("inference-inputs"))
        deadline = time.monotonic() + 5
        while broker.queue.counts() != {"done": 1} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broker.queue.counts() == {"done": 1}  # a publish still wakes it
    finally:
        broker.stop()
