"""The broker's durable outbox: deliveries in SQLite, due, leased, done or dead.

A delivery is written before its sender is answered and is leased while it is attempted, so a crash between
the two makes it due again (at least once); retries are scheduled by the caller through `failed(next_at)`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Delivery", "DeliveryQueue"]


@dataclass(frozen=True)
class Delivery:
    id: int
    trigger: str
    event_json: str
    attempts: int
    last_error: str | None


class DeliveryQueue:
    """Deliveries persisted in SQLite: pending (due at `next_at`), in flight (leased until `next_at`), done, dead."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._lock = threading.Lock()
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT, trigger TEXT NOT NULL,"
            " event_json TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
            " next_at REAL NOT NULL, last_error TEXT)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, trigger, next_at)")
        # Deliveries in flight when the broker died were never acknowledged: they are due again (at least once).
        self._db.execute("UPDATE deliveries SET status = 'pending', next_at = 0 WHERE status = 'inflight'")

    def enqueue(self, triggers: Iterable[str], event_json: str, now: float) -> int:
        rows = [(name, event_json, now) for name in triggers]
        with self._lock:
            self._db.executemany(
                "INSERT INTO deliveries (trigger, event_json, status, next_at) VALUES (?, ?, 'pending', ?)", rows
            )
        return len(rows)

    def claim_due(self, now: float, lease_s: float, limit: int = 32, *, only: str | None = None,
                  other_than: Collection[str] = ()) -> list[Delivery]:
        """Due deliveries, oldest first, leased for `lease_s` so a stuck attempt is retried rather than lost; `only`
        one trigger's, or those of triggers `other_than` the named ones."""
        where, params = _trigger_filter(None if only is None else (only,), other_than)
        with self._lock:
            rows = self._db.execute(
                "SELECT id, trigger, event_json, attempts, last_error FROM deliveries"
                f" WHERE status IN ('pending', 'inflight') AND next_at <= ?{where} ORDER BY next_at, id LIMIT ?",
                (now, *params, limit),
            ).fetchall()
            self._db.executemany(
                "UPDATE deliveries SET status = 'inflight', next_at = ? WHERE id = ?",
                [(now + lease_s, row[0]) for row in rows],
            )
        return [Delivery(*row) for row in rows]

    def succeeded(self, delivery_id: int) -> None:
        with self._lock:
            self._db.execute("UPDATE deliveries SET status = 'done', last_error = NULL WHERE id = ?", (delivery_id,))

    def failed(self, delivery_id: int, error: str, next_at: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET status = 'pending', attempts = attempts + 1, last_error = ?, next_at = ?"
                " WHERE id = ?",
                (error, next_at, delivery_id),
            )

    def dead(self, delivery_id: int) -> None:
        with self._lock:
            self._db.execute("UPDATE deliveries SET status = 'dead' WHERE id = ?", (delivery_id,))

    def next_due_at(self, triggers: Collection[str] | None = None) -> float | None:
        """When the next delivery (of one of `triggers`, when given) is due; None when there is none."""
        where, params = _trigger_filter(triggers, ())
        with self._lock:
            row = self._db.execute(
                f"SELECT MIN(next_at) FROM deliveries WHERE status IN ('pending', 'inflight'){where}", params
            ).fetchone()
        return row[0]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status").fetchall()
        return {status: count for status, count in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _trigger_filter(among: Collection[str] | None, other_than: Collection[str]) -> tuple[str, tuple[str, ...]]:
    """The SQL condition (and its parameters) for deliveries of the triggers `among` (when given), or of triggers
    `other_than` those named."""
    if among is not None:
        return f" AND trigger IN ({', '.join('?' * len(among))})", tuple(among)
    if other_than:
        return f" AND trigger NOT IN ({', '.join('?' * len(other_than))})", tuple(other_than)
    return "", ()
