"""Ingest results as `shared.ingest` writes them (input image, heatmap, result JSON, request record), for tests."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from shared.feedback import record_request
from shared.names import INPUT_BUCKET, RESULT_BUCKET, heatmap_key, result_key
from shared.storage import Storage
from shared.timestamps import utc_iso

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def png(width: int = 40, height: int = 32, *, seed: int = 0, text: dict[str, str] | None = None) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    for name, value in (text or {}).items():
        info.add_text(name, value)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def result(key: str, *, request_id: str, label: str | None = "normal", probability: float = 0.2,
           urgent: bool = False, uploaded_at: datetime = NOW, version: str = "7", etag: str = "e",
           status: str = "ok", assessable: bool = True) -> dict[str, Any]:
    if status != "ok":
        return {"status": "error", "request_id": request_id, "bucket": INPUT_BUCKET, "key": key, "etag": etag,
                "error": {"code": "bad_image", "message": "not an image"}, "model": {"name": "xray-vit"},
                "uploaded_at": utc_iso(uploaded_at), "completed_at": utc_iso(uploaded_at + timedelta(seconds=1))}
    refused = {} if assessable else {"reason": {"code": "out_of_distribution", "message": "not a chest film"}}
    return {
        "request_id": request_id, "assessable": assessable, **refused, "label": label if assessable else None,
        "probability": probability if assessable else None, "threshold": 0.5, "urgent": urgent and assessable,
        "model": {"name": "xray-vit", "version": version}, "timings_ms": {"total": 3.0},
        "status": "ok", "bucket": INPUT_BUCKET, "key": key, "etag": etag, "size": 100,
        "heatmap": ({"bucket": RESULT_BUCKET, "key": heatmap_key(key), "method": "occlusion"} if assessable
                    else {"status": "none", "reason": "not_assessable"}),
        "uploaded_at": utc_iso(uploaded_at), "completed_at": utc_iso(uploaded_at + timedelta(seconds=0.2)),
        "upload_to_result_s": 0.2,
    }


def put_case(storage: Storage, key: str, *, image: bytes | None = None, **fields: Any) -> dict[str, Any]:
    """Write what ingest writes for `key` (the input too); returns the result JSON."""
    etag = storage.put_bytes(INPUT_BUCKET, key, image if image is not None else png(), "image/png")
    fields.setdefault("request_id", "r" + hashlib.sha256(key.encode()).hexdigest()[:16])
    body = result(key, etag=str(etag).strip('"'), **fields)
    if body["status"] == "ok":
        storage.put_bytes(RESULT_BUCKET, heatmap_key(key), png(seed=9), "image/png")
        record_request(storage, body, source="ingest")
    storage.put_json(RESULT_BUCKET, result_key(key), body)
    return body
