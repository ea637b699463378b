"""One write at a time per object, as S3 applies them: moto checks a conditional write and then writes, unlocked.

moto's PutObject tests `If-Match` / `If-None-Match` against the stored object and only then stores the new one,
with nothing held between the two, so concurrent writers on one key can all pass the check: two instances
creating the same state object with `If-None-Match: *` both succeeded, and the retrain state launched one batch
twice. S3 and MinIO make the condition and the write one step. `AtomicObjectWrites` is a WSGI layer around moto's
app that runs every mutating request (PUT, POST, DELETE) on one path under that path's lock (one of a fixed set,
by hash), so the check and the write of one object cannot interleave with another write to it; writes to other
objects still run in parallel. Paths are path-style (`/bucket/key`), as botocore addresses a loopback endpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["AtomicObjectWrites"]

_MUTATING = frozenset({"PUT", "POST", "DELETE"})


class AtomicObjectWrites:
    """WSGI middleware: the mutating requests on one path answered one at a time, each wholly inside its lock."""

    def __init__(self, app: Callable[..., Iterable[bytes]], stripes: int = 64) -> None:
        self.app = app
        self._locks = [threading.Lock() for _ in range(stripes)]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in _MUTATING:
            return self.app(environ, start_response)
        with self._locks[hash(environ.get("PATH_INFO", "")) % len(self._locks)]:
            answer = self.app(environ, start_response)
            try:
                return list(answer)  # the whole answer is made before the next write to this object starts
            finally:
                getattr(answer, "close", lambda: None)()
