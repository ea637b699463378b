"""Local stand-in for the Knative Eventing broker: CloudEvents in, trigger filters, at-least-once delivery.

Every accepted event is written to a SQLite queue before the sender gets its 202, one row per matching
trigger, so a delivery survives a broker restart and outlasts a subscriber that is down for a while: a failed
delivery is retried with backoff (Knative's `delivery` spec: retry, backoffPolicy, backoffDelay) and, when the
retries are spent, stored in the `dead-letter` bucket with its last error. A subscriber may answer with a
CloudEvent (a Knative reply event); the broker publishes it like any other.

Each trigger is dispatched on its own, as Knative's broker delivers per Trigger: at most `workers` attempts in
flight per trigger, its deliveries oldest first, so a trigger with slow deliveries (ingest's heatmap requests)
never holds the slots of another (the flags of new uploads). A delivery is leased only when a slot is free for it.

Log lines name an event by its id and type, an object by `names.key_ref` (hospitals name files after patients),
and a failed attempt by its HTTP status or exception type only: a subscriber's answer may quote the key, so it
goes into the dead-letter record (the hospital's storage), never into a log line or the queue's last error.
"""

from __future__ import annotations

import argparse
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudevents.conversion import to_json
from cloudevents.http import CloudEvent, from_http, from_json

from shared import metrics
from shared.dead_letter import dead_letter_record, store_dead_letter
from shared.events import MAX_EVENT_BYTES, event_to_binary_http
from shared.names import key_ref
from shared.storage import Storage
from triage.stack.delivery_queue import Delivery, DeliveryQueue
from triage.stack.httpd import StackHandler, serve_in_thread, threading_server
from triage.stack.pings import PingSource, run_ping_sources
from triage.stack.triggers import DeliverySpec, Trigger, load_config, load_full_config

log = logging.getLogger("triage.broker")
# The dispatch loop's longest wait with nothing due: a publish, a finished attempt or a due retry wake it sooner.
IDLE_WAIT_S = 5.0

__all__ = [
    "Broker",
    "BrokerServer",
    "DeliveryQueue",
    "DeliverySpec",
    "SubscriberReply",
    "Trigger",
    "load_config",
    "load_full_config",
    "PingSource",
    "run_ping_sources",
    "s3_dead_letter_sink",
]


@dataclass(frozen=True)
class SubscriberReply:
    status: int
    headers: Mapping[str, str]
    body: bytes


Sender = Callable[[str, Mapping[str, str], bytes, float], SubscriberReply]
DeadLetterSink = Callable[[dict[str, Any]], None]


_client: Any = None
_client_lock = threading.Lock()


def http_sender(url: str, headers: Mapping[str, str], body: bytes, timeout_s: float) -> SubscriberReply:
    """POST one event to a subscriber; a connection error raises (the caller counts it as a failed attempt).

    One pooled client for the process (thread-safe, connections kept alive): a client per call costs its
    TLS context and a new connection, ~10 ms of the broker's CPU per delivery."""
    global _client
    import httpx

    with _client_lock:
        if _client is None:
            _client = httpx.Client(limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))
    response = _client.post(url, headers=dict(headers), content=body, timeout=timeout_s)
    return SubscriberReply(response.status_code, dict(response.headers), response.content)


def event_to_http(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary content mode, as Knative delivers; JSON data without a `datacontenttype` gets application/json."""
    headers, body = event_to_binary_http(event)
    if "content-type" not in {k.lower() for k in headers} and isinstance(event.data, (dict, list)):
        headers["content-type"] = "application/json"
    return headers, body


def event_ref(event: CloudEvent) -> str:
    """How a log line names an event: `id=… type=…`, plus `obj:<hash>` when it announces an object."""
    attributes = event.get_attributes()
    ref = f"{attributes.get('id')} type={attributes.get('type')}"
    data = event.data if isinstance(event.data, dict) else {}
    bucket, key = data.get("bucket", attributes.get("bucket")), data.get("key")
    if isinstance(bucket, str) and isinstance(key, str):
        ref += f" {key_ref(bucket, key)}"
    return ref


def reply_event(reply: SubscriberReply) -> CloudEvent | None:
    """The CloudEvent a subscriber answered with, if any (binary `ce-*` headers or a structured body)."""
    headers = {k.lower(): v for k, v in reply.headers.items()}
    if "ce-specversion" not in headers and not headers.get("content-type", "").startswith(
        "application/cloudevents+json"
    ):
        return None
    return from_http(headers, reply.body)


class Broker:
    """Routes published events to matching triggers and runs deliveries until each succeeds or goes dead."""

    def __init__(
        self,
        triggers: Iterable[Trigger],
        queue: DeliveryQueue,
        *,
        delivery: DeliverySpec | None = None,
        send: Sender = http_sender,
        dead_letter: DeadLetterSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.triggers = {t.name: t for t in triggers}
        self.queue = queue
        self.delivery = delivery or DeliverySpec()
        self._send = send
        self._dead_letter = dead_letter
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._workers = 1
        self._in_flight: dict[str, int] = {name: 0 for name in self.triggers}
        self._slots_lock = threading.Lock()
        self.stats: dict[str, int] = {"received": 0, "delivered": 0, "failed_attempts": 0, "dead_lettered": 0}
        self._stats_lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._stats_lock:  # delivery threads update these concurrently
            self.stats[name] += 1

    def publish(self, event: CloudEvent) -> int:
        """Persist one delivery per matching trigger; returns how many."""
        attributes = event.get_attributes()
        names = [t.name for t in self.triggers.values() if t.matches(attributes)]
        count = self.queue.enqueue(names, to_json(event).decode(), self._clock())
        self._count("received")
        log.info("event %s -> %s", event_ref(event), names or "no trigger")
        self._wake.set()
        return count

    def attempt(self, delivery: Delivery) -> bool:
        """Try one delivery now; returns True when the subscriber acknowledged it (2xx)."""
        trigger = self.triggers.get(delivery.trigger)
        if trigger is None:  # the trigger was removed from the config since: nobody to deliver to
            self.queue.dead(delivery.id)
            return False
        event = from_json(delivery.event_json)
        headers, body = event_to_http(event)
        try:
            reply = self._send(trigger.subscriber, headers, body, (trigger.delivery or self.delivery).timeout_s)
            if 200 <= reply.status < 300:
                answer = reply_event(reply)
                if answer is not None:
                    self.publish(answer)
                self.queue.succeeded(delivery.id)
                self._count("delivered")
                return True
            status: int | None = reply.status
            summary = f"HTTP {reply.status}"
            error = f"{summary}: {reply.body[:300].decode('utf-8', 'replace')}"
        except Exception as exc:  # noqa: BLE001 - any failure to deliver is a failed attempt, retried
            status, error, summary = None, f"{type(exc).__name__}: {exc}", type(exc).__name__
        self._fail(delivery, trigger, event, error, summary, status)
        return False

    def _fail(self, delivery: Delivery, trigger: Trigger, event: CloudEvent, error: str, summary: str,
              status: int | None = None) -> None:
        """`error` (the subscriber's answer) goes to the dead-letter record only; logs and the queue get `summary`."""
        failures = delivery.attempts + 1
        self._count("failed_attempts")
        spec = trigger.delivery or self.delivery
        if failures <= spec.retry:
            delay = spec.delay_after(failures)
            log.warning("delivery %s of event %s to %s failed (%d: %s), retry in %.2fs", delivery.id, event_ref(event),
                        trigger.name, failures, summary, delay)
            self.queue.failed(delivery.id, summary, self._clock() + delay)
            return
        # The record Knative's dead-letter sink would store: the event with Knative's error extensions, in
        # shared.dead_letter's form, keyed by the trigger's name (a service name in the cluster).
        failed = from_json(to_json(event))
        failed["knativeerrordest"] = trigger.subscriber
        if status is not None:
            failed["knativeerrorcode"] = str(status)
        record = dead_letter_record(failed, error=error, subscriber=trigger.name)
        record.update(trigger=trigger.name, attempts=failures)
        try:
            if self._dead_letter is not None:
                self._dead_letter(record)
        except Exception as exc:  # noqa: BLE001 - keep the event queued rather than lose it
            log.error("dead-letter sink failed for delivery %s (%s); trying again later", delivery.id,
                      type(exc).__name__)
            self.queue.failed(delivery.id, summary, self._clock() + max(spec.backoff_delay_s, 1.0))
            return
        log.error("delivery %s of event %s to %s dead-lettered after %d attempts (%s)", delivery.id, event_ref(event),
                  trigger.name, failures, summary)
        self.queue.dead(delivery.id)
        self._count("dead_lettered")

    def run_due(self) -> int:
        """Attempt every due delivery once, in this thread (tests drive the broker with this and a fake clock)."""
        done = 0
        for delivery in self.queue.claim_due(self._clock(), self.delivery.timeout_s + 5):
            self.attempt(delivery)
            done += 1
        return done

    def start(self, workers: int = 4) -> None:
        """Deliver in the background: up to `workers` attempts in flight per trigger."""
        self._workers = max(1, workers)
        self._pool = ThreadPoolExecutor(max_workers=self._workers * max(1, len(self.triggers)),
                                        thread_name_prefix="delivery")
        self._thread = threading.Thread(target=self._dispatch, name="broker-dispatch", daemon=True)
        self._thread.start()

    def _free_slots(self) -> dict[str, int]:
        with self._slots_lock:
            return {name: self._workers - count for name, count in self._in_flight.items() if count < self._workers}

    def _run(self, delivery: Delivery) -> None:
        try:
            self.attempt(delivery)
        finally:
            with self._slots_lock:
                self._in_flight[delivery.trigger] -= 1
            self._wake.set()

    def _dispatch(self) -> None:
        assert self._pool is not None
        lease_s = self.delivery.timeout_s + 5
        # Deliveries of triggers removed from the config since they were written: dead at once, nothing sent. Only
        # a config change makes them (publish enqueues for the triggers there are), so once, before the loop.
        while removed := self.queue.claim_due(math.inf, lease_s, other_than=tuple(self.triggers)):
            for delivery in removed:
                self.attempt(delivery)
        while not self._stop.is_set():
            self._wake.clear()  # a publish or a finished attempt from here on wakes the wait below
            for name, slots in self._free_slots().items():
                for delivery in self.queue.claim_due(self._clock(), lease_s, slots, only=name):
                    with self._slots_lock:
                        self._in_flight[name] += 1
                    self._pool.submit(self._run, delivery)
            open_triggers = list(self._free_slots())
            next_at = self.queue.next_due_at(open_triggers) if open_triggers else None
            # Until woken, or the next delivery (a retry, a lease running out) is due; IDLE_WAIT_S at most.
            wait = IDLE_WAIT_S if next_at is None else min(IDLE_WAIT_S, next_at - self._clock())
            if wait > 0:
                self._wake.wait(max(wait, 0.01))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def s3_dead_letter_sink(storage: Storage) -> DeadLetterSink:
    """Store each dead event as `dead-letter/<trigger>/<event id>.json`, as the dead-letter function does."""

    def store(record: dict[str, Any]) -> None:
        store_dead_letter(storage, record)

    return store


class _Handler(StackHandler):
    broker: Broker
    max_body_bytes = MAX_EVENT_BYTES

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/healthz":
            self.answer_json(200, {"status": "ok", "queue": self.broker.queue.counts()})
        elif self.path == "/metrics":
            self.answer(200, self._metrics().encode(), "text/plain; version=0.0.4")
        else:
            self.answer_error(404, "not_found", f"no route {self.path}")

    def _metrics(self) -> str:
        lines = []
        for name, value in self.broker.stats.items():
            lines += [f"# TYPE broker_{name}_total counter", f"broker_{name}_total {value}"]
        lines.append("# TYPE broker_deliveries gauge")
        for status, count in self.broker.queue.counts().items():
            lines.append(f'broker_deliveries{{status="{status}"}} {count}')
        return "\n".join(lines) + "\n" + metrics.dead_letter_exposition().decode()

    def do_POST(self) -> None:  # noqa: N802
        body = self.read_body()
        if body is None:
            return
        try:
            event = from_http({k.lower(): v for k, v in self.headers.items()}, body)
        except Exception as exc:  # noqa: BLE001 - the SDK raises several types for a malformed event
            self.answer_error(400, "bad_event", f"not a CloudEvent: {exc}")
            return
        count = self.broker.publish(event)
        self.answer_json(202, {"accepted": event["id"], "deliveries": count})


class BrokerServer:
    """The broker behind an HTTP endpoint (POST a CloudEvent to any path), with its delivery workers."""

    def __init__(self, broker: Broker, host: str = "127.0.0.1", port: int = 0) -> None:
        self.broker = broker
        handler = type("BrokerHandler", (_Handler,), {"broker": broker})
        self.httpd = threading_server(handler, host, port)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"

    def start(self, workers: int = 4) -> BrokerServer:
        self.broker.start(workers)
        serve_in_thread(self.httpd, "broker-http")
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.broker.stop()


def main(argv: list[str] | None = None) -> int:
    import signal

    from shared.config import Settings

    parser = argparse.ArgumentParser(prog="python -m triage.stack.broker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="JSON file with triggers and delivery spec")
    parser.add_argument("--state-dir", type=Path, required=True, help="folder for the persisted delivery queue")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=4, help="delivery attempts in flight per trigger (default 4)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    triggers, delivery, pings = load_full_config(args.config)
    storage = Storage.from_settings(Settings.from_env())
    args.state_dir.mkdir(parents=True, exist_ok=True)
    broker = Broker(triggers, DeliveryQueue(args.state_dir / "broker.sqlite"), delivery=delivery,
                    dead_letter=s3_dead_letter_sink(storage))
    server = BrokerServer(broker, port=args.port).start(args.workers)
    log.info("broker on %s with triggers %s", server.url, [t.name for t in triggers])
    stopped = threading.Event()
    threading.Thread(target=run_ping_sources, args=(broker, pings, stopped), name="pings", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
