"""Continuous training's state: count items not yet used, reserve one batch at the threshold, never twice.

Items are the radiologists' labels (FEEDBACK_BUCKET/<request_id>.json) and new training objects (RAW_BUCKET);
one object counts as one item. When the unused items reach `min_labels`, they form a `Batch`. The state object
(STATE_BUCKET/RETRAIN_STATE_KEY) records every batch and which batch used each item; it is only replaced
through `Storage.update_json` (a compare-and-swap), so two retrain instances racing on the same labels cannot
both reserve them: the loser re-reads and finds the batch taken. A batch is reserved ("launching") before the
backend is called and marked "launched" after; a failed launch frees its items for the next event, and a
reservation older than `stale_after_s` (a process killed mid-launch) may be taken over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.config import RetrainConfig
from shared.errors import TriageError
from shared.events import CloudEvent, event_data
from shared.names import (
    FEEDBACK_BUCKET,
    FEEDBACK_RECEIVED,
    OBJECT_CREATED,
    RAW_BUCKET,
    RETRAIN_STATE_KEY,
    STATE_BUCKET,
    feedback_key,
    feedback_request_id,
    retrain_batch_key,
)
from shared.retrain.batch import Batch
from shared.retrain.launchers import Launcher, LaunchError
from shared.storage import StateConflict, Storage
from shared.timestamps import utc_iso

__all__ = ["RetrainDecision", "RetrainStateConflict", "item_from_event", "maybe_launch"]

log = logging.getLogger("shared.retrain")


class RetrainStateConflict(StateConflict):
    """The retrain state kept changing under us (many concurrent writers): 503, the event is retried."""

    code = "retrain_state_conflict"


@dataclass(frozen=True)
class RetrainDecision:
    """What one call did: `waiting` (below the threshold), `launched` or `already_launched`."""

    status: str
    pending: int
    needed: int
    batch_id: str | None = None
    job: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "pending": self.pending,
            "needed": self.needed,
            "batch_id": self.batch_id,
            "job": self.job,
        }


def _now_iso(clock: Callable[[], float]) -> str:
    return utc_iso(datetime.fromtimestamp(clock(), UTC))


def _state(value: Any) -> dict[str, Any]:
    """The state object as read (None when there is none yet), with its two tables."""
    state = dict(value) if isinstance(value, Mapping) else {}
    state.setdefault("used", {})
    state.setdefault("batches", {})
    return state


def _blocking(batch: Mapping[str, Any] | None, now: float, stale_after_s: float) -> bool:
    """Whether a batch record holds its items: launched, or launching and not yet stale."""
    if not batch:
        return False
    if batch.get("status") == "launched":
        return True
    return batch.get("status") == "launching" and now - float(batch.get("reserved_at_s", 0)) < stale_after_s


def _items(storage: Storage, new_item: str | None) -> set[str]:
    """Every item (`bucket/key`) there is: labels (not the state), raw data, and the just-announced one."""
    items = {f"{FEEDBACK_BUCKET}/{key}" for key in storage.iter_keys(FEEDBACK_BUCKET)
             if feedback_request_id(key) is not None}
    items |= {f"{RAW_BUCKET}/{key}" for key in storage.iter_keys(RAW_BUCKET)}
    if new_item:
        items.add(new_item)
    return items


def maybe_launch(
    storage: Storage,
    config: RetrainConfig,
    launcher: Launcher,
    *,
    new_item: str | None = None,
    clock: Callable[[], float] = time.time,
) -> RetrainDecision:
    """Count unused items; at the threshold reserve them as one batch (compare-and-swap), launch, record.

    `new_item` (`bucket/key`) is the item the triggering event announced: it is counted even if a listing does
    not show it yet.
    """

    def reserve(value: Any) -> tuple[RetrainDecision | Batch, dict[str, Any] | None]:
        state, now = _state(value), clock()
        batches: dict[str, Any] = state["batches"]
        used: dict[str, str] = state["used"]
        pending = [item for item in _items(storage, new_item)
                   if not _blocking(batches.get(used.get(item, "")), now, config.stale_after_s)]
        if len(pending) < config.min_labels:
            return RetrainDecision("waiting", len(pending), config.min_labels), None
        batch = Batch.of(pending)
        record = batches.get(batch.id)
        if _blocking(record, now, config.stale_after_s):  # a guard: held items never form a batch again
            held = RetrainDecision("already_launched", len(pending), config.min_labels, batch.id, record.get("job"))
            return held, None
        # Write the item list first: the job may start before we mark the batch launched.
        listing = {"batch_id": batch.id, "items": list(batch.items)}
        storage.put_json(STATE_BUCKET, retrain_batch_key(batch.id), listing)
        batches[batch.id] = {
            "status": "launching",
            "items": len(batch.items),
            "backend": launcher.name,
            "reserved_at": _now_iso(clock),
            "reserved_at_s": now,
        }
        used.update({item: batch.id for item in batch.items})
        return batch, state

    reserved = storage.update_json(STATE_BUCKET, RETRAIN_STATE_KEY, reserve, conflict=RetrainStateConflict)
    if isinstance(reserved, RetrainDecision):
        return reserved
    batch = reserved
    try:
        job = launcher.launch(batch)
    except Exception as exc:
        _update_batch(storage, batch.id, {"status": "failed", "error": str(exc)[:300]})
        if isinstance(exc, TriageError):
            raise
        raise LaunchError(f"{launcher.name} backend failed: {exc}") from exc
    _update_batch(storage, batch.id, {"status": "launched", "job": job, "launched_at": _now_iso(clock)})
    log.info("launched training batch %s (%d items) via %s: %s", batch.id, len(batch.items), launcher.name, job)
    return RetrainDecision("launched", len(batch.items), config.min_labels, batch.id, job)


def _update_batch(storage: Storage, batch_id: str, changes: Mapping[str, Any]) -> None:
    def record(value: Any) -> tuple[None, dict[str, Any]]:
        state = _state(value)
        state["batches"].setdefault(batch_id, {}).update(changes)
        return None, state

    storage.update_json(STATE_BUCKET, RETRAIN_STATE_KEY, record, conflict=RetrainStateConflict)


def item_from_event(event: CloudEvent) -> str | None:
    """The item (`bucket/key`) an event announces, or None when retraining does not care about it."""
    if event["type"] == FEEDBACK_RECEIVED:
        data = event_data(event, "request_id")
        return str(data.get("key") or f"{FEEDBACK_BUCKET}/{feedback_key(data['request_id'])}")
    if event["type"] == OBJECT_CREATED and event.get("bucket") == RAW_BUCKET:
        data = event_data(event, "key")
        return f"{RAW_BUCKET}/{data['key']}"
    return None
