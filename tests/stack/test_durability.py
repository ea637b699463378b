"""The local S3 keeps every acknowledged write across SIGKILL and restarts (a real `triage.stack.s3server` process)."""

from __future__ import annotations

import json

import httpx
import pytest
from botocore.exceptions import ClientError

from shared.events import deterministic_id
from tests.stack.s3_process import S3Process
from triage.stack.object_store import ObjectStore, StoredObject
from triage.stack.s3server import outbox_dir

INPUTS, RESULTS, FEEDBACK = "inference-inputs", "inference-results", "feedback"
HOSTILE_KEYS = [
    "keys-" + "病例" * 100 + "/x.png",  # 200 unicode characters: once a file name too long to snapshot
    "ward 3/case+1 (copy) 100%.png",
    "a%2Fb/%E7%97%85.png",
    "deep/" * 30 + "end",
    "trailing/",
]


@pytest.fixture
def s3(tmp_path):
    with S3Process(tmp_path / "s3") as server:
        yield server


def snapshot(client, bucket: str) -> dict[str, tuple]:
    """Every object of `bucket` as a client sees it: etag, last-modified, bytes, content type, metadata."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            got = client.get_object(Bucket=bucket, Key=item["Key"])
            found[item["Key"]] = (got["ETag"], got["LastModified"], got["Body"].read(), got["ContentType"],
                                  got["Metadata"])
    return found


def test_every_acknowledged_write_survives_sigkill_with_the_same_etags_and_times(s3):
    client = s3.client()
    for i, key in enumerate(HOSTILE_KEYS):
        client.put_object(Bucket=RESULTS, Key=key, Body=f"body {i}".encode(), ContentType="application/x-test",
                          Metadata={"source": "unit", "n": str(i)})
    client.put_object(Bucket=FEEDBACK, Key="gone.json", Body=b"{}")
    client.delete_object(Bucket=FEEDBACK, Key="gone.json")
    client.put_object(Bucket=FEEDBACK, Key="batch/1.json", Body=b"1")
    client.put_object(Bucket=FEEDBACK, Key="batch/2.json", Body=b"2")
    client.delete_objects(Bucket=FEEDBACK, Delete={"Objects": [{"Key": "batch/1.json"}]})
    client.copy_object(Bucket=FEEDBACK, Key="copied.txt", CopySource={"Bucket": RESULTS, "Key": HOSTILE_KEYS[1]})
    client.create_bucket(Bucket="user-made")
    client.put_object(Bucket="user-made", Key="k", Body=b"v")
    client.create_bucket(Bucket="made-and-dropped")
    client.delete_bucket(Bucket="made-and-dropped")
    before = {bucket: snapshot(client, bucket) for bucket in (RESULTS, FEEDBACK, "user-made")}

    s3.kill()
    s3.start()

    after = {bucket: snapshot(client, bucket) for bucket in (RESULTS, FEEDBACK, "user-made")}
    assert after == before
    assert sorted(after[RESULTS]) == sorted(HOSTILE_KEYS)
    assert sorted(after[FEEDBACK]) == ["batch/2.json", "copied.txt"]
    assert after[RESULTS][HOSTILE_KEYS[0]][3:] == ("application/x-test", {"source": "unit", "n": "0"})
    names = {b["Name"] for b in client.list_buckets()["Buckets"]}
    assert "user-made" in names and "made-and-dropped" not in names


def test_a_multipart_upload_keeps_its_etag_across_a_restart(s3):
    client = s3.client()
    key = "mlflow/artifacts/model.onnx"
    upload = client.create_multipart_upload(Bucket="mlflow", Key=key, ContentType="application/octet-stream")
    parts = []
    for number, chunk in enumerate([b"a" * (5 << 20), b"tail"], start=1):
        part = client.upload_part(Bucket="mlflow", Key=key, UploadId=upload["UploadId"], PartNumber=number,
                                  Body=chunk)
        parts.append({"ETag": part["ETag"], "PartNumber": number})
    done = client.complete_multipart_upload(Bucket="mlflow", Key=key, UploadId=upload["UploadId"],
                                            MultipartUpload={"Parts": parts})
    assert done["ETag"].strip('"').endswith("-2")
    s3.kill()
    s3.start()
    head = client.head_object(Bucket="mlflow", Key=key)
    assert head["ETag"] == done["ETag"] and head["ContentLength"] == (5 << 20) + 4


def test_conditional_writes_hold_before_and_after_a_restart(s3):
    client = s3.client()
    first = client.put_object(Bucket=RESULTS, Key="_state/x.json", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=RESULTS, Key="_state/x.json", Body=b"2", IfNoneMatch="*")
    second = client.put_object(Bucket=RESULTS, Key="_state/x.json", Body=b"2", IfMatch=first["ETag"])
    s3.kill()
    s3.start()
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=RESULTS, Key="_state/x.json", Body=b"3", IfMatch=first["ETag"])
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=RESULTS, Key="_state/x.json", Body=b"3", IfNoneMatch="*")
    client.put_object(Bucket=RESULTS, Key="_state/x.json", Body=b"3", IfMatch=second["ETag"])
    assert client.get_object(Bucket=RESULTS, Key="_state/x.json")["Body"].read() == b"3"


def test_an_upload_to_a_notifying_bucket_has_its_event_on_disk_when_acknowledged(s3, tmp_path):
    client = s3.client()
    key = HOSTILE_KEYS[1]
    etag = client.put_object(Bucket=INPUTS, Key=key, Body=b"img", ContentType="image/png")["ETag"].strip('"')
    client.put_object(Bucket=INPUTS, Key=key, Body=b"img")  # the same version again: the same event
    client.put_object(Bucket=RESULTS, Key="not-notified.json", Body=b"{}")
    files = sorted(outbox_dir(tmp_path / "s3").glob("*.json"))  # nothing delivers them: no relay runs here
    assert [f.stem for f in files] == [deterministic_id(INPUTS, key, etag)]
    [record] = json.loads(files[0].read_text())["Records"]
    assert record["eventName"] == "s3:ObjectCreated:Put"
    assert record["s3"] == {"bucket": {"name": INPUTS},
                            "object": {"key": "ward+3/case%2B1+%28copy%29+100%25.png", "eTag": etag, "size": 3}}


def test_health_answers_and_the_moto_reset_api_is_refused(s3):
    assert httpx.get(s3.url + "/minio/health/live").json() == {"ready": True}
    s3.client().put_object(Bucket=RESULTS, Key="kept.json", Body=b"{}")
    refused = httpx.post(s3.url + "/moto-api/reset")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert s3.client().get_object(Bucket=RESULTS, Key="kept.json")["Body"].read() == b"{}"


def test_a_write_cut_before_its_rename_leaves_the_old_object(tmp_path):
    store = ObjectStore(tmp_path)
    old = StoredObject(bucket="b", key="k", data=b"old", etag="e1", last_modified="2026-01-01T00:00:00+00:00")
    store.save(old)
    path = store.object_path("b", "k")
    path.with_name(f".{path.name}.1.2.tmp").write_bytes(b"half a new ver")  # a crash mid-write
    damaged = store.object_path("b", "other")
    damaged.parent.mkdir(exist_ok=True)
    damaged.write_bytes(b"\x00not json\n")  # a damaged disk: set aside, the rest still loads
    assert list(ObjectStore(tmp_path).objects()) == [old]
    assert not list(path.parent.glob(".*")) and not damaged.exists()
    assert [p.name for p in (tmp_path / "unreadable").iterdir()] == [damaged.name]
