"""The review function's reads from S3: every ingest result with its label, one case, its image and heatmap.

Results (`inference-results/<key>.json`) and labels (`feedback/<request_id>.json`) are listed on every call and
read only when new or changed (cached by etag), so a worklist that polls every few seconds costs two LISTs. A
listed object is a case only when its content says so (a result of `inference-inputs/<key>` at its own key).
Images leave only as PNG re-encoded from the decoded pixels (DICOM included: no header, no metadata, no content
type the uploader chose), so nothing but pixels reaches the browser and the buckets stay private.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from shared.errors import InvalidField, NotFound, TriageError
from shared.imaging import decode_image
from shared.names import (
    FEEDBACK_BUCKET,
    INPUT_BUCKET,
    RESULT_BUCKET,
    feedback_key,
    feedback_request_id,
    heatmap_key,
    result_key,
)
from shared.review.worklist import Case, Review, case_from_result
from shared.storage import Stale, Storage

__all__ = ["MAX_KEY_LENGTH", "CaseStore", "check_case_key"]

MAX_KEY_LENGTH = 1024  # S3's own limit on a key, in bytes


def check_case_key(key: Any) -> str:
    """An input key as the page sends it; 422 for anything S3 could not hold."""
    if not isinstance(key, str) or not key or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_LENGTH:
        raise InvalidField(f"key: expected the key of an uploaded image (1 to {MAX_KEY_LENGTH} bytes)")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise InvalidField("key: control characters are not allowed")
    return key


def _is_result_of(result: Any, listed_key: str) -> bool:
    return (isinstance(result, dict) and result.get("bucket") == INPUT_BUCKET and isinstance(result.get("key"), str)
            and result_key(result["key"]) == listed_key and result.get("status") in ("ok", "error"))


class _EtagCache:
    """Parsed JSON per key, kept while the listed etag is the same."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[str, Any]] = {}
        self._lock = threading.Lock()

    def refresh(self, listed: dict[str, str], read: Callable[[str], Any], pool: ThreadPoolExecutor) -> dict[str, Any]:
        with self._lock:
            stale = [key for key, etag in listed.items() if self._items.get(key, ("",))[0] != etag]
        fresh = dict(zip(stale, pool.map(read, stale), strict=True))
        with self._lock:
            for key in stale:
                self._items[key] = (listed[key], fresh[key])
            for key in set(self._items) - set(listed):
                del self._items[key]
            return {key: value for key, (_, value) in self._items.items()}


class CaseStore:
    """Cases from a `Storage` (results + labels); `image_png` / `heatmap_png` stream one case's pictures."""

    def __init__(self, storage: Storage, *, readers: int = 8) -> None:
        self.storage = storage
        self._pool = ThreadPoolExecutor(readers, thread_name_prefix="review-read")
        self._results = _EtagCache()
        self._labels = _EtagCache()

    def _read_json(self, bucket: str) -> Callable[[str], Any]:
        def read(key: str) -> Any:
            return self.storage.get_json_object(bucket, key)  # None when gone or unreadable
        return read

    def _reviews(self) -> dict[str, Review]:
        listed = {item.key: item.etag for item in self.storage.iter_objects(FEEDBACK_BUCKET)
                  if feedback_request_id(item.key)}
        records = self._labels.refresh(listed, self._read_json(FEEDBACK_BUCKET), self._pool)
        reviews = {}
        for key, record in records.items():
            review = Review.from_record(record) if isinstance(record, dict) else None
            if review is not None:
                reviews[str(feedback_request_id(key))] = review
        return reviews

    def cases(self) -> list[Case]:
        """Every case, with its label (unordered: `shared.review.worklist` orders them)."""
        listed = {item.key: item.etag for item in self.storage.iter_objects(RESULT_BUCKET)
                  if item.key.endswith(".json")}
        results = self._results.refresh(listed, self._read_json(RESULT_BUCKET), self._pool)
        reviews = self._reviews()
        return [case_from_result(result, reviews.get(str(result.get("request_id"))))
                for listed_key, result in sorted(results.items()) if _is_result_of(result, listed_key)]

    def _result(self, key: str) -> dict[str, Any]:
        result = self.storage.get_json_object(RESULT_BUCKET, result_key(check_case_key(key)))
        if not _is_result_of(result, result_key(key)):
            raise NotFound("key: no triaged image has this key")
        assert isinstance(result, dict)
        return result

    def case(self, key: str) -> Case:
        """One case and its label; 404 for a key with no result."""
        result = self._result(key)
        review = None
        request_id = result.get("request_id")
        if isinstance(request_id, str) and feedback_request_id(feedback_key(request_id)):
            record = self.storage.get_json_object(FEEDBACK_BUCKET, feedback_key(request_id))
            review = Review.from_record(record) if isinstance(record, dict) else None
        return case_from_result(result, review)

    def image_png(self, key: str, *, max_pixels: int) -> bytes:
        """The triaged version of the input as an 8-bit grayscale PNG of its pixels (409 when it was replaced)."""
        result = self._result(key)
        try:
            stored = self.storage.get_object(INPUT_BUCKET, key, if_match=result.get("etag") or None)
        except Stale as exc:
            raise TriageError("key: the image was replaced after triage; its new result is on the way",
                              code="replaced", status=409) from exc
        except NotFound as exc:
            raise NotFound("key: the image is no longer in the input bucket") from exc
        content_type = "application/dicom" if key.lower().endswith((".dcm", ".dicom")) else None
        pixels = decode_image(stored.data, content_type, max_pixels=max_pixels)
        return _png(pixels)

    def heatmap_png(self, key: str) -> bytes:
        """The stored heatmap overlay of a case (404 when the result has none)."""
        result = self._result(key)
        if result.get("status") != "ok":
            raise NotFound("key: this case has no heatmap (triage failed)")
        try:
            return self.storage.get_bytes(RESULT_BUCKET, heatmap_key(key))
        except NotFound as exc:
            raise NotFound("key: the heatmap of this case is missing") from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _png(pixels: np.ndarray) -> bytes:
    image = Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8), mode="L")
    out = io.BytesIO()
    image.save(out, format="PNG")  # a new file: no text chunks or metadata of the upload survive
    return out.getvalue()
