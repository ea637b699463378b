"""A training batch: the items (`bucket/key`) one job trains on, named by the hash of their sorted names."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from shared.names import STATE_BUCKET, retrain_batch_key

__all__ = ["Batch"]


@dataclass(frozen=True)
class Batch:
    """Items (as `bucket/key`) that one training job will use; `id` is the hash of their sorted names."""

    id: str
    items: tuple[str, ...]
    uri: str  # s3://STATE_BUCKET/retrain/batches/<id>.json: the item list, which the job reads

    @classmethod
    def of(cls, items: Sequence[str]) -> Batch:
        ordered = tuple(sorted(items))
        batch_id = hashlib.sha256("\n".join(ordered).encode("utf-8")).hexdigest()[:20]
        return cls(batch_id, ordered, f"s3://{STATE_BUCKET}/{retrain_batch_key(batch_id)}")

    def job_env(self) -> dict[str, str]:
        return {"RETRAIN_BATCH_ID": self.id, "RETRAIN_BATCH_URI": self.uri, "RETRAIN_BATCH_SIZE": str(len(self.items))}
