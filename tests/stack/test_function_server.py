"""A function's local process (`triage.stack.function_server`): functions-framework under gunicorn whose threads no
slow client can hold — 50 connections sending their headers a byte at a time do not stall a normal request."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from shared.config import PROJECT_ROOT
from triage.stack import function_server
from triage.stack.function_server import _BoundedSocket
from triage.stack.processes import unused_port_block
from triage.stack.stack import Stack

HELLO = """
import gc
import functions_framework

@functions_framework.http
def hello(request):
    if request.args.get("gc"):  # what the server did to the collector before it forked this worker
        return {"frozen": gc.get_freeze_count(), "enabled": gc.isenabled()}
    return {"ok": True, "bytes": len(request.get_data())}
"""


@pytest.fixture
def function_port(tmp_path):
    source = tmp_path / "main.py"
    source.write_text(HELLO)
    port = unused_port_block(1)[0]
    argv = Stack.function_argv("hello", port)  # how the stack starts every function
    argv[argv.index("--source") + 1] = str(source)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "THREADS": "2", "WORKERS": "1", "HOME": str(tmp_path)}
    env.pop("XDG_RUNTIME_DIR", None)  # gunicorn's control socket would go to $XDG_RUNTIME_DIR, else ~/.gunicorn
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_stack_starts_functions_under_the_bounded_server():
    argv = Stack.function_argv("predict", 8101)
    assert argv[:3] == [sys.executable, "-m", "triage.stack.function_server"]
    assert argv[argv.index("--source") + 1].endswith("functions/predict/main.py")


def test_the_function_server_starts_no_gunicorn_control_socket(function_port, tmp_path):
    # gunicorn >= 25.1 would import asyncio in the master during the worker's cold start and bind
    # ~/.gunicorn/gunicorn.ctl, one path for every function of the stack (GUNICORN_OPTIONS)
    port, _ = function_port
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    time.sleep(0.5)  # gunicorn starts it after the worker is forked
    assert not (tmp_path / ".gunicorn").exists()


def test_the_worker_inherits_the_imported_app_frozen_and_collects_as_usual(function_port):
    # no collections while the app is imported, gc.freeze() before the fork (Python's gc docs for pre-fork servers)
    port, _ = function_port
    state = httpx.get(f"http://127.0.0.1:{port}/?gc=1", timeout=5).json()
    assert state["frozen"] > 10_000 and state["enabled"] is True


def test_slow_header_connections_do_not_stall_a_normal_request(function_port):
    port, _ = function_port
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    stop = threading.Event()

    def drip() -> None:  # each sends a header byte now and then, and never ends its head
        for sock in slow:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        while not stop.wait(0.3):
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        time.sleep(1.5)  # every slow connection has reached the server and is mid-head
        for _ in range(3):
            started = time.monotonic()
            response = httpx.post(f"http://127.0.0.1:{port}/", content=b"abc", timeout=20)
            assert response.status_code == 200 and response.json() == {"ok": True, "bytes": 3}
            assert time.monotonic() - started < 5.0  # unbounded before: it waited for the slow clients' threads
    finally:
        stop.set()
        dripper.join(timeout=5)
        for sock in slow:
            sock.close()


def test_refusals_of_the_function_server_are_json(function_port):
    port, _ = function_port
    for raw, status in [(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
                        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400)]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status}".encode()) and b"application/json" in head, answer[:200]
        assert json.loads(body)["error"]["message"]


def test_a_head_is_gathered_without_waiting_and_expires(monkeypatch):
    monkeypatch.setattr(function_server, "HEAD_TIMEOUT_S", 0.2)
    server_side, client_side = socket.socketpair()
    try:
        bounded = _BoundedSocket(server_side)
        assert bounded.gather_head() == "wait"  # nothing yet: back to the poller, no thread waits
        client_side.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert bounded.gather_head() == "wait"  # half a head
        client_side.sendall(b"\r\n")
        assert bounded.gather_head() == "ready"
        bounded.head_read()
        assert bounded.recv(7) == b"GET / H"  # the parser gets the gathered bytes first

        slow = _BoundedSocket(server_side)
        client_side.sendall(b"GET / HTTP/1.1\r\n")
        assert slow.gather_head() == "wait"
        time.sleep(0.3)
        client_side.sendall(b"X")
        assert slow.gather_head() == "expired"  # a head still not whole HEAD_TIMEOUT_S after its first byte
    finally:
        server_side.close()
        client_side.close()


def test_a_head_past_its_time_is_answered_408_in_json():
    answer = function_server._timeout_answer()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"Content-Type: application/json" in head
    assert b'"request_timeout"' in body and f"Content-Length: {len(body)}".encode() in head


def test_the_heartbeat_to_the_arbiter_is_sent_at_most_once_per_interval(monkeypatch):
    """gthread calls notify() on every wake-up of its loop (about twice per request); the worker passes one a second."""
    from gunicorn.workers import gthread

    sent: list[float] = []
    monkeypatch.setattr(gthread.ThreadWorker, "notify", lambda self: sent.append(time.monotonic()))
    worker = object.__new__(function_server.BoundedThreadWorker)
    worker._notified_at = -function_server.HEARTBEAT_S
    for _ in range(100):
        worker.notify()
    assert len(sent) == 1
    worker._notified_at -= function_server.HEARTBEAT_S  # as if a second had passed
    worker.notify()
    worker.notify()
    assert len(sent) == 2


def test_request_threads_come_from_the_flag_then_threads_then_the_function_then_the_framework():
    from shared import topology

    assert topology.function("predict").threads == topology.function("explain").threads == topology.MODEL_THREADS == 2
    assert function_server.request_threads("predict", env={}) == 2  # the model's functions: their own
    assert function_server.request_threads("ingest", env={}) is None  # functions-framework's default
    assert function_server.request_threads("hello", env={}) is None  # not a function of the topology
    assert function_server.request_threads("predict", env={"THREADS": "6"}) == 6  # the operator's, for all
    assert function_server.request_threads("predict", 3, env={"THREADS": "6"}) == 3  # --threads first
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="THREADS"):
        function_server.request_threads("predict", env={"THREADS": "0"})
    # Only THREADS is read at a function's start: a variable of the CLI's own (a stack port) cannot stop it.
    assert function_server.request_threads("predict", env={"S3_PORT": "not-a-port"}) == 2


def test_the_server_runs_the_worker_with_the_functions_own_threads(monkeypatch, tmp_path):
    import functions_framework._http as framework_http

    source = tmp_path / "main.py"
    source.write_text(HELLO)
    started: list[dict] = []

    class _Server:
        def __init__(self, app, debug, **options):
            started.append(options)

        def run(self, host, port):
            pass

    monkeypatch.setattr(framework_http, "create_server", _Server)
    monkeypatch.delenv("THREADS", raising=False)
    function_server.main(["--target", "hello", "--source", str(source), "--threads", "3"])
    monkeypatch.setattr(function_server, "request_threads", lambda target, asked=None, env=None: 2)
    function_server.main(["--target", "hello", "--source", str(source)])
    monkeypatch.setattr(function_server, "request_threads", lambda target, asked=None, env=None: None)
    function_server.main(["--target", "hello", "--source", str(source)])
    assert [options.get("threads") for options in started] == [3, 2, None]
    assert all(options["worker_class"].endswith("BoundedThreadWorker") for options in started)
    with pytest.raises(SystemExit):
        function_server.main(["--target", "hello", "--source", str(source), "--threads", "0"])
    import gc

    gc.unfreeze()  # main froze this test process's objects before its (here pretended) fork


def test_the_stack_sets_threads_only_when_asked():
    from triage.config import TriageEnv
    from triage.stack.wiring import LocalValues, stack_env

    assert TriageEnv.from_env({}).threads is None and TriageEnv.from_env({"THREADS": "4"}).threads == 4
    values = LocalValues(s3_url="http://s3", broker_url="http://broker", gateway_url="http://gw", mlflow_url=None,
                         model_uri="/m", access_key="a", secret_key="b", webhook_token="", reviewer_tokens="",
                         admin_token="", api_tokens="/t", deid_secret="")
    assert "THREADS" not in stack_env(values, run_dir=PROJECT_ROOT, threads=None, pythonpath=None)
    assert stack_env(values, run_dir=PROJECT_ROOT, threads=4, pythonpath=None)["THREADS"] == "4"
