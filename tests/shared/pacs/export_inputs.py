"""An ingested DICOM input as export finds it: the original instance, its heatmap and the prediction event."""

from __future__ import annotations

import io

import numpy as np
import pydicom

from shared.events import CloudEvent, prediction_created_event
from shared.imaging import encode_png
from shared.names import INPUT_BUCKET, RESULT_BUCKET, dicom_instance_key, heatmap_key
from shared.storage import Storage
from tests.shared.pacs.generated_dx import generated_dx

__all__ = ["ingested", "not_assessable_event", "prediction_event"]


def prediction_event(key: str, etag: str, *, label: str | None = "pneumonia", status: str = "ok",
                     bucket: str = INPUT_BUCKET, probability: float | None = 0.8125) -> CloudEvent:
    """`triage.prediction.created` as ingest sends it (no identifiers: only the key, etag and the answer)."""
    return prediction_created_event({
        "request_id": "req-export-1", "status": status, "bucket": bucket, "key": key, "etag": etag,
        "label": label, "probability": probability, "threshold": 0.4, "urgent": False,
        "model": {"name": "xray-vit", "version": "5"},
        "heatmap": {"status": "ready", "bucket": RESULT_BUCKET, "key": heatmap_key(key), "method": "occlusion"},
    })


def not_assessable_event(key: str, etag: str, code: str = "out_of_distribution") -> CloudEvent:
    """`triage.prediction.created` for an input the gate refused, as ingest sends it: no label, no probability,
    the gate's reason and no heatmap."""
    from shared.gate import REASONS

    return prediction_created_event({
        "request_id": "req-export-na", "status": "ok", "bucket": INPUT_BUCKET, "key": key, "etag": etag,
        "assessable": False, "reason": {"code": code, "message": REASONS[code]},
        "label": None, "probability": None, "threshold": 0.4, "urgent": False,
        "model": {"name": "xray-vit", "version": "5"},
        "heatmap": {"status": "none", "reason": "not_assessable"},
    })


def ingested(storage: Storage, *, seed: int = 0) -> tuple[pydicom.Dataset, CloudEvent]:
    """A generated DX stored as the receiver stores it, its heatmap PNG, and the prediction event for it."""
    data = generated_dx(seed=seed)
    source = pydicom.dcmread(io.BytesIO(data))
    key = dicom_instance_key(str(source.StudyInstanceUID), str(source.SOPInstanceUID))
    etag = storage.put_bytes(INPUT_BUCKET, key, data, "application/dicom")
    heatmap = np.random.default_rng(seed).integers(0, 255, (28, 28), dtype=np.uint8)
    storage.put_bytes(RESULT_BUCKET, heatmap_key(key), encode_png(heatmap), "image/png")
    return source, prediction_event(key, etag)
