"""The supervisor: port check up front, health wait, logs to files, every child (and grandchild) stopped."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from shared.errors import UserError
from triage.stack.processes import (
    ChildFailed,
    ProcessSpec,
    Supervisor,
    check_ports_free,
    ephemeral_port_range,
    port_is_free,
    unused_port_block,
)


def free_port() -> int:
    return unused_port_block(1)[0]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has stopped running all the same.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_test_ports_are_a_free_block_outside_the_ephemeral_range():
    # Client connections take ephemeral ports at any moment: a stack's ports there failed CI once.
    low, high = ephemeral_port_range()
    block = unused_port_block(15)
    assert block == list(range(block[0], block[0] + 15))
    assert all(not low <= port <= high for port in block)
    assert all(port_is_free(port) for port in block)


def test_port_in_use_is_a_clear_error_naming_port_and_variable():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=rf"port {port} for gateway is already in use.*GATEWAY_PORT"):
            check_ports_free([ProcessSpec("gateway", ["true"], port=port, port_env="GATEWAY_PORT")])


def test_children_start_healthy_log_to_files_and_stop_with_their_grandchildren(tmp_path):
    port = free_port()
    # A parent that forks a long-lived grandchild (as gunicorn does) and serves HTTP.
    script = (
        "import subprocess, sys, http.server\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "open(sys.argv[2], 'w').write(str(child.pid))\n"
        "print('serving', flush=True)\n"
        "http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)"
        ".serve_forever()\n"
    )
    supervisor = Supervisor(tmp_path)
    grandchild_file = tmp_path / "grandchild.pid"
    supervisor.start(ProcessSpec("web", [sys.executable, "-c", script, str(port), str(grandchild_file)], port=port,
                                 health_url=f"http://127.0.0.1:{port}/", ready_timeout_s=20, cwd=tmp_path))
    pid = supervisor.pids()["web"]
    grandchild = int(grandchild_file.read_text())
    assert alive(pid) and alive(grandchild)
    supervisor.stop_all()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (alive(pid) or alive(grandchild)):
        time.sleep(0.05)
    assert not alive(pid) and not alive(grandchild)
    assert "web | serving" in (tmp_path / "logs" / "web.log").read_text()


def test_child_that_dies_before_healthy_reports_its_last_log_lines(tmp_path):
    supervisor = Supervisor(tmp_path)
    try:
        with pytest.raises(ChildFailed, match="(?s)broken exited with code 3.*model file missing"):
            supervisor.start(ProcessSpec("broken", [sys.executable, "-c", "print('model file missing'); exit(3)"],
                                         health_url="http://127.0.0.1:9/healthz"))
    finally:
        supervisor.stop_all()


STORE = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""
# On SIGTERM it takes a moment, then writes to the store (as a function flushing its records on the way out).
WRITER = """
import pathlib, signal, sys, time, urllib.request
def flush(*_):
    time.sleep(0.5)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=2).read()
        pathlib.Path(sys.argv[2]).write_text("written")
    except OSError as exc:
        pathlib.Path(sys.argv[2]).write_text(f"lost: {exc}")
    sys.exit(0)
signal.signal(signal.SIGTERM, flush)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize("store_last", [True, False])
def test_children_named_last_are_stopped_after_the_others_have_exited(tmp_path, store_last):
    port, marker = free_port(), tmp_path / "flushed"
    supervisor = Supervisor(tmp_path, grace_s=5)
    supervisor.start(ProcessSpec("store", [sys.executable, "-c", STORE, str(port)], port=port,
                                 health_url=f"http://127.0.0.1:{port}/", ready_timeout_s=20, cwd=tmp_path))
    supervisor.start(ProcessSpec("writer", [sys.executable, "-c", WRITER, str(port), str(marker)], cwd=tmp_path),
                     wait=False)
    deadline = time.monotonic() + 20
    while "ready" not in (tmp_path / "logs" / "writer.log").read_text():
        assert time.monotonic() < deadline, "the writer never started"
        time.sleep(0.05)
    supervisor.stop_all(last=("store",) if store_last else ())
    # Stopped together, the store is gone before the writer's last write: the ordering is what keeps it.
    assert (marker.read_text() == "written") is store_last, marker.read_text()
