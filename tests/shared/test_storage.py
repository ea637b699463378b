"""Storage against a real local S3 server (moto)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import NotFound, PayloadTooLarge
from shared.names import BUCKETS
from shared.storage import Storage, split_s3_uri


@pytest.fixture
def storage(s3_server: str) -> Storage:
    return Storage.from_settings(Settings(s3_endpoint_url=s3_server))


@pytest.fixture
def bucket(storage: Storage) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.ensure_buckets((name,))
    return name


def test_ensure_buckets_creates_the_design_buckets_and_is_idempotent(storage: Storage) -> None:
    storage.ensure_buckets()
    storage.ensure_buckets()
    names = {b["Name"] for b in storage.client.list_buckets()["Buckets"]}
    assert set(BUCKETS) <= names


def test_bytes_round_trip_with_content_type_metadata_and_etag(storage: Storage, bucket: str) -> None:
    etag = storage.put_bytes(bucket, "a/b.png", b"\x89PNG-bytes", "image/png", {"source": "unit-test"})
    assert storage.get_bytes(bucket, "a/b.png") == b"\x89PNG-bytes"
    head = storage.head(bucket, "a/b.png")
    assert head is not None
    assert head["etag"] == etag and not etag.startswith('"')
    assert head["content_type"] == "image/png" and head["metadata"] == {"source": "unit-test"}
    assert head["size"] == len(b"\x89PNG-bytes")
    assert storage.exists(bucket, "a/b.png")


def test_missing_objects(storage: Storage, bucket: str) -> None:
    assert storage.head(bucket, "nope") is None
    assert not storage.exists(bucket, "nope")
    with pytest.raises(NotFound, match="nope"):
        storage.get_bytes(bucket, "nope")
    with pytest.raises(NotFound):
        storage.get_json(bucket, "nope.json")


def test_json_round_trip(storage: Storage, bucket: str) -> None:
    storage.put_json(bucket, "x.json", {"label": "pneumonia", "n": [1, 2]})
    assert storage.get_json(bucket, "x.json") == {"label": "pneumonia", "n": [1, 2]}
    assert storage.head(bucket, "x.json")["content_type"] == "application/json"


def test_list_keys_follows_pages(storage: Storage, bucket: str) -> None:
    keys = [f"p/{i:02d}" for i in range(7)]
    for key in keys:
        storage.put_bytes(bucket, key, b"x")
    storage.put_bytes(bucket, "other/1", b"x")
    assert storage.list_keys(bucket, "p/", page_size=2) == keys
    assert len(storage.list_keys(bucket)) == 8


def test_copy_and_delete(storage: Storage, bucket: str) -> None:
    storage.put_bytes(bucket, "tmp/upload", b"payload")
    storage.copy(bucket, "tmp/upload", "final/object")
    storage.delete(bucket, "tmp/upload")
    assert storage.get_bytes(bucket, "final/object") == b"payload"
    assert not storage.exists(bucket, "tmp/upload")


def test_split_s3_uri() -> None:
    assert split_s3_uri("s3://processed/phantom/splits.npz") == ("processed", "phantom/splits.npz")
    with pytest.raises(ValueError):
        split_s3_uri("http://x/y")


def test_put_file_streams_a_local_file(storage: Storage, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 100_000)
    storage.put_file(bucket, "raw/big.bin", path, "application/octet-stream")
    assert storage.get_bytes(bucket, "raw/big.bin") == path.read_bytes()
    assert storage.head(bucket, "raw/big.bin")["content_type"] == "application/octet-stream"


def test_put_json_if_is_a_compare_and_swap(storage) -> None:
    assert storage.get_json_versioned("feedback", "_state/x.json") == (None, None)
    assert storage.put_json_if("feedback", "_state/x.json", {"n": 1}, None)  # create
    assert not storage.put_json_if("feedback", "_state/x.json", {"n": 9}, None)  # exists already
    value, etag = storage.get_json_versioned("feedback", "_state/x.json")
    assert value == {"n": 1}
    assert storage.put_json_if("feedback", "_state/x.json", {"n": 2}, etag)
    assert not storage.put_json_if("feedback", "_state/x.json", {"n": 3}, etag)  # stale: someone wrote first
    assert storage.get_json("feedback", "_state/x.json") == {"n": 2}


def test_get_object_refuses_an_object_over_max_bytes_without_naming_its_key(storage: Storage, bucket: str) -> None:
    storage.put_bytes(bucket, "patient-1234/big.dcm", b"x" * 1001)
    assert storage.get_object(bucket, "patient-1234/big.dcm", max_bytes=1001).data == b"x" * 1001
    with pytest.raises(PayloadTooLarge, match="over 1000 bytes") as refused:
        storage.get_object(bucket, "patient-1234/big.dcm", max_bytes=1000)
    assert "patient-1234" not in str(refused.value)


class _Body:
    """A streaming body without a (true) Content-Length: sends `size` bytes, a few at a time."""

    def __init__(self, size: int) -> None:
        self.left, self.read_total = size, 0

    def read(self, amt: int | None = None) -> bytes:
        n = min(self.left, 7 if amt is None else min(amt, 7))
        self.left -= n
        self.read_total += n
        return b"y" * n


@pytest.mark.parametrize("content_length", [None, 10])  # absent, or lying
def test_the_bound_holds_on_what_the_body_sends_and_reads_at_most_one_byte_past_it(content_length) -> None:
    from shared.storage import _read_at_most

    assert _read_at_most(_Body(50), content_length, 50) == b"y" * 50
    body = _Body(10_000)
    with pytest.raises(PayloadTooLarge):
        _read_at_most(body, content_length, 50)
    assert body.read_total == 51
