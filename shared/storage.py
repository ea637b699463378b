"""S3 access (moto server locally, MinIO in production) through one small object wrapping a boto3 client."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.errors import NotFound, PayloadTooLarge, TriageError
from shared.names import BUCKETS

__all__ = [
    "MAX_CAS_ATTEMPTS", "ListedObject", "Stale", "StateConflict", "Storage", "StorageUnavailable", "StoredObject",
    "split_s3_uri", "unavailable_on_s3_failure",
]

log = logging.getLogger(__name__)
MAX_CAS_ATTEMPTS = 8


class StateConflict(TriageError):
    """A state object kept changing under us (many concurrent writers): 503, so the event is retried."""

    status = 503
    code = "state_conflict"


class StorageUnavailable(TriageError):
    """S3 could not be reached or failed: our side, so 503 and the event is delivered again."""

    status = 503
    code = "storage_unavailable"


@contextlib.contextmanager
def unavailable_on_s3_failure(doing: str) -> Iterator[None]:
    """Turn an S3 failure inside the block into `StorageUnavailable` (503: the event is delivered again), naming
    only the exception's class: boto messages can quote keys, and keys are named by the hospital."""
    from botocore.exceptions import BotoCoreError, ClientError  # here: callers that never fail need no botocore

    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise StorageUnavailable(f"S3 failed {doing} ({type(exc).__name__}); the event will come again") from exc


class Stale(TriageError):
    """The object no longer has the asked etag (it was replaced since the event that named it)."""

    status = 409
    code = "stale_object"


@dataclass(frozen=True)
class ListedObject:
    """One entry of a bucket listing."""

    key: str
    etag: str
    last_modified: datetime
    size: int


@dataclass(frozen=True)
class StoredObject:
    """One object version as read: its bytes and what S3 says of it."""

    data: bytes
    etag: str
    last_modified: datetime | None
    content_type: str | None


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` → ("bucket", "some/key")."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def _is_precondition_failure(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code", ""))
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    # 409 ConditionalRequestConflict: a concurrent conditional write won on AWS.
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def _read_at_most(body: Any, content_length: Any, max_bytes: int) -> bytes:
    """The body when it holds at most `max_bytes` (by its Content-Length, then by what it sends); PayloadTooLarge."""
    too_large = PayloadTooLarge(f"the object holds over {max_bytes} bytes, the limit (MAX_INPUT_BYTES)")
    if isinstance(content_length, int) and content_length > max_bytes:
        raise too_large
    data = bytearray()
    while len(data) <= max_bytes and (chunk := body.read(max_bytes + 1 - len(data))):
        data += chunk
    if len(data) > max_bytes:
        raise too_large
    return bytes(data)


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket") or status == 404


class Storage:
    """Bytes and JSON in S3 buckets. The client is passed in, so tests hand it a client of a local server."""

    def __init__(self, client: Any, *, buckets: tuple[str, ...] = BUCKETS) -> None:
        self.client = client
        self.buckets = buckets

    @classmethod
    def from_settings(cls, settings: Settings) -> Storage:
        """A boto3 client for `S3_ENDPOINT_URL` (path-style addressing, as MinIO and moto expect)."""
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            aws_access_key_id=settings.aws_access_key_id,
            aws_secret_access_key=settings.aws_secret_access_key,
            region_name=settings.aws_region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
        )
        return cls(client)

    def ensure_buckets(self, buckets: tuple[str, ...] | None = None) -> None:
        """Create the design's buckets that do not exist yet."""
        existing = {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}
        for bucket in buckets or self.buckets:
            if bucket not in existing:
                # Another process may create it between the listing and here.
                with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):
                    self.client.create_bucket(Bucket=bucket)

    def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Write one object; returns its etag (without quotes)."""
        extra: dict[str, Any] = {}
        if content_type:
            extra["ContentType"] = content_type
        if metadata:
            extra["Metadata"] = metadata
        response = self.client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
        return str(response.get("ETag", "")).strip('"')

    def put_file(self, bucket: str, key: str, path: str | Path, content_type: str | None = None) -> None:
        """Upload a local file, streamed (multipart when large), without reading it into memory."""
        extra = {"ContentType": content_type} if content_type else None
        self.client.upload_file(str(path), bucket, key, ExtraArgs=extra)

    def get_object(self, bucket: str, key: str, *, if_match: str | None = None,
                   max_bytes: int | None = None) -> StoredObject:
        """The object (only the version with etag `if_match` when given: `Stale` otherwise); NotFound if absent;
        PayloadTooLarge (413, not naming the key) when it holds over `max_bytes`, found before its body is read."""
        extra = {"IfMatch": f'"{if_match.strip(chr(34))}"'} if if_match else {}
        try:
            response = self.client.get_object(Bucket=bucket, Key=key, **extra)
        except Exception as exc:
            if _is_missing(exc):
                raise NotFound(f"s3://{bucket}/{key} does not exist") from exc
            if if_match and _is_precondition_failure(exc):
                raise Stale(f"s3://{bucket}/{key} was replaced") from exc
            raise
        with contextlib.closing(response["Body"]) as body:
            data = body.read() if max_bytes is None else _read_at_most(body, response.get("ContentLength"), max_bytes)
        return StoredObject(data, str(response.get("ETag", "")).strip('"'), response.get("LastModified"),
                            response.get("ContentType"))

    def get_bytes(self, bucket: str, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _is_missing(exc):
                raise NotFound(f"s3://{bucket}/{key} does not exist") from exc
            raise
        return response["Body"].read()

    def put_json(self, bucket: str, key: str, value: Any, metadata: dict[str, str] | None = None) -> str:
        data = json.dumps(value, indent=2, sort_keys=True).encode()
        return self.put_bytes(bucket, key, data, "application/json", metadata)

    def get_json(self, bucket: str, key: str) -> Any:
        return json.loads(self.get_bytes(bucket, key))

    def get_json_object(self, bucket: str, key: str) -> dict[str, Any] | None:
        """The JSON object at `bucket/key`; None when it is absent, not JSON or not an object (never trusted)."""
        try:
            value = self.get_json(bucket, key)
        except NotFound:
            return None
        except ValueError:
            log.warning("an object in bucket %s is not JSON; read as none", bucket)
            return None
        return value if isinstance(value, dict) else None

    def get_json_versioned(self, bucket: str, key: str) -> tuple[Any, str | None]:
        """(value, etag) of a JSON object, (None, None) when it does not exist: the read half of `put_json_if`."""
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _is_missing(exc):
                return None, None
            raise
        return json.loads(response["Body"].read()), response["ETag"]

    def put_json_if(self, bucket: str, key: str, value: Any, etag: str | None) -> bool:
        """Write only if the object still has `etag` (or, with None, does not exist yet): a compare-and-swap for
        state that concurrent function instances update. False when someone else wrote first."""
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(
                Bucket=bucket,
                Key=key,
                Body=json.dumps(value, sort_keys=True).encode("utf-8"),
                ContentType="application/json",
                **condition,
            )
        except Exception as exc:
            if _is_precondition_failure(exc):
                return False
            raise
        return True

    def update_json(
        self,
        bucket: str,
        key: str,
        mutate: Callable[[Any | None], tuple[Any, Any | None]],
        *,
        conflict: type[TriageError] = StateConflict,
        attempts: int = MAX_CAS_ATTEMPTS,
    ) -> Any:
        """The one compare-and-swap for JSON state that concurrent instances update.

        Reads the value (None when absent or not JSON), calls `mutate(value)` → (result, new value or None for
        "no write"), writes it only if nobody wrote since (`put_json_if`), re-reads and retries when someone did.
        Returns `result`; raises `conflict` after `attempts` lost races.
        """
        for _attempt in range(attempts):
            try:
                value, etag = self.get_json_versioned(bucket, key)
            except ValueError:
                log.warning("a state object in bucket %s is not JSON; starting it afresh", bucket)
                head = self.head(bucket, key)  # replaced only if still that same broken object
                value, etag = None, (f'"{head["etag"]}"' if head else None)
            result, new_value = mutate(value)
            if new_value is None or self.put_json_if(bucket, key, new_value, etag):
                return result
        raise conflict(f"s3://{bucket}/{key} kept changing; retry later")

    def head(self, bucket: str, key: str) -> dict[str, Any] | None:
        """{etag, size, content_type, metadata} of an object, None when it does not exist."""
        try:
            response = self.client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise
        return {
            "etag": str(response.get("ETag", "")).strip('"'),
            "size": int(response.get("ContentLength", 0)),
            "content_type": response.get("ContentType"),
            "metadata": dict(response.get("Metadata", {})),
        }

    def exists(self, bucket: str, key: str) -> bool:
        return self.head(bucket, key) is not None

    def iter_objects(self, bucket: str, prefix: str = "", page_size: int | None = None) -> Iterator[ListedObject]:
        """Every object under `prefix` with its etag, time and size, page by page."""
        paginator = self.client.get_paginator("list_objects_v2")
        pagination = {"PageSize": page_size} if page_size else {}
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig=pagination):
            for item in page.get("Contents", []):
                yield ListedObject(item["Key"], str(item.get("ETag", "")).strip('"'), item["LastModified"],
                                   int(item.get("Size", 0)))

    def iter_keys(self, bucket: str, prefix: str = "", page_size: int | None = None) -> Iterator[str]:
        return (listed.key for listed in self.iter_objects(bucket, prefix, page_size))

    def list_keys(self, bucket: str, prefix: str = "", page_size: int | None = None) -> list[str]:
        """Every key under `prefix`, across pages, sorted."""
        return sorted(self.iter_keys(bucket, prefix, page_size))

    def copy(self, bucket: str, src_key: str, dst_key: str, dst_bucket: str | None = None) -> None:
        """Server-side copy; writing to a temporary key and copying makes a write all-or-nothing for readers."""
        self.client.copy_object(Bucket=dst_bucket or bucket, Key=dst_key, CopySource={"Bucket": bucket, "Key": src_key})

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)
