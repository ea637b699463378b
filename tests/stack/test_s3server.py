"""The local S3 and its relay: uploads reach the adapter as MinIO webhook calls through the durable outbox."""

from __future__ import annotations

import threading
import time

import httpx

from shared.s3_events import check_webhook_auth, parse_notification
from tests.local_http import LocalServer, QuietHandler
from tests.stack.s3_process import S3Process
from triage.stack.outbox import Outbox, minio_webhook
from triage.stack.relay import Relay
from triage.stack.s3server import outbox_dir


class Adapter(LocalServer):
    """Stands in for minio-source: checks the token with the adapter's own code, records created objects."""

    def __init__(self, token: str, fail_first: int = 0) -> None:
        self.records: list = []
        self.fail_left = fail_first
        self.arrived = threading.Event()
        self.status = 200  # the answer once `fail_first` tries have failed
        self.calls = 0
        adapter = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802
                body = self.body()
                adapter.calls += 1
                status = adapter.status
                if adapter.fail_left > 0:
                    adapter.fail_left -= 1
                    status = 503
                elif status < 300:
                    check_webhook_auth(self.headers.get("Authorization"), token)
                    adapter.records += parse_notification(body).records
                    adapter.arrived.set()
                self.reply(status)

        super().__init__(Handler)


INPUTS, RESULTS = "inference-inputs", "inference-results"


def wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_upload_reaches_the_adapter_as_minio_webhook_even_when_it_was_down(tmp_path):
    adapter = Adapter("s3cret", fail_first=2)  # down for the first two tries
    with S3Process(tmp_path / "s3") as s3:
        relay = Relay(Outbox(outbox_dir(tmp_path / "s3")), adapter.url, "s3cret", max_backoff_s=0.2).start()
        try:
            client = s3.client()
            client.put_object(Bucket=INPUTS, Key="ward 3/case+1.png", Body=b"img")
            client.put_object(Bucket=RESULTS, Key="not-notified.json", Body=b"{}")
            assert adapter.arrived.wait(10)
            assert wait_for(lambda: relay.outbox.counts() == {"pending": 0, "dead": 0})
            [record] = adapter.records
            assert (record.bucket, record.key) == (INPUTS, "ward 3/case+1.png")
            assert record.etag == client.head_object(Bucket=INPUTS, Key="ward 3/case+1.png")["ETag"].strip('"')
            assert record.event_name == "s3:ObjectCreated:Put"
            assert adapter.calls == 3 and relay.delivered == 1
        finally:
            relay.stop()
            adapter.close()


def test_relay_outbox_survives_a_restart(tmp_path):
    adapter = Adapter("t")
    outbox = Outbox(tmp_path / "outbox")
    outbox.add("raw-data", "a.npz", "e1", minio_webhook("raw-data", "a.npz", "e1", 3, "2026-01-01T00:00:00.000Z"))
    down = Relay(outbox, "http://127.0.0.1:9/", "t")  # nothing listens there: every try fails
    down.deliver_due(httpx.Client(timeout=2))
    down.httpd.server_close()  # stands for a crash: only the outbox folder is left
    relay = Relay(Outbox(tmp_path / "outbox"), adapter.url, "t").start()
    try:
        assert adapter.arrived.wait(10)
        assert [r.key for r in adapter.records] == ["a.npz"]
        assert wait_for(lambda: relay.outbox.counts()["pending"] == 0)
        health = httpx.get(relay.url + "/healthz").json()
        assert health == {"ready": True, "delivered": 1, "outbox": {"pending": 0, "dead": 0}}
        assert httpx.get(relay.url + "/other").status_code == 404
    finally:
        relay.stop()
        adapter.close()


def test_a_body_the_adapter_refuses_for_good_moves_to_dead_and_a_401_is_retried(tmp_path):
    adapter = Adapter("t")
    adapter.status = 422
    outbox = Outbox(tmp_path / "outbox")
    outbox.add("raw-data", "bad", "e1", {"Records": "not a list"})
    with httpx.Client(timeout=5) as client:
        relay = Relay(outbox, adapter.url, "t")
        relay.deliver_due(client)
        assert outbox.counts() == {"pending": 0, "dead": 1}
        adapter.status = 401  # a wrong token is the operator's to fix: kept and retried
        outbox.add("raw-data", "b", "e2", minio_webhook("raw-data", "b", "e2", 1, None))
        relay.deliver_due(client)
        assert outbox.counts() == {"pending": 1, "dead": 1}
    relay.httpd.server_close()
    adapter.close()


def test_the_relay_waits_on_the_outbox_s_wake_up_not_on_a_poll(tmp_path, monkeypatch):
    """Idle, it lists the folder once per poll_s (it listed it 50 times a second); an event is sent at once."""
    adapter = Adapter("t")
    outbox = Outbox(tmp_path / "outbox")
    listings = []
    pending = outbox.pending
    monkeypatch.setattr(outbox, "pending", lambda: listings.append(time.monotonic()) or pending())
    relay = Relay(outbox, adapter.url, "t", poll_s=30.0).start()
    try:
        time.sleep(0.5)
        assert len(listings) == 1  # the pass at start, then nothing until woken
        sent = time.monotonic()
        Outbox(tmp_path / "outbox").add("raw-data", "a.npz", "e1", minio_webhook("raw-data", "a.npz", "e1", 3, None))
        assert adapter.arrived.wait(5) and time.monotonic() - sent < 5  # far sooner than the 30 s poll
        assert wait_for(lambda: outbox.counts()["pending"] == 0)
    finally:
        stopping = time.monotonic()
        relay.stop()
        assert time.monotonic() - stopping < 5  # stop wakes the wait too
        adapter.close()


def test_a_retry_of_an_event_removed_meanwhile_does_not_make_the_relay_spin(tmp_path, monkeypatch):
    outbox = Outbox(tmp_path / "outbox")
    outbox.add("raw-data", "a.npz", "e1", minio_webhook("raw-data", "a.npz", "e1", 3, None))
    relay = Relay(outbox, "http://127.0.0.1:9/", "t", max_backoff_s=0.05)  # every try fails
    with httpx.Client(timeout=2) as client:
        relay.deliver_due(client)
    for path in (tmp_path / "outbox").glob("*.json"):
        path.unlink()  # gone, with its retry time soon in the past
    listings = []
    pending = outbox.pending
    monkeypatch.setattr(outbox, "pending", lambda: listings.append(1) or pending())
    relay.poll_s = 0.3
    relay.start()
    time.sleep(1.0)
    relay.stop()
    assert len(listings) <= 6  # one pass per poll_s: a stale retry time would have timed waits of 0 s


def test_a_stray_file_where_the_wake_fifo_goes_is_replaced(tmp_path):
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox" / ".wake").write_text("not a fifo")
    channel = Outbox(tmp_path / "outbox").wake_channel()
    try:
        Outbox(tmp_path / "outbox").add("raw-data", "a", "e1", minio_webhook("raw-data", "a", "e1", 1, None))
        assert channel.wait(2.0) and not channel.wait(0.05)  # woken once, and drained
    finally:
        channel.close()
