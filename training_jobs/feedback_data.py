"""Radiologists' labels as training data: a retrain batch's feedback items → labelled examples for the train split.

A batch (`s3://triage-state/retrain/batches/<id>.json`, written by `shared.retrain`) lists its items as
`feedback/<request_id>.json` (a label) and `raw-data/<key>` (new raw data, which `triage prepare` turns into a
data set). A label reaches its image through the request index (`triage-state/requests/<id>.json`) and the
ingest result it points to (`bucket`/`key` of the upload). Synchronous predictions keep no image, so their labels
are counted as skipped, never silently dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from shared.errors import NotFound, TriageError
from shared.imaging import decode_image, to_model_input
from shared.names import FEEDBACK_BUCKET
from shared.request_records import load_request_record
from shared.storage import Storage, split_s3_uri
from training_jobs.data import SplitArrays, Splits, compute_data_hash

CLASS_INDEX = {"normal": 0, "pneumonia": 1}


@dataclass(frozen=True)
class FeedbackExamples:
    """Labelled examples of one batch, and why the other labels of it could not be used."""

    arrays: SplitArrays | None
    skipped: dict[str, int]

    def __len__(self) -> int:
        return 0 if self.arrays is None else len(self.arrays)


def _labelled_image(storage: Storage, label_key: str) -> tuple[bytes, str]:
    """The uploaded bytes a label refers to, and the label; NotFound when a link of the chain is missing."""
    label = storage.get_json(FEEDBACK_BUCKET, label_key)
    index = load_request_record(storage, str(label["request_id"]))
    if index is None:
        raise NotFound("the labelled request has no record")
    if not index.get("result"):
        raise LookupError("synchronous request: no stored image")
    result = storage.get_json(*split_s3_uri(index["result"]))
    return storage.get_bytes(result["bucket"], result["key"]), str(label["label"])


def load_feedback_batch(storage: Storage, batch_uri: str, image_size: int) -> FeedbackExamples:
    """Model inputs and labels of every usable label in the batch at `batch_uri`."""
    batch = storage.get_json(*split_s3_uri(batch_uri))
    xs: list[np.ndarray] = []
    ys: list[int] = []
    skipped: Counter[str] = Counter()
    for item in batch.get("items", []):
        bucket, _, key = str(item).partition("/")
        if bucket != FEEDBACK_BUCKET:
            continue  # raw-data items become a data set through `triage prepare`, not here
        try:
            data, label = _labelled_image(storage, key)
            if label not in CLASS_INDEX:
                raise LookupError(f"unknown label {label!r}")
            xs.append(to_model_input(decode_image(data), image_size))
            ys.append(CLASS_INDEX[label])
        except NotFound:
            skipped["label, request or image no longer stored"] += 1
        except LookupError as exc:
            skipped[str(exc)] += 1
        except TriageError:
            skipped["image not decodable"] += 1
    arrays = SplitArrays(np.stack(xs).astype(np.float32), np.asarray(ys, dtype=np.int64)) if xs else None
    return FeedbackExamples(arrays, dict(skipped))


def with_feedback(splits: Splits, examples: FeedbackExamples) -> Splits:
    """`splits` with the labelled examples appended to train (val and test stay as they were, so runs compare)."""
    if examples.arrays is None or splits.train is None:
        return splits
    train = SplitArrays(
        np.concatenate([splits.train.x, examples.arrays.x]), np.concatenate([splits.train.y, examples.arrays.y])
    )
    arrays = {**splits.present(), "train": train}
    return replace(
        splits,
        train=train,
        data_hash=compute_data_hash(arrays, splits.image_size),
        notes=(*splits.notes, f"{len(examples)} radiologist-labelled uploads added to train"),
    )
