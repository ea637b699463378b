"""Knative's PingSource, locally: a `dev.knative.sources.ping` event into the broker every so many seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from cloudevents.http import CloudEvent

from shared.events import make_event
from shared.names import PING

__all__ = ["PING", "PingSource", "run_ping_sources"]


class _Publishes(Protocol):
    def publish(self, event: CloudEvent) -> int: ...


@dataclass(frozen=True)
class PingSource:
    """Knative's PingSource, locally: every `every_s` seconds a `dev.knative.sources.ping` event into the broker,
    source `/local/pingsources/<name>`, for the triggers to route (the monitor's and the canary's ticks)."""

    name: str
    every_s: float

    @property
    def source(self) -> str:
        return f"/local/pingsources/{self.name}"

    def event(self) -> CloudEvent:
        return make_event(PING, self.source, {})


def run_ping_sources(broker: _Publishes, pings: Iterable[PingSource], stop: threading.Event,
                     clock: Callable[[], float] = time.monotonic) -> None:
    """Publish each source's ping when due, until `stop` is set (run it on a thread)."""
    due = {ping.name: clock() + ping.every_s for ping in pings}
    by_name = {ping.name: ping for ping in pings}
    while due and not stop.is_set():
        name = min(due, key=due.__getitem__)
        if stop.wait(max(0.0, due[name] - clock())):
            return
        broker.publish(by_name[name].event())
        due[name] = clock() + by_name[name].every_s
