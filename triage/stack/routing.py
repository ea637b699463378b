"""Knative routing, locally, without HTTP: services with named revisions and a traffic split, and the admin
operations on them (set a split, start a revision at 0 %, retire idle ones); the gateway serves this over HTTP.
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from triage.stack.processes import ChildFailed
from triage.stack.revisions import RevisionLauncher

log = logging.getLogger("triage.gateway")

__all__ = ["REVISION_NAME", "Gateway", "RevisionConflict", "RevisionsUnavailable", "Route", "TrafficError"]

REVISION_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")  # a DNS label, as Knative's names


class TrafficError(ValueError):
    """A traffic split that Knative would reject (unknown revision, negative percent, sum != 100)."""


class RevisionConflict(TrafficError):
    """A revision of that name exists and serves another model."""


class RevisionsUnavailable(RuntimeError):
    """This gateway was started without a launcher, or the revision's processes failed to start."""


@dataclass
class Route:
    """One service: revision name → base URL, and revision name → percent of requests."""

    service: str
    revisions: dict[str, str]
    traffic: dict[str, int] = field(default_factory=dict)
    latest: str | None = None  # the most recently created revision (Knative's latestReadyRevisionName)

    def __post_init__(self) -> None:
        if not self.traffic:
            first = next(iter(self.revisions))
            self.traffic = {name: (100 if name == first else 0) for name in self.revisions}
        self.set_traffic(self.traffic)

    def set_traffic(self, traffic: Mapping[str, int]) -> None:
        unknown = sorted(set(traffic) - set(self.revisions))
        if unknown:
            raise TrafficError(f"{self.service}: no revision {', '.join(unknown)} (have {', '.join(self.revisions)})")
        if any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in traffic.values()):
            raise TrafficError(f"{self.service}: traffic percents must be whole numbers >= 0, got {dict(traffic)}")
        if sum(traffic.values()) != 100:
            raise TrafficError(f"{self.service}: traffic percents must sum to 100, got {sum(traffic.values())}")
        self.traffic = {name: int(traffic.get(name, 0)) for name in self.revisions}

    def pick(self, draw: float) -> str:
        """The revision for a uniform draw in [0, 1): cumulative percents, so 0 % is never picked."""
        point = draw * 100
        cumulative = 0
        for name, percent in self.traffic.items():
            cumulative += percent
            if percent and point < cumulative:
                return name
        return next(name for name, percent in self.traffic.items() if percent)


class Gateway:
    """Routes and the traffic admin, independent of HTTP (unit tests call `choose` directly)."""

    def __init__(self, routes: Mapping[str, Route], *, draw: Callable[[], float] = random.random,
                 launcher: RevisionLauncher | None = None) -> None:
        self.routes = dict(routes)
        self._draw = draw
        self._lock = threading.Lock()
        self.launcher = launcher
        self.model_uris: dict[str, str] = {}  # revision → MODEL_URI, for the revisions this gateway started
        self._launch_lock = threading.Lock()  # one launch at a time; routing goes on meanwhile
        self.registry = CollectorRegistry()
        self.requests = Counter("gateway_requests_total", "Requests through the gateway",
                                ["service", "revision", "code"], registry=self.registry)
        self.latency = Histogram("gateway_request_duration_seconds", "Gateway request latency, upstream included",
                                 ["service", "revision"], registry=self.registry,
                                 buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def choose(self, service: str) -> tuple[str, str]:
        """(revision, base URL) for one request to `service`."""
        with self._lock:
            route = self.routes[service]
            revision = route.pick(self._draw())
            return revision, route.revisions[revision]

    def set_traffic(self, traffic: Mapping[str, int], service: str | None = None) -> dict[str, dict[str, int]]:
        """Apply a split to one service or to every service that has all the named revisions; all or nothing."""
        with self._lock:
            targets = [self.routes[service]] if service else [
                r for r in self.routes.values() if set(traffic) <= set(r.revisions)]
            if service and service not in self.routes:
                raise TrafficError(f"no service {service!r}")
            if not targets:
                raise TrafficError(f"no service has revisions {', '.join(traffic)}")
            for route in targets:  # validate everything before changing anything
                Route(route.service, dict(route.revisions), dict(traffic))
            for route in targets:
                route.set_traffic(traffic)
            return self.traffic()

    def traffic(self) -> dict[str, dict[str, int]]:
        return {name: dict(route.traffic) for name, route in self.routes.items()}

    def revisions(self) -> dict[str, dict[str, Any]]:
        """Per service: traffic, the latest revision, and the MODEL_URI of each revision this gateway started."""
        with self._lock:
            return {
                name: {"traffic": dict(route.traffic), "latest": route.latest,
                       "model_uris": {rev: uri for rev, uri in self.model_uris.items() if rev in route.revisions}}
                for name, route in self.routes.items()
            }

    def create_revision(self, name: str, model_uri: str) -> dict[str, dict[str, Any]]:
        """A new revision `name` of every service the launcher knows, serving `model_uri`, at 0 %; idempotent."""
        if self.launcher is None:
            raise RevisionsUnavailable("this gateway starts no revisions (it was started without --launch)")
        if not REVISION_NAME.match(name) or not model_uri:
            raise TrafficError(f"revision name {name!r} must be a DNS label, and model_uri must be given")
        with self._launch_lock:
            with self._lock:
                known = self.model_uris.get(name)
                if known is None and any(name in route.revisions for route in self.routes.values()):
                    known = "(a revision the stack started)"
            if known == model_uri:
                return self.revisions()
            if known is not None:
                raise RevisionConflict(f"revision {name} exists and serves {known}")
            self._retire_idle()
            try:
                urls = self.launcher.launch(name, model_uri)
            except (ChildFailed, OSError) as exc:
                raise RevisionsUnavailable(f"revision {name} did not start: {str(exc).splitlines()[0]}") from exc
            with self._lock:
                for service, url in urls.items():
                    route = self.routes.get(service)
                    if route is not None:
                        route.revisions[name] = url
                        route.traffic[name] = 0
                        route.latest = name
                self.model_uris[name] = model_uri
            log.info("revision %s started for %s (MODEL_URI %s)", name, ", ".join(urls), model_uri)
            return self.revisions()

    def _retire_idle(self) -> None:
        """Stop the revisions this gateway started that no longer take traffic anywhere (they hold port slots)."""
        with self._lock:
            idle = [name for name in self.model_uris
                    if all(route.traffic.get(name, 0) == 0 for route in self.routes.values())]
            for name in idle:
                for route in self.routes.values():
                    route.revisions.pop(name, None)
                    route.traffic.pop(name, None)
                    if route.latest == name:
                        route.latest = None
                del self.model_uris[name]
        for name in idle:
            assert self.launcher is not None
            self.launcher.stop(name)
            log.info("revision %s retired (0 %% everywhere)", name)
