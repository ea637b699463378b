"""Write-through persistence for moto's S3: every acknowledged change is on disk before the answer leaves.

moto keeps objects in memory. `WriteThrough` is a WSGI layer around moto's server app: while a mutating request
runs, hooks on moto's S3 backend note which objects and buckets it created or removed (exact names, no URL
parsing); once moto has answered, and before the answer is sent, each noted object is written to the
`ObjectStore` as moto now holds it (bytes, metadata with the content type, etag, last-modified), or removed from
it. For an object created in a notifying bucket, the MinIO webhook event goes to the `Outbox` after that, still
before the answer, so an acknowledged upload always has its event on disk. A crash before the answer loses
nothing that was acknowledged; the client retries what was not.

`restore` loads the store back into moto at start, with the same etags (multipart ones too) and times, before
the server listens. Writes to one object are persisted under one lock, so the last persisted state is moto's.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from triage.stack.object_store import ObjectStore, StoredBucket, StoredObject
from triage.stack.outbox import Outbox, minio_webhook

__all__ = ["HEALTH_PATH", "WriteThrough", "install_hooks", "restore"]

log = logging.getLogger("triage.s3server")

HEALTH_PATH = "/minio/health/live"  # MinIO's liveness path; "minio" is no bucket of ours
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_changes = threading.local()  # the current request's list of `_Change`, None outside a request
_locks = [threading.Lock() for _ in range(64)]


@dataclass(frozen=True)
class _Change:
    what: str  # "object" | "bucket"
    account_id: str
    partition: str
    bucket: str
    key: str | None = None
    created: Any = None  # the FakeKey a put created (its event names that version)


def _note(change: _Change) -> None:
    noted = getattr(_changes, "items", None)
    if noted is not None:
        noted.append(change)


def install_hooks() -> None:
    """Wrap moto's S3 backend methods that create or remove objects and buckets (once per process)."""
    from moto.s3.models import S3Backend

    if getattr(S3Backend, "_triage_hooked", False):
        return

    def after(name: str, noted: Callable[..., _Change]) -> None:
        original = getattr(S3Backend, name)

        def hooked(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            _note(noted(self, result, *args, **kwargs))
            return result

        setattr(S3Backend, name, hooked)

    after("put_object", lambda self, key, bucket_name, key_name, *a, **k: _Change(
        "object", self.account_id, self.partition, bucket_name, key_name, created=key))
    after("delete_object", lambda self, _r, bucket_name, key_name, *a, **k: _Change(
        "object", self.account_id, self.partition, bucket_name, key_name))
    after("create_bucket", lambda self, _r, bucket_name, *a, **k: _Change(
        "bucket", self.account_id, self.partition, bucket_name))
    after("delete_bucket", lambda self, _r, bucket_name, *a, **k: _Change(
        "bucket", self.account_id, self.partition, bucket_name))
    S3Backend._triage_hooked = True


def _backend(account_id: str, partition: str) -> Any:
    from moto.s3.models import s3_backends

    return s3_backends[account_id][partition]


def _current_key(change: _Change) -> Any:
    from moto.s3.models import FakeKey

    bucket = _backend(change.account_id, change.partition).buckets.get(change.bucket)
    key = bucket.keys.get(change.key) if bucket is not None else None
    return key if isinstance(key, FakeKey) else None


def _stored(change: _Change, key: Any) -> StoredObject:
    return StoredObject(
        bucket=change.bucket, key=change.key or "", data=key.value, etag=key.etag.strip('"'),
        last_modified=key.last_modified.isoformat(), metadata=dict(key.metadata), account_id=change.account_id,
        checksum_algorithm=key.checksum_algorithm, checksum_value=key.checksum_value)


def _event_name(environ: dict[str, Any]) -> str:
    query = environ.get("QUERY_STRING", "")
    if environ["REQUEST_METHOD"] == "POST":
        return "s3:ObjectCreated:CompleteMultipartUpload" if "uploadId=" in query else "s3:ObjectCreated:Post"
    return "s3:ObjectCreated:Copy" if environ.get("HTTP_X_AMZ_COPY_SOURCE") else "s3:ObjectCreated:Put"


def _json_answer(start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


class WriteThrough:
    """WSGI middleware: moto's app, with each change persisted (and notified) before the answer."""

    def __init__(self, app: Callable[..., Iterable[bytes]], store: ObjectStore, outbox: Outbox | None,
                 notifying: Iterable[str] = ()) -> None:
        self.app = app
        self.store = store
        self.outbox = outbox
        self.notifying = frozenset(notifying)
        self.ready = threading.Event()  # set once the project's buckets exist; the health path says so

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == HEALTH_PATH:
            ok = self.ready.is_set()
            return _json_answer(start_response, "200 OK" if ok else "503 Service Unavailable", {"ready": ok})
        if path.startswith("/moto-api"):  # a reset would empty memory but not the disk behind it
            return _json_answer(start_response, "403 Forbidden", {"error": {
                "code": "forbidden", "message": "moto's admin API is off: this S3 keeps its objects on disk"}})
        if environ.get("REQUEST_METHOD") in _SAFE_METHODS:
            return self.app(environ, start_response)
        answer: dict[str, Any] = {}
        chunks: list[bytes] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            answer.update(status=status, headers=headers)
            return chunks.append

        _changes.items = []
        try:
            app_iter = self.app(environ, capture)
            try:
                chunks.extend(app_iter)
            finally:
                getattr(app_iter, "close", lambda: None)()
            changes: list[_Change] = _changes.items
        finally:
            _changes.items = None
        try:
            self._persist(changes, ok=answer["status"].startswith("2"), event_name=_event_name(environ))
        except OSError:
            log.exception("could not persist a write; answering 503 so the client retries")
            payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                       b"<Message>could not persist the write to disk</Message></Error>")
            start_response("503 Service Unavailable", [("Content-Type", "application/xml"),
                                                       ("Content-Length", str(len(payload)))])
            return [payload]
        start_response(answer["status"], answer["headers"])
        return chunks

    def _persist(self, changes: list[_Change], *, ok: bool, event_name: str) -> None:
        for change in changes:
            if change.what == "bucket":
                self._persist_bucket(change)
                continue
            with _locks[hash((change.bucket, change.key)) % len(_locks)]:
                key = _current_key(change)
                if key is None:
                    self.store.remove(change.bucket, change.key or "")
                else:
                    self.store.save(_stored(change, key))
            created = change.created
            if ok and created is not None and self.outbox is not None and change.bucket in self.notifying:
                self.outbox.add(change.bucket, change.key or "", created.etag, minio_webhook(
                    change.bucket, change.key or "", created.etag, created.size,
                    created.last_modified.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", event_name))

    def _persist_bucket(self, change: _Change) -> None:
        bucket = _backend(change.account_id, change.partition).buckets.get(change.bucket)
        if bucket is None:
            self.store.remove_bucket(change.bucket)
        else:
            self.store.save_bucket(StoredBucket(change.bucket, change.account_id, bucket.region_name))


def restore(store: ObjectStore) -> tuple[int, int]:
    """Load the stored buckets and objects into moto (same etags and times, no notifications); the counts."""
    from moto.utilities.utils import get_partition

    where: dict[str, Any] = {}
    buckets = store.buckets()
    for bucket in buckets:
        backend = _backend(bucket.account_id, get_partition(bucket.region))
        if bucket.name not in backend.buckets:
            backend.create_bucket(bucket.name, bucket.region)
        where[bucket.name] = backend
    count = 0
    for obj in store.objects():
        backend = where.get(obj.bucket)
        if backend is None:  # its bucket's file was lost: keep the object rather than drop it
            backend = where[obj.bucket] = _backend(obj.account_id, "aws")
            backend.create_bucket(obj.bucket, "us-east-1")
        key = backend.put_object(obj.bucket, obj.key, obj.data, etag=obj.etag, disable_notification=True)
        key.set_metadata(dict(obj.metadata))
        key.last_modified = datetime.fromisoformat(obj.last_modified)
        key.checksum_algorithm, key.checksum_value = obj.checksum_algorithm, obj.checksum_value
        count += 1
    return len(buckets), count
