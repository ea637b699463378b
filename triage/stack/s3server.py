"""Local S3: moto's server with the project's buckets, bucket notifications, and a durable webhook relay.

Notifications take moto's real path: each notified bucket has a `TopicConfigurations` entry for the SNS
topic `s3-events`, whose HTTP subscription moto's server POSTs to on every object created (checked: moto 5
server mode calls `requests.post` for http subscribers). moto sends that POST once and drops it when the
receiver is down, so the subscriber is this module's relay rather than the adapter itself: the relay writes
the event to a SQLite outbox before answering, then posts it as MinIO's webhook call (plain S3 event JSON,
`Authorization: Bearer <WEBHOOK_TOKEN>`) to the minio-source adapter, retrying until it is accepted — what
MinIO's webhook target does with a `queue_dir`.

moto keeps objects in memory; the server writes every object to `<data dir>/objects` when it stops and loads
them back when it starts (before notifications are configured, so a restore triggers nothing), so the MLflow
artifacts and earlier results outlive `triage up`.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import boto3
import httpx

from shared.events import MAX_EVENT_BYTES
from shared.names import BUCKETS, MLFLOW_BUCKET, NOTIFYING_BUCKETS
from shared.s3_events import BadNotification, parse_notification
from triage.stack.delivery_queue import DeliveryQueue
from triage.stack.httpd import StackHandler, serve_in_thread, threading_server

log = logging.getLogger("triage.s3server")

__all__ = ["EXTRA_BUCKETS", "NOTIFIED_BUCKETS", "S3Server", "WebhookRelay", "configure_notifications",
           "restore_objects", "s3_client", "snapshot_objects", "to_minio_webhook"]

EXTRA_BUCKETS = (MLFLOW_BUCKET,)  # MLflow's artifact store
NOTIFIED_BUCKETS = NOTIFYING_BUCKETS  # uploads that start work (design §4)
TOPIC_NAME = "s3-events"


def s3_client(endpoint_url: str, service: str = "s3", access_key: str = "minioadmin",
              secret_key: str = "minioadmin", region: str = "us-east-1") -> Any:
    return boto3.client(service, endpoint_url=endpoint_url, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name=region)


class S3Server:
    """moto's threaded server on 127.0.0.1:`port` (0 = any free port)."""

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.url = ""

    def start(self) -> S3Server:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()


def configure_notifications(endpoint_url: str, notify_url: str, buckets: Iterable[str] = NOTIFIED_BUCKETS) -> str:
    """SNS topic with an HTTP subscription to `notify_url`, and ObjectCreated notifications of `buckets` to it."""
    sns = s3_client(endpoint_url, "sns")
    s3 = s3_client(endpoint_url)
    topic_arn = sns.create_topic(Name=TOPIC_NAME)["TopicArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="http", Endpoint=notify_url)
    for bucket in buckets:
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={"TopicConfigurations": [
                {"Id": f"{bucket}-created", "TopicArn": topic_arn, "Events": ["s3:ObjectCreated:*"]}]},
        )
    return topic_arn


def snapshot_objects(s3: Any, directory: Path) -> int:
    """Write every object (with its content type and metadata) under `directory/<bucket>/`; returns the count."""
    count = 0
    for bucket in s3.list_buckets()["Buckets"]:
        name = bucket["Name"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                response = s3.get_object(Bucket=name, Key=item["Key"])
                target = directory / name / quote(item["Key"], safe="")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(response["Body"].read())
                target.with_name(target.name + ".meta.json").write_text(json.dumps(
                    {"key": item["Key"], "content_type": response.get("ContentType"),
                     "metadata": response.get("Metadata", {})}))
                count += 1
    return count


def restore_objects(s3: Any, directory: Path) -> int:
    """Load what `snapshot_objects` wrote (buckets already exist or are created); returns the count."""
    count = 0
    if not directory.is_dir():
        return 0
    existing = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    for bucket_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        if bucket_dir.name not in existing:
            s3.create_bucket(Bucket=bucket_dir.name)
        for meta_path in bucket_dir.glob("*.meta.json"):
            meta = json.loads(meta_path.read_text())
            data_path = meta_path.with_name(meta_path.name[: -len(".meta.json")])
            extra: dict[str, Any] = {"Metadata": meta.get("metadata") or {}}
            if meta.get("content_type"):
                extra["ContentType"] = meta["content_type"]
            s3.put_object(Bucket=bucket_dir.name, Key=meta["key"], Body=data_path.read_bytes(), **extra)
            count += 1
    return count


def to_minio_webhook(sns_body: bytes) -> dict[str, Any] | None:
    """An SNS HTTP delivery of an S3 event → MinIO's webhook body; None for test events and handshakes.

    The envelope is read by `shared.s3_events` (the adapter's own parser); the records are written back as MinIO
    sends them: event names prefixed with "s3:", keys URL-encoded.
    """
    records = parse_notification(sns_body).records
    if not records:
        return None  # s3:TestEvent (sent when a notification is configured), SNS handshakes
    minio = []
    for record in records:
        obj: dict[str, Any] = {"key": quote_plus(record.key, safe="/"), "eTag": record.etag}
        if record.size is not None:
            obj["size"] = record.size
        name = record.event_name if record.event_name.startswith("s3:") else f"s3:{record.event_name}"
        minio.append({"eventName": name, **({"eventTime": record.event_time} if record.event_time else {}),
                      "s3": {"bucket": {"name": record.bucket}, "object": obj}})
    first = minio[0]
    return {"EventName": first["eventName"], "Key": f"{records[0].bucket}/{first['s3']['object']['key']}",
            "Records": minio}


class WebhookRelay:
    """Receives moto's SNS deliveries, persists them, and posts them to the adapter until accepted."""

    def __init__(self, target_url: str, token: str, outbox: Path, *, port: int = 0,
                 max_backoff_s: float = 5.0) -> None:
        self.target_url = target_url
        self.token = token
        self.queue = DeliveryQueue(outbox)
        self.max_backoff_s = max_backoff_s
        self.ready = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        relay = self

        class Handler(StackHandler):
            # moto waits for this answer inside the PUT: StackHandler's TCP_NODELAY spares it a delayed-ACK stall.
            max_body_bytes = MAX_EVENT_BYTES

            def do_GET(self) -> None:  # noqa: N802
                ok = relay.ready.is_set()
                self.answer_json(200 if ok else 503, {"ready": ok, "outbox": relay.queue.counts()})

            def do_POST(self) -> None:  # noqa: N802
                body = self.read_body()
                if body is None:
                    return
                try:
                    relay.accept(body)
                except BadNotification as exc:
                    self.answer_error(400, "bad_notification", exc.message)
                    return
                self.answer_json(200, {})

        self.httpd = threading_server(Handler, "127.0.0.1", port)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def accept(self, sns_body: bytes) -> bool:
        webhook = to_minio_webhook(sns_body)
        if webhook is None:
            return False
        self.queue.enqueue(["minio-source"], json.dumps(webhook), time.time())
        self._wake.set()
        return True

    def deliver_due(self, client: httpx.Client) -> None:
        for delivery in self.queue.claim_due(time.time(), lease_s=60):
            try:
                response = client.post(self.target_url, content=delivery.event_json, headers={
                    "Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})
                if response.status_code < 300:
                    self.queue.succeeded(delivery.id)
                    continue
                if 400 <= response.status_code < 500 and response.status_code not in (401, 404, 408, 429):
                    # The adapter rejected the body itself; retrying cannot help. 401/404: misconfigured or
                    # starting up, which an operator fixes, so those are retried.
                    log.error("minio-source rejected a notification: %s %s", response.status_code, response.text)
                    self.queue.dead(delivery.id)
                    continue
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            delay = min(self.max_backoff_s, 0.1 * 2 ** min(delivery.attempts, 10))
            log.warning("webhook to %s failed (%s); retry in %.1fs", self.target_url, error, delay)
            self.queue.failed(delivery.id, error, time.time() + delay)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                self.deliver_due(client)
                next_at = self.queue.next_due_at()
                wait = 1.0 if next_at is None else min(1.0, max(0.01, next_at - time.time()))
                self._wake.wait(wait)
                self._wake.clear()

    def start(self) -> WebhookRelay:
        serve_in_thread(self.httpd, "relay-http")
        self._thread = threading.Thread(target=self._run, name="relay-delivery", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    from shared.config import Settings

    parser = argparse.ArgumentParser(prog="python -m triage.stack.s3server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--relay-port", type=int, default=9001, help="the relay's port (SNS posts here)")
    parser.add_argument("--data-dir", type=Path, required=True, help="objects snapshot and the relay's outbox")
    parser.add_argument("--webhook-url", required=True, help="the minio-source adapter's URL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings.from_env()
    if not settings.webhook_token:
        parser.error("WEBHOOK_TOKEN must be set (the relay authenticates to minio-source with it)")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())

    server = S3Server(args.port).start()
    s3 = s3_client(server.url)
    for bucket in (*BUCKETS, *EXTRA_BUCKETS):
        s3.create_bucket(Bucket=bucket)
    restored = restore_objects(s3, args.data_dir / "objects")
    relay = WebhookRelay(args.webhook_url, settings.webhook_token, args.data_dir / "relay.sqlite",
                         port=args.relay_port).start()
    configure_notifications(server.url, relay.url + "/s3-events")
    relay.ready.set()
    log.info("S3 on %s (restored %d objects), notifications of %s via SNS -> %s -> %s", server.url, restored,
             ", ".join(NOTIFIED_BUCKETS), relay.url, args.webhook_url)
    stopped.wait()
    relay.stop()
    saved = snapshot_objects(s3, args.data_dir / "objects")
    log.info("saved %d objects to %s", saved, args.data_dir / "objects")
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
