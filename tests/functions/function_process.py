"""A function as a real process (the local stack's `triage.stack.function_server`), for clients no one here wrote."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from shared.config import PROJECT_ROOT


@contextmanager
def function_process(name: str, env: Mapping[str, str], *, ready_path: str = "/healthz",
                     server: str = "triage.stack.function_server") -> Iterator[str]:
    """Start functions/<name>/main.py on a free port, wait until `ready_path` answers 200; yield its base URL.

    `server` is the module that serves it: the local stack's (default) or `functions_framework` as the images do.
    """
    from triage.stack.processes import unused_port_block

    port = unused_port_block(1)[0]
    command = [sys.executable, "-m", server, "--target", name, "--host", "127.0.0.1", "--port", str(port),
               "--source", str(PROJECT_ROOT / "functions" / name / "main.py")]  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **env}
    process = subprocess.Popen(command, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + ready_path, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):  # not up yet, or slow to answer
                pass
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"{name} never became ready"
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
