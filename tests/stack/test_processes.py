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
