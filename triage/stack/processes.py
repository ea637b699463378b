"""Supervisor of the local stack's child processes: start, wait healthy, log to files, stop them all.

Each child runs in its own process group (so a functions-framework's gunicorn workers stop with it); its
output goes line by line, time-stamped, to `<run dir>/logs/<name>.log`. Every child is stopped on `stop_all`,
at interpreter exit, and on SIGTERM / Ctrl-C of the parent.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from shared.errors import UserError

__all__ = ["ChildFailed", "ProcessSpec", "Supervisor", "check_ports_free", "port_is_free"]


class ChildFailed(RuntimeError):
    """A child process exited or did not become healthy in time; the message carries its last log lines."""


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one child: argv, extra environment, the port it binds (and the env var that changes it)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None
    port_env: str | None = None
    health_url: str | None = None
    ready_timeout_s: float = 60.0
    cwd: Path | None = None


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers do: connections in TIME_WAIT from an earlier run must not count as "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (Linux; the IANA range elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def unused_port_block(size: int, attempts: int = 200) -> list[int]:
    """`size` consecutive free ports below the ephemeral range.

    Ports the OS hands out for port 0 come from the ephemeral range, where any client connection of the
    same machine can take one a moment later; a block below it stays free unless someone listens there.
    """
    low, _ = ephemeral_port_range()
    floor, top = (20000, low - size) if low - size > 20000 else (1024, 65535 - size)
    for _ in range(attempts):
        start = random.randrange(floor, top)
        ports = list(range(start, start + size))
        if all(port_is_free(port) for port in ports):
            return ports
    raise UserError(f"no {size} consecutive free ports found on 127.0.0.1")


def check_ports_free(specs: Iterable[ProcessSpec]) -> None:
    """Fail before starting anything when a port is taken, naming the port and the variable that moves it."""
    seen: dict[int, str] = {}
    for spec in specs:
        if spec.port is None:
            continue
        if spec.port in seen:
            raise UserError(f"port {spec.port} is configured for both {seen[spec.port]} and {spec.name}")
        seen[spec.port] = spec.name
        if not port_is_free(spec.port):
            hint = f"; set {spec.port_env}=<free port> to use another" if spec.port_env else ""
            raise UserError(f"port {spec.port} for {spec.name} is already in use on 127.0.0.1{hint}")


class _Child:
    def __init__(self, spec: ProcessSpec, log_path: Path) -> None:
        self.spec = spec
        self.log_path = log_path
        self.tail: deque[str] = deque(maxlen=40)
        env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
        self.log_file: IO[str] = open(log_path, "a", buffering=1)  # noqa: SIM115 - closed by stop()
        self.popen = subprocess.Popen(
            list(spec.argv), env=env, cwd=spec.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, text=True, errors="replace",
        )
        self.started = time.monotonic()
        self.reader = threading.Thread(target=self._copy_output, name=f"log-{spec.name}", daemon=True)
        self.reader.start()

    def _copy_output(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            stamped = f"{time.strftime('%H:%M:%S')} {self.spec.name} | {line.rstrip()}"
            self.tail.append(stamped)
            try:
                self.log_file.write(stamped + "\n")
            except ValueError:  # file closed while stopping
                return

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self, grace_s: float) -> None:
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(timeout=5)
        # Workers of the group may outlive their parent (gunicorn): make sure none is left.
        self.signal_group(signal.SIGKILL)
        self.reader.join(timeout=2)
        self.log_file.close()


class Supervisor:
    """Starts children in order, waits for each health URL, and stops all of them (reverse order) exactly once."""

    def __init__(self, run_dir: Path, *, echo: IO[str] | None = None, grace_s: float = 5.0) -> None:
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.grace_s = grace_s
        self.children: dict[str, _Child] = {}
        self._lock = threading.Lock()
        atexit.register(self.stop_all)

    def install_signal_handlers(self) -> None:
        """SIGTERM behaves like Ctrl-C in the main thread, so `finally` blocks stop the children."""

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGINT, interrupt)

    def start(self, spec: ProcessSpec, *, wait: bool = True) -> None:
        with self._lock:
            old = self.children.get(spec.name)
            if old is not None and old.alive():
                raise RuntimeError(f"{spec.name} is already running (pid {old.popen.pid})")
            child = _Child(spec, self.log_dir / f"{spec.name}.log")
            self.children[spec.name] = child
        if self.echo:
            print(f"  started {spec.name} (pid {child.popen.pid}), log {child.log_path}", file=self.echo)
        if wait and spec.health_url:
            self.wait_healthy(spec.name)

    def wait_healthy(self, name: str, timeout_s: float | None = None) -> float:
        """Poll the child's health URL until 200; returns seconds since it started. Raises ChildFailed."""
        child = self.children[name]
        assert child.spec.health_url is not None
        deadline = time.monotonic() + (timeout_s or child.spec.ready_timeout_s)
        while time.monotonic() < deadline:
            if not child.alive():
                child.reader.join(timeout=2)
                raise ChildFailed(f"{name} exited with code {child.popen.returncode} before it was healthy; "
                                  f"last lines of {child.log_path}:\n" + "\n".join(child.tail))
            try:
                with urllib.request.urlopen(child.spec.health_url, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - child.started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.05)
        raise ChildFailed(f"{name} was not healthy at {child.spec.health_url} within "
                          f"{timeout_s or child.spec.ready_timeout_s:.0f} s; last lines of {child.log_path}:\n"
                          + "\n".join(child.tail))

    def kill(self, name: str) -> None:
        """SIGKILL a child's whole group, as a crash would (tests use this)."""
        child = self.children[name]
        child.signal_group(signal.SIGKILL)
        child.popen.wait(timeout=10)

    def restart(self, name: str, *, wait: bool = True) -> None:
        child = self.children[name]
        child.stop(self.grace_s)
        self.start(child.spec, wait=wait)

    def stop(self, name: str) -> None:
        """Stop one child (SIGTERM, then SIGKILL after the grace period); unknown names are ignored."""
        with self._lock:
            child = self.children.pop(name, None)
        if child is not None:
            child.stop(self.grace_s)

    def pids(self) -> dict[str, int]:
        return {name: child.popen.pid for name, child in self.children.items()}

    def check_alive(self) -> list[str]:
        """Names of children that have exited."""
        return [name for name, child in self.children.items() if not child.alive()]

    def stop_all(self, *, last: Collection[str] = ()) -> None:
        """Stop every child: those named in `last` once all the others have exited (what the others write on
        their way out, e.g. request records into S3, must still land), each tier all at once."""
        with self._lock:
            children = list(self.children.items())[::-1]
            self.children.clear()
        first = [(name, child) for name, child in children if name not in last]
        self._stop_together(first)
        self._stop_together([(name, child) for name, child in children if name in last])

    def _stop_together(self, children: list[tuple[str, _Child]]) -> None:
        for _name, child in children:  # all at once: stopping takes the slowest child's time, not the sum
            if child.alive():
                child.signal_group(signal.SIGTERM)
        for name, child in children:
            try:
                child.stop(self.grace_s)
            except Exception as exc:  # noqa: BLE001 - stopping the others matters more
                print(f"could not stop {name}: {exc}", file=sys.stderr)
