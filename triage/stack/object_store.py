"""The local S3's objects on disk: one file per object version, named by sha256(bucket/key), written atomically.

A file holds one line of JSON (bucket, key, etag, last-modified, metadata, checksum) and then the object's bytes;
it is written to a temporary file, fsync'd, renamed over the old one and its folder fsync'd, so a crash at any
moment leaves either the old object or the new one, never a part. Names are hashes, so keys of any length and
alphabet (200 unicode characters, `%`, `+`, spaces, slashes) fit any file system. Buckets are one small JSON
file each.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["ObjectStore", "StoredBucket", "StoredObject", "write_atomically"]

log = logging.getLogger("triage.s3server")


def write_atomically(path: Path, *chunks: bytes) -> None:
    """Write `chunks` to `path` so that a crash leaves the old file or the whole new one (temp, fsync, rename)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(temp, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class StoredBucket:
    name: str
    account_id: str
    region: str


@dataclass(frozen=True)
class StoredObject:
    """One object as S3 answers it: bytes, etag (multipart ones too), last-modified, metadata incl. content type."""

    bucket: str
    key: str
    data: bytes
    etag: str  # without quotes, as moto keeps it
    last_modified: str  # ISO 8601
    metadata: dict[str, str] = field(default_factory=dict)
    account_id: str = "123456789012"
    checksum_algorithm: str | None = None
    checksum_value: str | None = None

    def header(self) -> bytes:
        fields = asdict(self)
        del fields["data"]
        return json.dumps(fields, ensure_ascii=True).encode("ascii") + b"\n"


class ObjectStore:
    """`<root>/objects/<2 hex>/<sha256(bucket/key)>` and `<root>/buckets/<sha256(bucket)>.json`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects_dir = self.root / "objects"
        self.buckets_dir = self.root / "buckets"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.buckets_dir.mkdir(parents=True, exist_ok=True)

    def object_path(self, bucket: str, key: str) -> Path:
        digest = _digest(bucket, key)
        return self.objects_dir / digest[:2] / digest

    def save(self, obj: StoredObject) -> None:
        path = self.object_path(obj.bucket, obj.key)
        path.parent.mkdir(exist_ok=True)
        write_atomically(path, obj.header(), obj.data)

    def remove(self, bucket: str, key: str) -> None:
        path = self.object_path(bucket, key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            _fsync_dir(path.parent)

    def save_bucket(self, bucket: StoredBucket) -> None:
        write_atomically(self.buckets_dir / f"{_digest(bucket.name)}.json", json.dumps(asdict(bucket)).encode())

    def remove_bucket(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.buckets_dir / f"{_digest(name)}.json").unlink()
            _fsync_dir(self.buckets_dir)

    def buckets(self) -> list[StoredBucket]:
        return [StoredBucket(**json.loads(path.read_text())) for path in sorted(self.buckets_dir.glob("*.json"))]

    def objects(self) -> Iterator[StoredObject]:
        """Every stored object. Temp files of an interrupted write are removed; a file that cannot be read (a
        damaged disk, not a crash: writes are atomic) is moved to `<root>/unreadable/` and logged, not served."""
        for path in sorted(self.objects_dir.glob("*/*")):
            if path.name.startswith("."):
                path.unlink(missing_ok=True)  # a write that never reached its rename
                continue
            try:
                with open(path, "rb") as handle:
                    fields = json.loads(handle.readline())
                    data = handle.read()
                stored = StoredObject(data=data, **fields)
            except (ValueError, TypeError) as exc:
                aside = self.root / "unreadable"
                aside.mkdir(exist_ok=True)
                os.replace(path, aside / path.name)
                log.error("stored object %s is unreadable (%s); moved to %s", path.name, type(exc).__name__, aside)
                continue
            yield stored
