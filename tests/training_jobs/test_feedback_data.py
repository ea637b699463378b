"""Radiologists' labels become training examples: batch → label → request index → ingest result → image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.errors import UserError
from shared.feedback import record_request
from shared.imaging import decode_image, to_model_input
from shared.storage import Storage
from training_jobs.data import SplitArrays, make_splits
from training_jobs.feedback_data import load_feedback_batch, with_feedback

BATCH_URI = "s3://triage-state/retrain/batches/b1.json"


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 40), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def uploaded_and_labelled(storage: Storage, request_id: str, key: str, data: bytes | None, label: str) -> None:
    """As ingest and feedback leave it: the upload, its result, the request index, the label."""
    result_uri = None
    if data is not None:
        storage.put_bytes("inference-inputs", key, data, "image/png")
        storage.put_json("inference-results", f"{key}.json", {"bucket": "inference-inputs", "key": key})
        result_uri = f"s3://inference-results/{key}.json"
    record_request(storage, {"request_id": request_id, "label": "normal"}, source="ingest", result_uri=result_uri)
    storage.put_json("feedback", f"{request_id}.json", {"request_id": request_id, "label": label, "reviewer": "dr-a"})


@pytest.fixture
def batch(storage: Storage) -> Storage:
    uploaded_and_labelled(storage, "r1", "scans/a.png", png(200), "pneumonia")
    uploaded_and_labelled(storage, "r2", "scans/b.png", png(30), "normal")
    uploaded_and_labelled(storage, "r3", "sync", None, "pneumonia")  # a synchronous predict: no stored image
    storage.put_json("feedback", "r4.json", {"request_id": "r4", "label": "normal"})  # its request is gone
    items = ["feedback/r1.json", "feedback/r2.json", "feedback/r3.json", "feedback/r4.json", "raw-data/new.npz"]
    storage.put_json("triage-state", "retrain/batches/b1.json", {"batch_id": "b1", "items": items})
    return storage


def test_labels_with_a_stored_upload_become_examples_and_the_rest_are_counted(batch: Storage) -> None:
    examples = load_feedback_batch(batch, BATCH_URI, image_size=28)
    assert len(examples) == 2
    assert examples.arrays.y.tolist() == [1, 0]  # the radiologist's label, not the model's
    expected = to_model_input(decode_image(png(200)), 28)
    np.testing.assert_array_equal(examples.arrays.x[0], expected)
    assert examples.skipped == {
        "synchronous request: no stored image": 1,
        "label, request or image no longer stored": 1,
    }


def test_examples_join_train_only_and_change_the_data_hash(batch: Storage) -> None:
    rng = np.random.default_rng(0)
    split = SplitArrays(rng.normal(size=(6, 1, 28, 28)).astype(np.float32), np.array([0, 1] * 3))
    splits = make_splits({"train": split, "val": split}, 28, synthetic=True, source="phantom")
    merged = with_feedback(splits, load_feedback_batch(batch, BATCH_URI, image_size=28))
    assert len(merged.train) == 8 and merged.val is splits.val
    assert merged.data_hash != splits.data_hash and "2 radiologist-labelled uploads" in merged.notes[-1]


def test_a_missing_batch_is_a_clear_error(storage: Storage, s3_server: str, monkeypatch) -> None:
    from training_jobs.train import _add_feedback

    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server)
    split = SplitArrays(np.zeros((2, 1, 28, 28), np.float32), np.array([0, 1]))
    splits = make_splits({"train": split}, 28, synthetic=True, source="phantom")
    with pytest.raises(UserError, match="--feedback-batch s3://triage-state/retrain/batches/none.json"):
        _add_feedback(splits, "s3://triage-state/retrain/batches/none.json")
