"""Conditional writes on the test and stack S3 are atomic per object (moto alone checks, then writes, unlocked)."""

from __future__ import annotations

import threading
import time

import boto3
import pytest
from botocore.exceptions import ClientError

from triage.stack.atomic_writes import AtomicObjectWrites


@pytest.fixture
def slow_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's check reads the object 50 ms before the write: every racer is inside the window at once."""
    from moto.s3.models import S3Backend

    original = S3Backend.get_object

    def get_object(self, *args, **kwargs):
        found = original(self, *args, **kwargs)
        time.sleep(0.05)
        return found

    monkeypatch.setattr(S3Backend, "get_object", get_object)


def _race(url: str, key: str, writers: int = 6) -> list[str]:
    """`writers` threads create `key` with If-None-Match: * at once; each one's outcome."""
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="minioadmin",
                          aws_secret_access_key="minioadmin")
    client.create_bucket(Bucket="race")  # moto's backend is one per process: every test races on its own key
    outcomes: list[str] = []
    start = threading.Barrier(writers)

    def write(n: int) -> None:
        start.wait()
        try:
            client.put_object(Bucket="race", Key=key, Body=f"writer {n}".encode(), IfNoneMatch="*")
            outcomes.append("created")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_one_of_many_concurrent_create_if_absent_writes_wins(s3_server: str, slow_check: None) -> None:
    outcomes = _race(s3_server, "fixture-state.json")
    assert outcomes.count("created") == 1 and len(outcomes) == 6, outcomes
    assert set(outcomes) - {"created"} <= {"PreconditionFailed", "ConditionalRequestConflict"}


def test_the_stack_s3_makes_conditional_writes_atomic_too(tmp_path, slow_check: None) -> None:
    from triage.stack.s3server import S3Server

    server = S3Server(tmp_path / "s3").start()
    try:
        server.app.ready.set()
        assert isinstance(server.app.app, AtomicObjectWrites)
        assert _race(server.url, "stack-state.json").count("created") == 1
    finally:
        server.stop()


def test_plain_moto_lets_several_through_which_is_why_the_layer_exists(slow_check: None) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        assert _race(f"http://{host}:{port}", "plain-state.json").count("created") > 1
    finally:
        server.stop()
