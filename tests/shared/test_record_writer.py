"""The request-record writer process: batches land in S3 through a child; a lost child is replaced, no record lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[2]


def test_answers_given_before_the_function_is_sigkilled_keep_their_records(s3_env):
    """The function's whole process group SIGKILLed, as the stack's crash test does, with its batch still lingering:
    the writer child, in its own session, writes every staged record when its input closes."""
    script = textwrap.dedent(f"""
        import json, sys, time, uuid
        sys.path.insert(0, {str(ROOT)!r})
        from shared.config import Settings
        from shared.record_writer import RecordWriterProcess
        from shared.request_records import RequestRecorder

        recorder = RequestRecorder(RecordWriterProcess.for_settings(Settings.from_env()), source="predict",
                                   linger_s=600)
        def answer():
            return recorder.record({{"request_id": uuid.uuid4().hex, "label": "pneumonia"}})["request_id"]
        early = [answer() for _ in range(10)]  # before the writer process runs: handed over when it starts
        time.sleep(1.0)
        print(json.dumps(early), flush=True)
        print(json.dumps([answer() for _ in range(10)]), flush=True)  # staged as they are answered
        time.sleep(600)
    """)
    function = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        assert function.stdout is not None
        early, late = json.loads(function.stdout.readline()), json.loads(function.stdout.readline())
    finally:
        os.killpg(function.pid, signal.SIGKILL)
        function.wait(10)
    assert len(early) == len(late) == 10
    for request_id in early + late:
        record = load_request_record(s3_env, request_id, wait_s=20)
        assert record is not None and record["label"] == "pneumonia", request_id


def test_a_replaced_child_is_handed_the_staged_records_and_a_written_batch_is_not_overwritten(s3_env):
    writer = RecordWriterProcess()
    lost, whole = request_batch_key(uuid.uuid4().hex[:16]), request_batch_key(uuid.uuid4().hex[:16])
    writer.stage(STATE_BUCKET, lost, {"batch": "b1", "source": "predict"}, "b1.x", {"label": "normal"})
    writer.stage(STATE_BUCKET, whole, {"batch": "b2", "source": "predict"}, "b2.y", {"label": "normal"})
    writer.start()
    first = writer.child_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    time.sleep(0.2)
    # The next write starts a new child, which gets both staged records; the batch written whole drops its own.
    writer.put_json(STATE_BUCKET, whole, {"batch": "b2", "records": {"b2.y": {"label": "pneumonia"}, "b2.z": {}}})
    assert writer.child_pid not in (None, first)
    writer.close()  # input closed with b1 still staged: the child writes it
    assert s3_env.get_json(STATE_BUCKET, lost) == {"batch": "b1", "source": "predict",
                                                   "records": {"b1.x": {"label": "normal"}}}
    assert s3_env.get_json(STATE_BUCKET, whole)["records"]["b2.y"] == {"label": "pneumonia"}  # not overwritten
