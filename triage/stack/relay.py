"""The local S3's notification relay, its own process: outbox events → the minio-source adapter, as MinIO does.

MinIO's webhook target with a `queue_dir`: each event file the S3 process left in the outbox is POSTed as MinIO's
webhook call (plain S3 event JSON, `Authorization: Bearer <WEBHOOK_TOKEN>`) and removed only after a 2xx; a
failure is retried with backoff; a body the adapter refuses for good (a 4xx other than 401/404/408/429) is moved
to `dead/` and logged by event id. Nothing is held only in memory, so a SIGKILL or restart resumes where it
was; an event delivered just before a crash is delivered again, and its deterministic id makes that harmless.

    python -m triage.stack.relay --port 9001 --outbox .triage/s3/outbox --webhook-url http://127.0.0.1:8103/
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path

import httpx

from triage.stack.httpd import StackHandler, serve_in_thread, threading_server
from triage.stack.outbox import Outbox

__all__ = ["Relay"]

log = logging.getLogger("triage.relay")

_RETRIED_4XX = (401, 404, 408, 429)  # misconfigured or starting up: an operator or time fixes these


class Relay:
    """Delivers the outbox's events to `target_url` until each is accepted; `/healthz` on `port`."""

    def __init__(self, outbox: Outbox, target_url: str, token: str, *, port: int = 0, poll_s: float = 1.0,
                 max_backoff_s: float = 5.0) -> None:
        self.outbox = outbox
        self.target_url = target_url
        self.token = token
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self.delivered = 0
        self._retry_at: dict[str, tuple[int, float]] = {}  # event id → (failures, when to try again)
        self._stop = threading.Event()
        self._wake = outbox.wake_channel()
        relay = self

        class Handler(StackHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.split("?")[0] != "/healthz":
                    self.answer_error(404, "not_found", "only GET /healthz is served here")
                    return
                self.answer_json(200, {"ready": True, "delivered": relay.delivered, "outbox": relay.outbox.counts()})

        self.httpd = threading_server(Handler, "127.0.0.1", port)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def deliver_due(self, client: httpx.Client) -> int:
        """One pass over the outbox: post each due event once; returns how many were accepted."""
        accepted = 0
        pending = self.outbox.pending()
        present = {event.id for event in pending}  # a retry of an event gone meanwhile must not time the wait
        self._retry_at = {event_id: retry for event_id, retry in self._retry_at.items() if event_id in present}
        for event in pending:
            failures, retry_at = self._retry_at.get(event.id, (0, 0.0))
            if retry_at > time.monotonic():
                continue
            try:
                response = client.post(self.target_url, content=event.body, headers={
                    "Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})
            except httpx.HTTPError as exc:
                self._later(event.id, failures, f"{type(exc).__name__}")
                break  # the adapter is unreachable: the other events would fail alike
            if response.status_code < 300:
                self.outbox.remove(event.id)
                self._retry_at.pop(event.id, None)
                self.delivered += 1
                accepted += 1
            elif 400 <= response.status_code < 500 and response.status_code not in _RETRIED_4XX:
                log.error("minio-source refused event %s for good (HTTP %s); kept in %s", event.id,
                          response.status_code, self.outbox.dead_dir)
                self.outbox.bury(event.id)
                self._retry_at.pop(event.id, None)
            else:
                self._later(event.id, failures, f"HTTP {response.status_code}")
        return accepted

    def _later(self, event_id: str, failures: int, error: str) -> None:
        delay = min(self.max_backoff_s, 0.1 * 2 ** min(failures, 10))
        log.warning("webhook to %s failed (%s) for event %s; retry in %.1fs", self.target_url, error, event_id, delay)
        self._retry_at[event_id] = (failures + 1, time.monotonic() + delay)

    def run(self) -> None:
        """Deliver what is due, then wait for the S3 process's wake-up, the next retry or `poll_s`, whichever first."""
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                self.deliver_due(client)
                retries = [at for _, at in self._retry_at.values()]
                self._wake.wait(min([self.poll_s, *(at - time.monotonic() for at in retries)]))

    def start(self) -> Relay:
        serve_in_thread(self.httpd, "relay-http")
        self._thread = threading.Thread(target=self.run, name="relay-delivery", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.wake()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=35)
        self._wake.close()


def main(argv: list[str] | None = None) -> int:
    from shared.config import Settings

    parser = argparse.ArgumentParser(prog="python -m triage.stack.relay", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9001, help="the relay's health port")
    parser.add_argument("--outbox", type=Path, required=True, help="the folder the S3 process writes events to")
    parser.add_argument("--webhook-url", required=True, help="the minio-source adapter's URL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    if not settings.webhook_token:
        parser.error("WEBHOOK_TOKEN must be set (the relay authenticates to minio-source with it)")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    relay = Relay(Outbox(args.outbox), args.webhook_url, settings.webhook_token, port=args.port).start()
    log.info("relay on %s: %s -> %s (%d pending)", relay.url, args.outbox, args.webhook_url,
             relay.outbox.counts()["pending"])
    stopped.wait()
    relay.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
