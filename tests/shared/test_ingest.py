"""Event-triggered inference against a real local S3 server and a real tiny ONNX model."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import boto3
import numpy as np
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
SECRET = "ingest-test-secret"


@pytest.fixture(scope="module")
def model_dir_settings(tmp_path_factory: pytest.TempPathFactory):
    """settings(**changes) → Settings of the tiny model (with this test's DEID_SECRET) and the changes."""
    model_dir = build_tiny_model_dir(tmp_path_factory.mktemp("ingest-model") / "model")
    cache = tmp_path_factory.mktemp("cache")
    return lambda **changes: Settings(**{"model_uri": str(model_dir), "model_cache_dir": cache, "deid_secret": SECRET,
                                         **changes})


@pytest.fixture(scope="module")
def model(model_dir_settings) -> TriageModel:
    loaded = TriageModel(model_dir_settings())
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
    index = storage.get_json("triage-state", f"requests/{obj.request_id}.json")
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
    assert storage.list_keys("inference-results") == sorted(["twice.png.json", "twice.png.heatmap.png"])


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


def test_a_sink_failure_leaves_no_committed_result_so_the_redelivered_event_completes(storage, model):
    obj = upload(storage, "retry.png", png_bytes(28, seed=4))
    sink = RecordingSink(status=503)
    with pytest.raises(EventDeliveryError):
        ingest_object(storage, model, obj, publisher=sink.publisher())
    # Contract change (issue 12): the flag (label, heatmap pending) is written before the picture and the event;
    # the committed result (heatmap ready) is not, so the redelivered event is not taken for a duplicate.
    flag = storage.get_json("inference-results", "retry.png.json")
    assert flag["heatmap"]["status"] == "pending" and flag["label"] in ("normal", "pneumonia")

    sink.status = 202
    assert ingest_object(storage, model, obj, publisher=sink.publisher()).status == "created"
    assert len(sink.events) == 1
    assert storage.get_json("inference-results", "retry.png.json")["heatmap"]["status"] == "ready"


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


# --- bad inputs give a stored error result, not a retry loop; burned-in images; no secret (issue 8) ---------------
def _dicom_with(**attrs: object) -> bytes:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(28)))
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("attrs", "named"),
    [({"WindowCenter": "100", "WindowWidth": "0"}, "(0028,1051)"),
     ({"WindowCenter": "100", "WindowWidth": "9", "VOILUTFunction": "WEIRD"}, "(0028,1056)")],
)
def test_a_dicom_the_decoder_refuses_gets_a_stored_error_result(storage, model, attrs: dict, named: str):
    obj = upload(storage, f"bad/{named}.dcm", _dicom_with(**attrs))

    outcome = ingest_object(storage, model, obj)  # returns (200): the broker does not retry

    assert outcome.status == "error"
    result = storage.get_json("inference-results", f"bad/{named}.dcm.json")
    assert result["status"] == "error" and result["error"]["code"] == "bad_image"
    assert named in result["error"]["message"]
    assert not storage.exists("inference-results", f"bad/{named}.dcm.heatmap.png")


def test_a_burned_in_dicom_is_refused_with_a_stored_error_and_no_heatmap(storage, model):
    obj = upload(storage, "burned/refused.dcm", _dicom_with(BurnedInAnnotation="YES"))

    assert ingest_object(storage, model, obj).status == "error"

    result = storage.get_json("inference-results", "burned/refused.dcm.json")
    assert result["error"]["code"] == "burned_in_annotation"
    assert not storage.exists("inference-results", "burned/refused.dcm.heatmap.png")


def test_a_marked_burned_in_dicom_has_a_flag_and_a_heatmap_without_its_pixels(storage, model_dir_settings):
    from PIL import Image

    from shared.explain import overlay_png

    marked = TriageModel(model_dir_settings(burned_in_annotation="mark"))
    data = _dicom_with(BurnedInAnnotation="YES")
    obj = upload(storage, "burned/marked.dcm", data)

    assert ingest_object(storage, marked, obj).status == "created"

    result = storage.get_json("inference-results", "burned/marked.dcm.json")
    assert result["burned_in_annotation"] is True
    stored = Image.open(io.BytesIO(storage.get_bytes("inference-results", "burned/marked.dcm.heatmap.png")))
    heatmap = marked(data, "application/dicom", explain="occlusion").heatmap
    map_alone = Image.open(io.BytesIO(overlay_png(np.zeros_like(heatmap), heatmap)))  # on black: no image pixel
    np.testing.assert_array_equal(np.asarray(stored), np.asarray(map_alone))


def test_without_a_secret_a_dicom_is_not_ingested_and_nothing_is_written(storage, model_dir_settings):
    from shared.dicom import DeidentificationNotConfigured

    unconfigured = TriageModel(model_dir_settings(deid_secret=None))
    obj = upload(storage, "nosecret/img.dcm", dicom_bytes(28))

    with pytest.raises(DeidentificationNotConfigured):  # 503: the broker retries once the operator sets it
        ingest_object(storage, unconfigured, obj)

    assert storage.list_keys("inference-results", "nosecret/") == []


def test_the_flag_is_readable_before_the_heatmap_is_written(storage, model, monkeypatch):
    """A slow heatmap step (held on an event): the result with label and urgency exists meanwhile."""
    import threading

    from shared.review.worklist import case_from_result

    started, release = threading.Event(), threading.Event()
    real_explain = model.explain

    def slow_explain(*args, **kwargs):
        started.set()
        release.wait(10)
        return real_explain(*args, **kwargs)

    monkeypatch.setattr(model, "explain", slow_explain)
    obj = upload(storage, "ward5/flag.png", png_bytes(28, seed=6))
    sink = RecordingSink()
    outcomes = []
    worker = threading.Thread(target=lambda: outcomes.append(ingest_object(storage, model, obj,
                                                                           publisher=sink.publisher())))
    worker.start()
    try:
        assert started.wait(10)
        flag = storage.get_json("inference-results", "ward5/flag.png.json")
        assert flag["status"] == "ok" and flag["label"] in ("normal", "pneumonia")
        assert isinstance(flag["urgent"], bool) and 0.0 <= flag["probability"] <= 1.0
        assert flag["heatmap"] == {"status": "pending", "method": "occlusion"}
        assert flag["upload_to_result_s"] is not None
        assert not storage.exists("inference-results", "ward5/flag.png.heatmap.png")
        assert storage.get_json("triage-state", f"requests/{obj.request_id}.json")["label"] == flag["label"]
        assert sink.events == []  # the event carries the finished result
        case = case_from_result(flag)
        assert case.label == flag["label"] and case.has_heatmap is False  # the worklist shows it, no picture yet
    finally:
        release.set()
        worker.join(30)

    assert outcomes[0].status == "created"
    final = storage.get_json("inference-results", "ward5/flag.png.json")
    assert final["heatmap"]["status"] == "ready" and final["heatmap"]["key"] == "ward5/flag.png.heatmap.png"
    assert (final["label"], final["completed_at"]) == (flag["label"], flag["completed_at"])
    assert storage.get_bytes("inference-results", "ward5/flag.png.heatmap.png").startswith(b"\x89PNG")
    assert case_from_result(final).has_heatmap is True
    assert len(sink.events) == 1 and sink.events[0].get_data()["heatmap"]["status"] == "ready"


def test_a_result_left_with_its_heatmap_pending_is_redone_not_taken_for_a_duplicate(storage, model):
    obj = upload(storage, "crash.png", png_bytes(28, seed=7))
    ingest_object(storage, model, obj)
    result = storage.get_json("inference-results", "crash.png.json")
    storage.put_json("inference-results", "crash.png.json", {**result, "heatmap": {"status": "pending"}})
    storage.delete("inference-results", "crash.png.heatmap.png")  # as if the process died after the flag

    assert ingest_object(storage, model, obj).status == "created"
    assert storage.get_json("inference-results", "crash.png.json")["heatmap"]["status"] == "ready"
    assert storage.exists("inference-results", "crash.png.heatmap.png")
    assert ingest_object(storage, model, obj).status == "duplicate"
