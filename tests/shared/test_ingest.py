"""Event-triggered inference against a real local S3 server and a real tiny ONNX model."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
import pytest
from botocore.config import Config
from prometheus_client import REGISTRY

from shared.config import Settings
from shared.events import PREDICTION_CREATED, EventDeliveryError
from shared.imaging import decode_image
from shared.ingest import ObjectVersion, ingest_object
from shared.model import TriageModel
from shared.storage import Storage, StorageUnavailable
from tests.functions.event_sink import RecordingSink
from tests.functions.tiny_model import build_tiny_model_dir, dicom_bytes, png_bytes

UPLOADED = "2026-11-26T10:00:00Z"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TriageModel:
    model_dir = build_tiny_model_dir(tmp_path_factory.mktemp("ingest-model") / "model")
    loaded = TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path_factory.mktemp("cache")))
    loaded.load()
    return loaded





def upload(storage: Storage, key: str, data: bytes) -> ObjectVersion:
    etag = storage.put_bytes("inference-inputs", key, data)
    return ObjectVersion("inference-inputs", key, etag, len(data), UPLOADED)


def upload_to_result_sum() -> float:
    return REGISTRY.get_sample_value("triage_upload_to_result_seconds_sum") or 0.0


def at(text: str):
    return lambda: datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def test_an_upload_gives_a_result_naming_the_model_a_heatmap_and_the_upload_to_result_time(storage, model):
    obj = upload(storage, "ward3/chest.png", png_bytes(28))
    before = upload_to_result_sum()

    outcome = ingest_object(storage, model, obj, now=at("2026-11-26T10:00:01.5Z"))

    assert outcome.status == "created"
    result = storage.get_json("inference-results", "ward3/chest.png.json")
    assert result["status"] == "ok" and result["label"] in ("normal", "pneumonia")
    assert result["model"] == {"name": model.name, "version": model.version}
    assert result["etag"] == obj.etag and result["request_id"] == obj.request_id
    assert result["upload_to_result_s"] == pytest.approx(1.5)
    assert upload_to_result_sum() - before == pytest.approx(1.5)
    heatmap = storage.get_bytes("inference-results", "ward3/chest.png.heatmap.png")
    assert heatmap.startswith(b"\x89PNG")
    index = storage.get_json("inference-results", f"requests/{obj.request_id}.json")
    assert index["label"] == result["label"] and index["source"] == "ingest"
    # Without a publisher the prediction event is handed back for a Knative reply.
    assert outcome.event["type"] == PREDICTION_CREATED and outcome.event.get_data()["key"] == "ward3/chest.png"
    # The monitor's input-drift statistic: the mean brightness of what the model saw, in [0, 1].
    expected = decode_image(png_bytes(28)).mean()
    assert result["input"]["mean_intensity"] == pytest.approx(expected, abs=1e-3)
    assert outcome.event.get_data()["input"] == result["input"]


def test_the_same_event_twice_writes_one_result_and_emits_one_event(storage, model):
    obj = upload(storage, "twice.png", png_bytes(28, seed=1))
    sink = RecordingSink()

    first = ingest_object(storage, model, obj, publisher=sink.publisher())
    written = storage.head("inference-results", "twice.png.json")
    second = ingest_object(storage, model, obj, publisher=sink.publisher())

    assert (first.status, second.status) == ("created", "duplicate")
    assert storage.head("inference-results", "twice.png.json") == written  # not rewritten
    assert len(sink.events) == 1 and sink.events[0].get_data()["request_id"] == obj.request_id
    assert storage.list_keys("inference-results") == sorted(
        ["twice.png.json", "twice.png.heatmap.png", f"requests/{obj.request_id}.json"]
    )


def test_a_new_version_of_the_same_key_is_triaged_again_and_an_old_event_is_stale(storage, model):
    old = upload(storage, "scan.png", png_bytes(28, seed=2))
    ingest_object(storage, model, old)
    new = upload(storage, "scan.png", png_bytes(28, seed=3))

    assert ingest_object(storage, model, new).status == "created"
    assert storage.get_json("inference-results", "scan.png.json")["etag"] == new.etag
    late = ObjectVersion("inference-inputs", "scan.png", "0" * 32, 10, UPLOADED)  # a version already replaced
    assert ingest_object(storage, model, late).status == "stale"
    assert storage.get_json("inference-results", "scan.png.json")["etag"] == new.etag


def test_dicom_identifiers_never_reach_any_stored_object_or_event(storage, model):
    obj = upload(storage, "study/img.dcm", dicom_bytes(28, patient_name="DOE^JANE", patient_id="PID-12345"))
    sink = RecordingSink()

    outcome = ingest_object(storage, model, obj, publisher=sink.publisher())

    assert outcome.status == "created"
    for key in storage.list_keys("inference-results"):
        stored = storage.get_bytes("inference-results", key)
        for identifier in (b"DOE", b"JANE", b"PID-12345", b"19700101"):
            assert identifier not in stored, f"{identifier!r} found in {key}"
    event_text = str(sink.events[0].get_data())
    assert "DOE" not in event_text and "PID-12345" not in event_text


@pytest.mark.parametrize("data", [b"hello, not an image", png_bytes(28)[:40], b""])
def test_a_bad_image_gets_a_final_error_result_and_is_not_retried(storage, model, data):
    obj = upload(storage, "broken.png", data)
    sink = RecordingSink()

    outcome = ingest_object(storage, model, obj, publisher=sink.publisher())

    assert outcome.status == "error"
    result = storage.get_json("inference-results", "broken.png.json")
    assert result["status"] == "error" and result["error"]["code"] == "bad_image"
    assert result["etag"] == obj.etag
    assert ingest_object(storage, model, obj, publisher=sink.publisher()).status == "duplicate"
    assert sink.events == []


def test_an_object_deleted_before_ingest_is_recorded_not_lost(storage, model):
    obj = upload(storage, "gone.png", png_bytes(28))
    storage.delete("inference-inputs", "gone.png")
    assert ingest_object(storage, model, obj).status == "error"
    assert storage.get_json("inference-results", "gone.png.json")["error"]["code"] == "not_found"


def test_a_sink_failure_leaves_no_result_so_the_redelivered_event_completes(storage, model):
    obj = upload(storage, "retry.png", png_bytes(28, seed=4))
    sink = RecordingSink(status=503)
    with pytest.raises(EventDeliveryError):
        ingest_object(storage, model, obj, publisher=sink.publisher())
    assert not storage.exists("inference-results", "retry.png.json")

    sink.status = 202
    assert ingest_object(storage, model, obj, publisher=sink.publisher()).status == "created"
    assert len(sink.events) == 1


def test_s3_unreachable_raises_a_5xx_so_the_broker_retries(model):
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        region_name="us-east-1",
        config=Config(connect_timeout=0.5, retries={"max_attempts": 1}),
    )
    obj = ObjectVersion("inference-inputs", "a.png", "e", 1, UPLOADED)
    with pytest.raises(StorageUnavailable) as excinfo:
        ingest_object(Storage(client), model, obj)
    assert excinfo.value.status == 503


def test_objects_of_other_buckets_are_ignored(storage, model):
    assert ingest_object(storage, model, ObjectVersion("raw-data", "x.npz", "e")).status == "ignored"
    assert storage.list_keys("inference-results") == []
