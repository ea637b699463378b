"""Revisions the local gateway starts on demand: one process per routed function, all serving one model.

Knative makes a new revision when a Service's template changes (the canary's `prepare` step sets MODEL_URI);
locally, `PUT /admin/revisions {"name": "v8", "model_uri": ...}` on the gateway does the same through this
launcher: the same command as the champion's (`triage.stack.function_server`), on a port of its own, with `REVISION` and
`MODEL_URI` set. Each service has a few port slots; a revision at 0 % everywhere is retired to free one.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from triage.stack.processes import ChildFailed, ProcessSpec, Supervisor

__all__ = ["RevisionLauncher", "RevisionTemplate", "load_launch_config"]


@dataclass(frozen=True)
class RevisionTemplate:
    """How to run one service's revision: `argv` with "{port}" for the port, and the ports it may take."""

    argv: tuple[str, ...]
    ports: tuple[int, ...]
    cwd: str | None = None


class RevisionLauncher:
    """Starts and stops named revisions (a process per service); `launch` returns once every one is healthy."""

    def __init__(self, templates: Mapping[str, RevisionTemplate], run_dir: Path, *,
                 env: Mapping[str, str] | None = None, ready_timeout_s: float = 120.0) -> None:
        self.templates = dict(templates)
        self.supervisor = Supervisor(run_dir)
        self.env = dict(os.environ if env is None else env)
        self.ready_timeout_s = ready_timeout_s
        self.ports: dict[str, dict[str, int]] = {}  # revision → service → port
        self._lock = threading.Lock()

    def _free_ports(self) -> dict[str, int]:
        ports = {}
        for service, template in self.templates.items():
            taken = {used[service] for used in self.ports.values()}
            free = [port for port in template.ports if port not in taken]
            if not free:
                raise ChildFailed(f"no port left for another {service} revision ({len(template.ports)} slots): "
                                  "route an old revision to 0 % so it can be retired")
            ports[service] = free[0]
        return ports

    def launch(self, name: str, model_uri: str) -> dict[str, str]:
        """Start revision `name` of every service with MODEL_URI `model_uri`; service → base URL. Raises ChildFailed."""
        with self._lock:
            ports = self.ports[name] = self._free_ports()
        specs = [
            ProcessSpec(f"{service}-{name}", [arg.replace("{port}", str(port)) for arg in self.templates[service].argv],
                        env={**self.env, "REVISION": name, "MODEL_URI": model_uri}, port=port,
                        health_url=f"http://127.0.0.1:{port}/healthz", ready_timeout_s=self.ready_timeout_s,
                        cwd=Path(self.templates[service].cwd) if self.templates[service].cwd else None)
            for service, port in ports.items()
        ]
        try:  # all at once: they load the model in parallel
            for spec in specs:
                self.supervisor.start(spec, wait=False)
            for spec in specs:
                self.supervisor.wait_healthy(spec.name)
        except (ChildFailed, OSError):
            self.stop(name)
            raise
        return {service: f"http://127.0.0.1:{port}" for service, port in ports.items()}

    def stop(self, name: str) -> None:
        with self._lock:
            ports = self.ports.pop(name, {})
        for service in ports:
            self.supervisor.stop(f"{service}-{name}")

    def stop_all(self) -> None:
        with self._lock:
            self.ports.clear()
        self.supervisor.stop_all()


def load_launch_config(path: Path) -> tuple[dict[str, RevisionTemplate], dict[str, str]]:
    """`{"templates": {service: {"argv", "ports", "cwd"}}, "initial": {revision: model_uri}}` from a JSON file."""
    try:
        raw = json.loads(Path(path).read_text())
        templates = {service: RevisionTemplate(tuple(spec["argv"]), tuple(int(p) for p in spec["ports"]),
                                               spec.get("cwd"))
                     for service, spec in raw["templates"].items()}
        initial = {str(name): str(uri) for name, uri in (raw.get("initial") or {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: invalid revision launch config: {exc}") from exc
    for service, template in templates.items():
        if not any("{port}" in arg for arg in template.argv) or not template.ports:
            raise ValueError(f"{path}: {service}: argv needs a {{port}} placeholder and ports at least one port")
    return templates, initial
