"""Event-triggered inference against a real local S3 server and a real tiny ONNX model: the flag step
(object.created → the result with the label, heatmap pending, a heatmap request) and the heatmap step
(heatmap.requested → the picture, the prediction event, the committed result), redelivery, stale, crashes."""

from __future__ import annotations

import io
import os
import sys
import threading
from datetime import UTC, datetime

import boto3
import numpy as np
import pytest
from botocore.config import Config
from cloudevents.http import CloudEvent
from prometheus_client import REGISTRY

from shared.config import Settings
from shared.dicom import deidentify_bytes
from shared.events import (
    HEATMAP_REQUESTED,
    PREDICTION_CREATED,
    BadEvent,
    EventDeliveryError,
    deterministic_id,
    object_created_event,
)
from shared.imaging import decode_image
from shared.ingest import (
    HEATMAP_NICE,
    IngestOutcome,
    ObjectVersion,
    heatmap_request_from_event,
    ingest_event,
    ingest_heatmap,
    ingest_object,
)
from shared.model import TriageModel
from shared.storage import Storage, StorageUnavailable
from tests.functions.event_sink import RecordingSink
from tests.functions.tiny_model import build_tiny_model_dir, dicom_bytes, png_bytes

UPLOADED = "2026-11-26T10:00:00Z"
SECRET = "ingest-test-secret"
RESULTS = "inference-results"


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


def both_steps(storage: Storage, model: TriageModel, obj: ObjectVersion, **kw) -> tuple[IngestOutcome, IngestOutcome]:
    """The flag step, then the heatmap step its reply asks for (as the broker delivers them without K_SINK)."""
    flag = ingest_object(storage, model, obj, **kw)
    assert flag.status == "created" and flag.event is not None and flag.event["type"] == HEATMAP_REQUESTED
    return flag, ingest_event(storage, model, flag.event, **kw)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


def at(text: str):
    return lambda: datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def test_an_upload_gets_its_flag_then_in_its_own_step_its_heatmap_and_its_prediction_event(storage, model):
    obj = upload(storage, "ward3/chest.png", png_bytes(28))
    before = sample("triage_upload_to_result_seconds_sum")
    predictions = sum(sample("triage_predictions_total", label=label) for label in ("normal", "pneumonia"))

    flag = ingest_object(storage, model, obj, now=at("2026-11-26T10:00:01.5Z"))

    assert flag.status == "created"
    result = storage.get_json(RESULTS, "ward3/chest.png.json")
    assert result["status"] == "ok" and result["label"] in ("normal", "pneumonia")
    assert result["heatmap"] == {"status": "pending", "method": "occlusion"}
    assert result["model"] == {"name": model.name, "version": model.version}
    assert result["etag"] == obj.etag and result["request_id"] == obj.request_id
    assert result["upload_to_result_s"] == pytest.approx(1.5)
    assert sample("triage_upload_to_result_seconds_sum") - before == pytest.approx(1.5)
    assert not storage.exists(RESULTS, "ward3/chest.png.heatmap.png")  # the picture is the next step's
    index = storage.get_json("triage-state", f"requests/{obj.request_id}.json")
    assert index["label"] == result["label"] and index["source"] == "ingest"
    # Without a publisher the heatmap request is handed back for a Knative reply: the version, not the result.
    request = flag.event
    assert request["type"] == HEATMAP_REQUESTED and request["source"] == "triage/ingest"
    assert request["id"] == deterministic_id("heatmap", "inference-inputs", "ward3/chest.png", obj.etag)
    assert request.get_data() == {"bucket": "inference-inputs", "key": "ward3/chest.png", "etag": obj.etag,
                                  "request_id": obj.request_id}

    picture = ingest_heatmap(storage, model, heatmap_request_from_event(request), now=at("2026-11-26T10:00:03Z"))

    assert picture.status == "completed"
    final = storage.get_json(RESULTS, "ward3/chest.png.json")
    assert final["heatmap"] == {"status": "ready", "bucket": RESULTS, "key": "ward3/chest.png.heatmap.png",
                                "method": "occlusion", "model": result["model"],  # the model that drew it
                                "completed_at": "2026-11-26T10:00:03Z"}
    assert {k: v for k, v in final.items() if k not in ("heatmap", "timings_ms")} == {
        k: v for k, v in result.items() if k not in ("heatmap", "timings_ms")}  # the flag, as it was read
    assert final["timings_ms"]["explain"] > 0 and "heatmap_write" in final["timings_ms"]
    # One prediction counted for the two steps (the heatmap step does not predict again).
    after = sum(sample("triage_predictions_total", label=label) for label in ("normal", "pneumonia"))
    assert after - predictions == 1.0
    png = storage.get_bytes(RESULTS, "ward3/chest.png.heatmap.png")
    assert png == model(png_bytes(28), explain="occlusion").overlay_png  # the same pixels as the flag
    assert picture.event["type"] == PREDICTION_CREATED and picture.event.get_data() == final
    # The monitor's input-drift statistic: the mean brightness of what the model saw, in [0, 1].
    assert final["input"]["mean_intensity"] == pytest.approx(decode_image(png_bytes(28)).mean(), abs=1e-3)


def test_redelivered_events_of_either_step_write_nothing_twice_and_emit_the_prediction_once(storage, model):
    obj = upload(storage, "twice.png", png_bytes(28, seed=1))
    sink = RecordingSink()

    first = ingest_object(storage, model, obj, publisher=sink.publisher())
    flagged = storage.head(RESULTS, "twice.png.json")
    again = ingest_object(storage, model, obj, publisher=sink.publisher())  # heatmap still pending

    assert (first.status, again.status) == ("created", "pending") and first.event is None
    assert storage.head(RESULTS, "twice.png.json") == flagged  # not predicted or rewritten again
    requests = [e for e in sink.events if e["type"] == HEATMAP_REQUESTED]
    assert len(requests) == 2 and requests[0]["id"] == requests[1]["id"]  # sent again, as the same event

    done = [ingest_event(storage, model, event, publisher=sink.publisher()).status for event in requests]
    assert done == ["completed", "duplicate"]
    committed = storage.head(RESULTS, "twice.png.json")
    assert ingest_object(storage, model, obj, publisher=sink.publisher()).status == "duplicate"
    assert storage.head(RESULTS, "twice.png.json") == committed
    [prediction] = [e for e in sink.events if e["type"] == PREDICTION_CREATED]
    assert prediction.get_data()["request_id"] == obj.request_id and len(sink.events) == 3
    assert storage.list_keys(RESULTS) == sorted(["twice.png.json", "twice.png.heatmap.png"])


def test_a_new_version_makes_the_old_versions_events_of_either_step_stale(storage, model):
    old = upload(storage, "scan.png", png_bytes(28, seed=2))
    old_request = ingest_object(storage, model, old).event
    new = upload(storage, "scan.png", png_bytes(28, seed=3))

    # The old version's heatmap request, before the new version's flag: its bytes are gone (If-Match).
    assert ingest_event(storage, model, old_request).status == "stale"
    assert storage.get_json(RESULTS, "scan.png.json")["heatmap"]["status"] == "pending"
    assert not storage.exists(RESULTS, "scan.png.heatmap.png")
    flag, picture = both_steps(storage, model, new)
    assert (flag.status, picture.status) == ("created", "completed")
    # ... and after it: the result is the new version's.
    assert ingest_event(storage, model, old_request).status == "stale"
    late = ObjectVersion("inference-inputs", "scan.png", "0" * 32, 10, UPLOADED)  # a version already replaced
    assert ingest_object(storage, model, late).status == "stale"
    final = storage.get_json(RESULTS, "scan.png.json")
    assert final["etag"] == new.etag and final["heatmap"]["status"] == "ready"


def test_an_input_deleted_between_the_steps_gets_a_final_result_without_a_picture(storage, model):
    obj = upload(storage, "deleted.png", png_bytes(28, seed=8))
    sink = RecordingSink()
    ingest_object(storage, model, obj, publisher=sink.publisher())
    storage.delete("inference-inputs", "deleted.png")

    assert ingest_event(storage, model, sink.events[0], publisher=sink.publisher()).status == "completed"

    final = storage.get_json(RESULTS, "deleted.png.json")
    assert final["heatmap"] == {"status": "none", "reason": "input_deleted"} and final["label"] is not None
    assert not storage.exists(RESULTS, "deleted.png.heatmap.png")
    assert [e["type"] for e in sink.events] == [HEATMAP_REQUESTED, PREDICTION_CREATED]  # the prediction counts


def test_dicom_identifiers_never_reach_any_stored_object_or_event_and_the_map_is_of_the_same_pixels(storage, model):
    raw = dicom_bytes(28, patient_name="DOE^JANE", patient_id="PID-12345")
    obj = upload(storage, "study/img.dcm", raw)
    sink = RecordingSink()

    assert ingest_object(storage, model, obj, publisher=sink.publisher()).status == "created"
    assert ingest_event(storage, model, sink.events[0], publisher=sink.publisher()).status == "completed"

    for key in storage.list_keys(RESULTS):
        stored = storage.get_bytes(RESULTS, key)
        for identifier in (b"DOE", b"JANE", b"PID-12345", b"19700101"):
            assert identifier not in stored, f"{identifier!r} found in {key}"
    assert [e["type"] for e in sink.events] == [HEATMAP_REQUESTED, PREDICTION_CREATED]
    for event in sink.events:
        assert "DOE" not in str(event.get_data()) and "PID-12345" not in str(event.get_data())
    deidentified = deidentify_bytes(raw, secret=SECRET)
    expected = model(deidentified, "application/dicom", explain="occlusion")
    assert storage.get_bytes(RESULTS, "study/img.dcm.heatmap.png") == expected.overlay_png
    assert sink.events[1].get_data()["probability"] == pytest.approx(expected.prediction.probability, abs=1e-6)


@pytest.mark.parametrize("data", [b"hello, not an image", png_bytes(28)[:40], b""])
def test_a_bad_image_gets_a_final_error_result_and_is_not_retried(storage, model, data):
    obj = upload(storage, "broken.png", data)
    sink = RecordingSink()

    outcome = ingest_object(storage, model, obj, publisher=sink.publisher())

    assert outcome.status == "error"
    result = storage.get_json(RESULTS, "broken.png.json")
    assert result["status"] == "error" and result["error"]["code"] == "bad_image"
    assert result["etag"] == obj.etag
    assert ingest_object(storage, model, obj, publisher=sink.publisher()).status == "duplicate"
    assert ingest_heatmap(storage, model, obj, publisher=sink.publisher()).status == "duplicate"
    assert sink.events == []


def test_an_object_over_max_input_bytes_gets_a_final_413_result_without_being_read(storage, model_dir_settings):
    """Anything can be dropped into the bucket: past MAX_INPUT_BYTES it is never held in memory, nor retried."""
    small = TriageModel(model_dir_settings(max_input_bytes=4096))
    data = png_bytes(256)
    assert len(data) > 4096
    obj = upload(storage, "patient-77/huge.png", data)
    sink = RecordingSink()

    assert ingest_object(storage, small, obj, publisher=sink.publisher()).status == "error"

    result = storage.get_json(RESULTS, "patient-77/huge.png.json")
    assert result["error"]["code"] == "payload_too_large" and "patient-77" not in result["error"]["message"]
    assert ingest_object(storage, small, obj, publisher=sink.publisher()).status == "duplicate"
    assert sink.events == []
    fits = upload(storage, "fits.png", png_bytes(28))
    assert ingest_object(storage, small, fits, publisher=sink.publisher()).status == "created"


def test_an_object_deleted_before_ingest_is_recorded_not_lost(storage, model):
    obj = upload(storage, "gone.png", png_bytes(28))
    storage.delete("inference-inputs", "gone.png")
    assert ingest_object(storage, model, obj).status == "error"
    assert storage.get_json(RESULTS, "gone.png.json")["error"]["code"] == "not_found"


def test_a_sink_failure_in_either_step_loses_nothing_and_the_redelivered_event_completes(storage, model):
    """A failed publish is a crash between the steps: the delivery is not acknowledged (5xx) and comes back."""
    obj = upload(storage, "retry.png", png_bytes(28, seed=4))
    sink = RecordingSink(status=503)
    with pytest.raises(EventDeliveryError):  # the heatmap request never left: object.created is redelivered
        ingest_object(storage, model, obj, publisher=sink.publisher())
    flag = storage.get_json(RESULTS, "retry.png.json")
    assert flag["heatmap"]["status"] == "pending" and flag["label"] in ("normal", "pneumonia")  # the flag is out

    sink.status = 202
    assert ingest_object(storage, model, obj, publisher=sink.publisher()).status == "pending"
    [request] = sink.events
    sink.status = 503
    with pytest.raises(EventDeliveryError):  # the prediction event never left: the request is redelivered
        ingest_event(storage, model, request, publisher=sink.publisher())
    assert storage.get_json(RESULTS, "retry.png.json")["heatmap"]["status"] == "pending"  # not committed

    sink.status = 202
    assert ingest_event(storage, model, request, publisher=sink.publisher()).status == "completed"
    assert [e["type"] for e in sink.events] == [HEATMAP_REQUESTED, PREDICTION_CREATED]
    assert storage.get_json(RESULTS, "retry.png.json")["heatmap"]["status"] == "ready"


def test_a_result_left_pending_by_a_process_that_died_gets_its_heatmap_requested_again(storage, model):
    obj = upload(storage, "crash.png", png_bytes(28, seed=7))
    both_steps(storage, model, obj)
    result = storage.get_json(RESULTS, "crash.png.json")
    storage.put_json(RESULTS, "crash.png.json", {**result, "heatmap": {"status": "pending"}})
    storage.delete(RESULTS, "crash.png.heatmap.png")  # as if the process died after the flag

    again = ingest_object(storage, model, obj)
    assert again.status == "pending" and again.event["type"] == HEATMAP_REQUESTED  # replied, nothing predicted
    assert ingest_event(storage, model, again.event).status == "completed"
    assert storage.get_json(RESULTS, "crash.png.json")["heatmap"]["status"] == "ready"
    assert storage.exists(RESULTS, "crash.png.heatmap.png")
    assert ingest_object(storage, model, obj).status == "duplicate"


def test_s3_unreachable_raises_a_5xx_in_either_step_so_the_broker_retries(model):
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        region_name="us-east-1",
        config=Config(connect_timeout=0.5, retries={"max_attempts": 1}),
    )
    obj = ObjectVersion("inference-inputs", "a.png", "e", 1, UPLOADED)
    for step in (ingest_object, ingest_heatmap):
        with pytest.raises(StorageUnavailable) as excinfo:
            step(Storage(client), model, obj)
        assert excinfo.value.status == 503


def test_objects_of_other_buckets_are_ignored_and_other_event_types_refused(storage, model):
    assert ingest_object(storage, model, ObjectVersion("raw-data", "x.npz", "e")).status == "ignored"
    assert ingest_heatmap(storage, model, ObjectVersion("raw-data", "x.npz", "e")).status == "ignored"
    assert storage.list_keys(RESULTS) == []
    other = CloudEvent({"type": PREDICTION_CREATED, "source": "triage/ingest"}, {"bucket": "inference-inputs"})
    with pytest.raises(BadEvent, match="triage.heatmap.requested"):
        ingest_event(storage, model, other)
    missing = CloudEvent({"type": HEATMAP_REQUESTED, "source": "triage/ingest"}, {"bucket": "inference-inputs"})
    with pytest.raises(BadEvent, match="'key'"):
        ingest_event(storage, model, missing)


def test_the_upload_event_reaches_the_flag_step_through_ingest_event(storage, model):
    obj = upload(storage, "dispatch.png", png_bytes(28, seed=9))
    outcome = ingest_event(storage, model, object_created_event("inference-inputs", obj.key, obj.etag, obj.size))
    assert outcome.status == "created" and outcome.event["type"] == HEATMAP_REQUESTED


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

    assert outcome.status == "error" and outcome.event is None  # no heatmap step
    result = storage.get_json(RESULTS, f"bad/{named}.dcm.json")
    assert result["status"] == "error" and result["error"]["code"] == "bad_image"
    assert named in result["error"]["message"]
    assert not storage.exists(RESULTS, f"bad/{named}.dcm.heatmap.png")


def test_a_burned_in_dicom_is_refused_with_a_stored_error_and_no_heatmap(storage, model):
    obj = upload(storage, "burned/refused.dcm", _dicom_with(BurnedInAnnotation="YES"))

    assert ingest_object(storage, model, obj).status == "error"

    result = storage.get_json(RESULTS, "burned/refused.dcm.json")
    assert result["error"]["code"] == "burned_in_annotation"
    assert not storage.exists(RESULTS, "burned/refused.dcm.heatmap.png")


def test_a_marked_burned_in_dicom_has_a_flag_and_a_heatmap_without_its_pixels(storage, model_dir_settings):
    from PIL import Image

    from shared.explain import overlay_png

    marked = TriageModel(model_dir_settings(burned_in_annotation="mark"))
    data = _dicom_with(BurnedInAnnotation="YES")
    obj = upload(storage, "burned/marked.dcm", data)

    assert [o.status for o in both_steps(storage, marked, obj)] == ["created", "completed"]

    result = storage.get_json(RESULTS, "burned/marked.dcm.json")
    assert result["burned_in_annotation"] is True
    stored = Image.open(io.BytesIO(storage.get_bytes(RESULTS, "burned/marked.dcm.heatmap.png")))
    heatmap = marked(data, "application/dicom", explain="occlusion").heatmap
    map_alone = Image.open(io.BytesIO(overlay_png(np.zeros_like(heatmap), heatmap)))  # on black: no image pixel
    np.testing.assert_array_equal(np.asarray(stored), np.asarray(map_alone))


def test_without_a_secret_a_dicom_is_not_ingested_and_nothing_is_written(storage, model_dir_settings):
    from shared.dicom import DeidentificationNotConfigured

    unconfigured = TriageModel(model_dir_settings(deid_secret=None))
    obj = upload(storage, "nosecret/img.dcm", dicom_bytes(28))

    with pytest.raises(DeidentificationNotConfigured):  # 503: the broker retries once the operator sets it
        ingest_object(storage, unconfigured, obj)

    assert storage.list_keys(RESULTS, "nosecret/") == []


def test_the_worklist_shows_the_flag_before_the_heatmap_step_has_run(storage, model):
    from shared.review.worklist import case_from_result

    obj = upload(storage, "ward5/flag.png", png_bytes(28, seed=6))
    request = ingest_object(storage, model, obj).event

    flag = storage.get_json(RESULTS, "ward5/flag.png.json")
    assert isinstance(flag["urgent"], bool) and 0.0 <= flag["probability"] <= 1.0
    case = case_from_result(flag)
    assert case.label == flag["label"] and case.has_heatmap is False  # the worklist shows it, no picture yet

    assert ingest_event(storage, model, request).status == "completed"
    final = storage.get_json(RESULTS, "ward5/flag.png.json")
    assert (final["label"], final["completed_at"]) == (flag["label"], flag["completed_at"])
    assert case_from_result(final).has_heatmap is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
def test_the_occlusion_map_runs_at_a_lower_cpu_priority_than_the_flag(storage, model, monkeypatch):
    """On a busy node the flags of new uploads get the cores first: the heatmap's CPU work is niced."""
    seen: dict[str, int] = {}
    real_explain, real_call = model.explain, type(model).__call__

    def explain(*args, **kwargs):
        seen["heatmap"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return real_explain(*args, **kwargs)

    def call(self, *args, **kwargs):
        seen["flag"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(model, "explain", explain)
    monkeypatch.setattr(type(model), "__call__", call)
    flag, picture = both_steps(storage, model, upload(storage, "nice.png", png_bytes(28, seed=10)))
    assert picture.status == "completed"
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen["flag"] == caller and seen["heatmap"] == min(19, caller + HEATMAP_NICE)
