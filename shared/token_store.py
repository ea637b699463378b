"""Where the API token table lives: an object in the state bucket (production) or a file (the local stack, or a
mounted Kubernetes Secret / ConfigMap). Changing it needs no redeploy: the functions re-read it (`shared.api_auth`).

`token_store(uri)` picks the backend: `s3://bucket/key` or a file path. Each backend answers a cheap `version()`
(etag; mtime, size and inode) so a reader re-parses only what changed, and `update()` is a read-modify-write that
loses no concurrent change (S3: the conditional-write loop of `Storage.update_json`; file: an exclusive lock and
an atomic rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

from shared.api_tokens import TokenTable
from shared.errors import NotFound
from shared.storage import Storage, split_s3_uri

__all__ = ["FileTokenStore", "S3TokenStore", "TokenStore", "token_store"]

Result = TypeVar("Result")
Mutation = Callable[[TokenTable], tuple[Result, TokenTable | None]]


class TokenStore(Protocol):
    """A place the token table is read from and written to."""

    uri: str

    def version(self) -> str | None:
        """Changes whenever the table does; None when there is no table."""
        ...

    def read(self) -> bytes | None:
        """The table's bytes; None when there is no table yet."""
        ...

    def update(self, mutate: Mutation[Result]) -> Result:
        """Apply `mutate(table)` → (result, new table or None for no write) without losing a concurrent change."""
        ...


class FileTokenStore:
    """The table as a JSON file (mode 0600), replaced atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.uri = str(self.path)

    def version(self) -> str | None:
        try:
            stat = self.path.stat()  # follows the ..data symlink of a mounted Secret, so a swap is seen
        except FileNotFoundError:
            return None
        return f"{stat.st_mtime_ns}:{stat.st_size}:{stat.st_ino}"

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def update(self, mutate: Mutation[Result]) -> Result:
        with self._locked():
            result, table = mutate(TokenTable.parse(self.read()))
            if table is not None:
                descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
                try:
                    with os.fdopen(descriptor, "wb") as out:  # mkstemp creates it 0600
                        out.write(table.dumps())
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(temporary, self.path)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(temporary)
                    raise
            return result


class S3TokenStore:
    """The table as a JSON object (in the state bucket, where no input key reaches)."""

    def __init__(self, uri: str, storage: Callable[[], Storage]) -> None:
        self.uri = uri
        self.bucket, self.key = split_s3_uri(uri)
        if not self.key:
            raise ValueError(f"no object key in {uri!r}")
        self._storage_factory = storage
        self._storage: Storage | None = None

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = self._storage_factory()
        return self._storage

    def version(self) -> str | None:
        head = self.storage.head(self.bucket, self.key)
        return None if head is None else head["etag"]

    def read(self) -> bytes | None:
        try:
            return self.storage.get_object(self.bucket, self.key).data
        except NotFound:
            return None

    def update(self, mutate: Mutation[Result]) -> Result:
        self.storage.ensure_buckets((self.bucket,))

        def step(value: object) -> tuple[Result, dict | None]:
            result, table = mutate(TokenTable.from_value(value))
            return result, None if table is None else table.to_json()

        return self.storage.update_json(self.bucket, self.key, step)


def token_store(uri: str, storage: Callable[[], Storage]) -> TokenStore:
    """The store for `uri`: `s3://bucket/key` (through `storage()`, made on first use) or a file path."""
    if uri.startswith("s3://"):
        return S3TokenStore(uri, storage)
    return FileTokenStore(uri)
