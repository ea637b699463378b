"""moto's S3 server with real SNS → HTTP notifications, the durable webhook relay, snapshot and restore."""

from __future__ import annotations

import json
import threading
import time

import pytest

from shared.s3_events import check_webhook_auth, parse_notification
from tests.local_http import LocalServer, QuietHandler
from triage.stack.s3server import (
    WebhookRelay,
    configure_notifications,
    restore_objects,
    s3_client,
    snapshot_objects,
)


class Adapter(LocalServer):
    """Stands in for minio-source: checks the token with the adapter's own code, records created objects."""

    def __init__(self, token: str, fail_first: int = 0) -> None:
        self.records: list = []
        self.fail_left = fail_first
        self.arrived = threading.Event()
        adapter = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802
                body = self.body()
                status = 200
                if adapter.fail_left > 0:
                    adapter.fail_left -= 1
                    status = 503
                else:
                    check_webhook_auth(self.headers.get("Authorization"), token)
                    adapter.records += parse_notification(body).records
                    adapter.arrived.set()
                self.reply(status)

        super().__init__(Handler)


INPUTS, RESULTS, RAW = "s3srv-inputs", "s3srv-results", "s3srv-raw"


@pytest.fixture(scope="module")
def s3_url(s3_server):
    """The suite's moto server (tests/conftest.py), with this module's own buckets."""
    client = s3_client(s3_server)
    for bucket in (INPUTS, RESULTS, RAW):
        client.create_bucket(Bucket=bucket)
    return s3_server


def wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_upload_reaches_the_adapter_as_minio_webhook_even_when_it_was_down(s3_url, tmp_path):
    adapter = Adapter("s3cret", fail_first=2)  # down for the first two tries
    relay = WebhookRelay(adapter.url, "s3cret", tmp_path / "relay.sqlite", max_backoff_s=0.2).start()
    try:
        configure_notifications(s3_url, relay.url + "/s3-events", buckets=[INPUTS])
        client = s3_client(s3_url)
        client.put_object(Bucket=INPUTS, Key="ward 3/case+1.png", Body=b"img")
        client.put_object(Bucket=RESULTS, Key="not-notified.json", Body=b"{}")
        assert adapter.arrived.wait(10)
        assert wait_for(lambda: relay.queue.counts() == {"done": 1})
        [record] = adapter.records
        assert (record.bucket, record.key) == (INPUTS, "ward 3/case+1.png")
        assert record.etag == client.head_object(Bucket=INPUTS, Key="ward 3/case+1.png")["ETag"].strip('"')
        assert record.event_name == "s3:ObjectCreated:Put"
    finally:
        relay.stop()
        adapter.close()


def test_relay_outbox_survives_a_restart(tmp_path):
    adapter = Adapter("t")
    down = WebhookRelay("http://127.0.0.1:9/", "t", tmp_path / "relay.sqlite")  # never started: stands for a crash
    message = {"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2026-01-01T00:00:00Z",
                            "s3": {"bucket": {"name": "raw-data"}, "object": {"key": "a.npz", "eTag": "e1"}}}]}
    assert down.accept(json.dumps({"Type": "Notification", "Message": json.dumps(message)}).encode())
    assert not down.accept(json.dumps({"Type": "Notification", "Message": json.dumps(
        {"Event": "s3:TestEvent"})}).encode())
    down.queue.close()
    down.httpd.server_close()
    relay = WebhookRelay(adapter.url, "t", tmp_path / "relay.sqlite").start()
    try:
        assert adapter.arrived.wait(10)
        assert [r.key for r in adapter.records] == ["a.npz"]
    finally:
        relay.stop()
        adapter.close()


def test_snapshot_and_restore_keep_objects_with_content_type_and_metadata(s3_url, tmp_path):
    client = s3_client(s3_url)
    client.put_object(Bucket=RAW, Key="dir/a b.bin", Body=b"\x00\x01", ContentType="application/x-test",
                      Metadata={"source": "unit"})
    assert snapshot_objects(client, tmp_path / "objects") >= 1
    # moto's backends are per process, so a second server here would share them: delete the object instead.
    client.delete_object(Bucket=RAW, Key="dir/a b.bin")
    assert restore_objects(client, tmp_path / "objects") >= 1
    restored = client.get_object(Bucket=RAW, Key="dir/a b.bin")
    assert restored["Body"].read() == b"\x00\x01"
    assert restored["ContentType"] == "application/x-test" and restored["Metadata"] == {"source": "unit"}
