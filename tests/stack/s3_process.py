"""The local S3 (`python -m triage.stack.s3server`) as a real child process that tests can SIGKILL and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from triage.stack.processes import unused_port_block
from triage.stack.s3server import HEALTH_PATH, s3_client

ROOT = Path(__file__).resolve().parents[2]


class S3Process:
    """One S3 server on a fixed port and data dir; `kill()` is a crash, `start()` a restart on the same disk."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.port = unused_port_block(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self.popen: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> S3Process:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log_path, "ab") as log:  # a file, not a pipe: a full pipe would block the server
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "triage.stack.s3server", "--port", str(self.port), "--data-dir",
                 str(self.data_dir)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"S3 exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + HEALTH_PATH, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("S3 did not become healthy")

    def client(self):
        return s3_client(self.url)

    def kill(self) -> None:
        assert self.popen is not None
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> S3Process:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
