"""The request-record writer process: batches land in S3 through a child; a lost child is replaced, no record lost."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid

import pytest

from shared.names import STATE_BUCKET, request_batch_key
from shared.record_writer import RecordWriterProcess
from shared.request_records import RequestRecorder, load_request_record
from shared.storage import StorageUnavailable


@pytest.fixture
def s3_env(storage, s3_server, monkeypatch):
    """The child reads the function's environment: the local S3 server and its credentials."""
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server)
    return storage


def test_a_batch_written_through_the_child_is_in_s3_and_the_child_exits_when_closed(s3_env):
    writer = RecordWriterProcess()
    assert writer.child_pid is None  # nothing started before the first write
    key = request_batch_key(uuid.uuid4().hex[:16])
    etag = writer.put_json(STATE_BUCKET, key, {"records": {"a.b": {"label": "normal"}}})
    assert etag and s3_env.get_json(STATE_BUCKET, key) == {"records": {"a.b": {"label": "normal"}}}
    pid = writer.child_pid
    assert pid is not None and pid != os.getpid()
    writer.put_json(STATE_BUCKET, key + ".2", {"n": 2})
    assert writer.child_pid == pid  # one child for every write
    writer.close()
    assert writer.child_pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_write_the_child_cannot_do_is_a_storage_error_and_the_child_stays(s3_env):
    writer = RecordWriterProcess()
    try:
        with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
            writer.put_json("no-such-bucket", "k.json", {"x": 1})
        pid = writer.child_pid
        assert pid is not None
        writer.put_json(STATE_BUCKET, "requests/batches/ok.json", {"x": 1})
        assert writer.child_pid == pid
    finally:
        writer.close()


def test_the_child_ignores_sigterm_and_a_killed_child_is_replaced(s3_env):
    writer = RecordWriterProcess()
    try:
        writer.put_json(STATE_BUCKET, "requests/batches/one.json", {"x": 1})
        first = writer.child_pid
        assert first is not None
        os.kill(first, signal.SIGTERM)  # the stack signals a function's process group: the child keeps serving
        time.sleep(0.2)
        writer.put_json(STATE_BUCKET, "requests/batches/two.json", {"x": 2})
        assert writer.child_pid == first
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        writer.put_json(STATE_BUCKET, "requests/batches/three.json", {"x": 3})  # a new child
        assert writer.child_pid not in (None, first)
        assert s3_env.get_json(STATE_BUCKET, "requests/batches/three.json") == {"x": 3}
    finally:
        writer.close()


def test_a_child_that_dies_mid_write_is_an_error_then_the_recorder_retries_until_the_batch_lands(s3_env, tmp_path):
    """The first child exits before answering; the recorder retries, the next child writes the batch."""
    marker = tmp_path / "died-once"
    script = (
        "import os, sys, pathlib\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "if not m.exists():\n"
        "    m.write_text('x'); sys.stdin.buffer.readline(); os._exit(3)\n"
        "from shared.record_writer import main\n"
        "raise SystemExit(main())\n"
    )
    writer = RecordWriterProcess([sys.executable, "-c", script])
    with pytest.raises(StorageUnavailable, match="exited before answering"):
        writer.put_json(STATE_BUCKET, "requests/batches/lost.json", {"x": 1})
    recorder = RequestRecorder(writer, source="predict", linger_s=0.0, retry_delays_s=(0.01,))
    marker.unlink()
    request_id = recorder.record({"request_id": uuid.uuid4().hex, "label": "normal"})["request_id"]
    assert recorder.close(20)
    assert load_request_record(s3_env, request_id)["label"] == "normal"
    assert writer.child_pid is None  # closed with the recorder


def test_the_recorder_of_a_function_writes_through_a_child_process(s3_env):
    from shared.config import Settings

    recorder = RequestRecorder.from_settings(Settings.from_env(), source="predict")
    request_id = recorder.record({"request_id": uuid.uuid4().hex, "label": "pneumonia"})["request_id"]
    assert recorder.flush(20)
    assert isinstance(recorder.storage, RecordWriterProcess) and recorder.storage.child_pid is not None
    assert load_request_record(s3_env, request_id)["label"] == "pneumonia"
    assert recorder.close(20)


def test_request_record_writer_thread_writes_from_the_functions_own_process(s3_env, monkeypatch):
    from shared.config import ConfigError, Settings
    from shared.storage import Storage

    monkeypatch.setenv("REQUEST_RECORD_WRITER", "thread")
    recorder = RequestRecorder.from_settings(Settings.from_env(), source="explain")
    request_id = recorder.record({"request_id": uuid.uuid4().hex, "label": "normal"})["request_id"]
    assert recorder.close(20) and isinstance(recorder.storage, Storage)
    assert load_request_record(s3_env, request_id)["source"] == "explain"
    monkeypatch.setenv("REQUEST_RECORD_WRITER", "fork")
    with pytest.raises(ConfigError, match="REQUEST_RECORD_WRITER"):
        Settings.from_env()


def test_the_child_writes_to_the_s3_of_the_settings_not_only_of_the_environment(storage, s3_server, monkeypatch):
    from shared.config import Settings

    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    writer = RecordWriterProcess.for_settings(Settings(s3_endpoint_url=s3_server))
    try:
        writer.put_json(STATE_BUCKET, "requests/batches/from-settings.json", {"x": 1})
    finally:
        writer.close()
    assert storage.get_json(STATE_BUCKET, "requests/batches/from-settings.json") == {"x": 1}
