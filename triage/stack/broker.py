"""Local stand-in for the Knative Eventing broker: CloudEvents in, trigger filters, at-least-once delivery.

Every accepted event is written to a SQLite queue before the sender gets its 202, one row per matching
trigger, so a delivery survives a broker restart and outlasts a subscriber that is down for a while: a failed
delivery is retried with backoff (Knative's `delivery` spec: retry, backoffPolicy, backoffDelay) and, when the
retries are spent, stored in the `dead-letter` bucket with its last error. A subscriber may answer with a
CloudEvent (a Knative reply event); the broker publishes it like any other.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cloudevents.conversion import to_binary, to_json
from cloudevents.http import CloudEvent, from_http, from_json

from shared.dead_letter import dead_letter_record, store_dead_letter
from shared.events import make_event
from shared.storage import Storage

log = logging.getLogger("triage.broker")

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
class DeliverySpec:
    """Knative's delivery spec: `retry` retries after the first try, then the dead-letter sink."""

    retry: int = 5
    backoff_policy: str = "exponential"  # exponential | linear
    backoff_delay_s: float = 0.2
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.backoff_policy not in ("exponential", "linear"):
            raise ValueError(f"delivery.backoff_policy must be exponential or linear, not {self.backoff_policy!r}")
        if self.retry < 0 or self.backoff_delay_s < 0 or self.timeout_s <= 0:
            raise ValueError("delivery.retry and delivery.backoff_delay_s must be >= 0, delivery.timeout_s > 0")

    def delay_after(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt (1-based), as Knative computes it."""
        if self.backoff_policy == "linear":
            return self.backoff_delay_s * failures
        return self.backoff_delay_s * 2 ** (failures - 1)


@dataclass(frozen=True)
class Trigger:
    """Deliver events whose attributes equal every `filters` entry (type, source or an extension) to `subscriber`."""

    name: str
    subscriber: str
    filters: Mapping[str, str] = field(default_factory=dict)
    delivery: DeliverySpec | None = None  # overrides the broker's, as a Knative Trigger's `delivery` does

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return all(str(attributes.get(key)) == str(value) for key, value in self.filters.items())


@dataclass(frozen=True)
class SubscriberReply:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Delivery:
    id: int
    trigger: str
    event_json: str
    attempts: int
    last_error: str | None


Sender = Callable[[str, Mapping[str, str], bytes, float], SubscriberReply]
DeadLetterSink = Callable[[dict[str, Any]], None]


class DeliveryQueue:
    """Deliveries persisted in SQLite: pending (due at `next_at`), in flight (leased until `next_at`), done, dead."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._lock = threading.Lock()
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT, trigger TEXT NOT NULL,"
            " event_json TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
            " next_at REAL NOT NULL, last_error TEXT)"
        )
        # Deliveries in flight when the broker died were never acknowledged: they are due again (at least once).
        self._db.execute("UPDATE deliveries SET status = 'pending', next_at = 0 WHERE status = 'inflight'")

    def enqueue(self, triggers: Iterable[str], event_json: str, now: float) -> int:
        rows = [(name, event_json, now) for name in triggers]
        with self._lock:
            self._db.executemany(
                "INSERT INTO deliveries (trigger, event_json, status, next_at) VALUES (?, ?, 'pending', ?)", rows
            )
        return len(rows)

    def claim_due(self, now: float, lease_s: float, limit: int = 32) -> list[Delivery]:
        """Due deliveries, leased for `lease_s` so a stuck attempt is retried rather than lost."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, trigger, event_json, attempts, last_error FROM deliveries"
                " WHERE status IN ('pending', 'inflight') AND next_at <= ? ORDER BY next_at, id LIMIT ?",
                (now, limit),
            ).fetchall()
            self._db.executemany(
                "UPDATE deliveries SET status = 'inflight', next_at = ? WHERE id = ?",
                [(now + lease_s, row[0]) for row in rows],
            )
        return [Delivery(*row) for row in rows]

    def succeeded(self, delivery_id: int) -> None:
        with self._lock:
            self._db.execute("UPDATE deliveries SET status = 'done', last_error = NULL WHERE id = ?", (delivery_id,))

    def failed(self, delivery_id: int, error: str, next_at: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET status = 'pending', attempts = attempts + 1, last_error = ?, next_at = ?"
                " WHERE id = ?",
                (error, next_at, delivery_id),
            )

    def dead(self, delivery_id: int) -> None:
        with self._lock:
            self._db.execute("UPDATE deliveries SET status = 'dead' WHERE id = ?", (delivery_id,))

    def next_due_at(self) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_at) FROM deliveries WHERE status IN ('pending', 'inflight')"
            ).fetchone()
        return row[0]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status").fetchall()
        return {status: count for status, count in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def http_sender(url: str, headers: Mapping[str, str], body: bytes, timeout_s: float) -> SubscriberReply:
    """POST one event to a subscriber; a connection error raises (the caller counts it as a failed attempt)."""
    import httpx

    response = httpx.post(url, headers=dict(headers), content=body, timeout=timeout_s)
    return SubscriberReply(response.status_code, dict(response.headers), response.content)


def event_to_http(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary content mode, as Knative delivers; JSON data gets `Content-Type: application/json`."""
    headers, body = to_binary(event)
    if "content-type" not in {k.lower() for k in headers} and isinstance(event.data, (dict, list)):
        headers["content-type"] = "application/json"
    return dict(headers), body or b""


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
        log.info("event %s type=%s -> %s", attributes.get("id"), attributes.get("type"), names or "no trigger")
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
            error = f"HTTP {reply.status}: {reply.body[:300].decode('utf-8', 'replace')}"
        except Exception as exc:  # noqa: BLE001 - any failure to deliver is a failed attempt, retried
            status, error = None, f"{type(exc).__name__}: {exc}"
        self._fail(delivery, trigger, event, error, status)
        return False

    def _fail(self, delivery: Delivery, trigger: Trigger, event: CloudEvent, error: str,
              status: int | None = None) -> None:
        failures = delivery.attempts + 1
        self._count("failed_attempts")
        spec = trigger.delivery or self.delivery
        if failures <= spec.retry:
            delay = spec.delay_after(failures)
            log.warning("delivery %s to %s failed (%d), retry in %.2fs: %s", delivery.id, trigger.name, failures,
                        delay, error)
            self.queue.failed(delivery.id, error, self._clock() + delay)
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
            log.error("dead-letter sink failed for delivery %s: %s; trying again later", delivery.id, exc)
            self.queue.failed(delivery.id, error, self._clock() + max(spec.backoff_delay_s, 1.0))
            return
        log.error("delivery %s to %s dead-lettered after %d attempts: %s", delivery.id, trigger.name, failures, error)
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
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="delivery")
        self._thread = threading.Thread(target=self._dispatch, name="broker-dispatch", daemon=True)
        self._thread.start()

    def _dispatch(self) -> None:
        assert self._pool is not None
        while not self._stop.is_set():
            due = self.queue.claim_due(self._clock(), self.delivery.timeout_s + 5)
            for delivery in due:
                self._pool.submit(self.attempt, delivery)
            next_at = self.queue.next_due_at()
            wait = 0.5 if next_at is None else min(0.5, max(0.0, next_at - self._clock()))
            if not due:
                self._wake.wait(max(wait, 0.01))
                self._wake.clear()

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


def load_config(path: Path) -> tuple[list[Trigger], DeliverySpec]:
    """`{"triggers": [{"name", "subscriber", "filter", "delivery"?}], "delivery": {...}}` → triggers, default spec."""
    triggers, delivery, _pings = load_full_config(path)
    return triggers, delivery


def load_full_config(path: Path) -> tuple[list[Trigger], DeliverySpec, list[PingSource]]:
    """`load_config` plus `"pings": [{"name", "every_s"}]`, the PingSource stand-ins."""
    try:
        raw = json.loads(Path(path).read_text())
        triggers = [Trigger(t["name"], t["subscriber"], dict(t.get("filter", {})),
                            DeliverySpec(**t["delivery"]) if t.get("delivery") else None) for t in raw["triggers"]]
        delivery = DeliverySpec(**raw.get("delivery", {}))
        pings = [PingSource(p["name"], float(p["every_s"])) for p in raw.get("pings", [])]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: invalid broker config: {exc}") from exc
    return triggers, delivery, pings


PING = "dev.knative.sources.ping"


@dataclass(frozen=True)
class PingSource:
    """Knative's PingSource, locally: every `every_s` seconds a `dev.knative.sources.ping` event into the broker,
    source `/local/pingsources/<name>`, for the triggers to route (the monitor's and the canary's ticks)."""

    name: str
    every_s: float

    @property
    def source(self) -> str:
        return f"/local/pingsources/{self.name}"

    def event(self) -> CloudEvent:
        return make_event(PING, self.source, {})


def run_ping_sources(broker: Broker, pings: Iterable[PingSource], stop: threading.Event,
                     clock: Callable[[], float] = time.monotonic) -> None:
    """Publish each source's ping when due, until `stop` is set (run it on a thread)."""
    due = {ping.name: clock() + ping.every_s for ping in pings}
    by_name = {ping.name: ping for ping in pings}
    while due and not stop.is_set():
        name = min(due, key=due.__getitem__)
        if stop.wait(max(0.0, due[name] - clock())):
            return
        broker.publish(by_name[name].event())
        due[name] = clock() + by_name[name].every_s


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    broker: Broker

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without TCP_NODELAY the body waits for a delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        log.debug(format, *args)

    def _answer(self, status: int, payload: dict[str, Any] | str, content_type: str = "application/json") -> None:
        body = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/healthz":
            self._answer(200, {"status": "ok", "queue": self.broker.queue.counts()})
        elif self.path == "/metrics":
            self._answer(200, self._metrics(), "text/plain; version=0.0.4")
        else:
            self._answer(404, {"error": {"code": "not_found", "message": f"no route {self.path}"}})

    def _metrics(self) -> str:
        lines = []
        for name, value in self.broker.stats.items():
            lines += [f"# TYPE broker_{name}_total counter", f"broker_{name}_total {value}"]
        lines.append("# TYPE broker_deliveries gauge")
        for status, count in self.broker.queue.counts().items():
            lines.append(f'broker_deliveries{{status="{status}"}} {count}')
        return "\n".join(lines) + "\n"

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            event = from_http({k.lower(): v for k, v in self.headers.items()}, body)
        except Exception as exc:  # noqa: BLE001 - the SDK raises several types for a malformed event
            self._answer(400, {"error": {"code": "bad_event", "message": f"not a CloudEvent: {exc}"}})
            return
        count = self.broker.publish(event)
        self._answer(202, {"accepted": event["id"], "deliveries": count})


class BrokerServer:
    """The broker behind an HTTP endpoint (POST a CloudEvent to any path), with its delivery workers."""

    def __init__(self, broker: Broker, host: str = "127.0.0.1", port: int = 0) -> None:
        self.broker = broker
        handler = type("BrokerHandler", (_Handler,), {"broker": broker})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self, workers: int = 4) -> BrokerServer:
        self.broker.start(workers)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="broker-http", daemon=True)
        self._thread.start()
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
    parser.add_argument("--workers", type=int, default=4)
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
