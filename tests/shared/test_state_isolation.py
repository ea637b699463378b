"""No input key reaches internal state (issue 8, item 6): uploads named like state keys only get their own result.

Real ingest, a real tiny ONNX model and the local S3 server. The state is written by the code that owns it (request
records by ingest and feedback, the monitor's summary and label join, the canary's state, retrain's state and
batch), then hostile uploads are ingested: one named like each state key, in today's layout and in the old one
where state lived in `inference-results`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from shared import names
from shared.canary import start_canary
from shared.canary.controller import save_state
from shared.config import CanaryPolicy, RetrainConfig
from shared.events import NullPublisher, prediction_created_event
from shared.feedback import FeedbackRequest, submit_feedback
from shared.ingest import ObjectVersion, ingest_event, ingest_object
from shared.model import TriageModel
from shared.monitor.labels import record_label
from shared.monitor.predictions import record_prediction
from shared.monitor.report import write_report
from shared.retrain import LocalLauncher, maybe_launch
from shared.storage import Storage
from tests.functions.tiny_model import png_bytes
from tests.shared.monitor.streams import CONFIG, NOW

NOW_ISO = "2026-11-26T12:00:00Z"


def ingest(storage: Storage, model: TriageModel, key: str, seed: int = 0):
    etag = storage.put_bytes(names.INPUT_BUCKET, key, png_bytes(28, seed=seed))
    flag = ingest_object(storage, model, ObjectVersion(names.INPUT_BUCKET, key, etag, None, NOW_ISO))
    if flag.event is not None:  # the heatmap step, as the broker delivers the flag step's reply
        ingest_event(storage, model, flag.event)
    return flag


def count_prediction(storage: Storage, result: dict) -> str:
    event = prediction_created_event(result)
    return record_prediction(storage, CONFIG, event["id"], event.get_data(), now=NOW)


def state_snapshot(storage: Storage) -> dict[str, bytes]:
    return {key: storage.get_bytes(names.STATE_BUCKET, key) for key in storage.list_keys(names.STATE_BUCKET)}


def write_every_kind_of_state(storage: Storage, model: TriageModel) -> str:
    """Each owner writes its state as in production; returns the request id of the one ingested upload."""
    outcome = ingest(storage, model, "ward3/chest.png")
    request_id = outcome.result["request_id"]
    submit_feedback(storage, FeedbackRequest(request_id, "pneumonia", "ann", "ann"), NullPublisher())
    assert count_prediction(storage, outcome.result) == "counted"
    assert record_label(storage, CONFIG, request_id, now=NOW) == "updated"
    write_report(storage, CONFIG, now=NOW, card=None)
    policy = CanaryPolicy(steps=(10, 50, 100))
    save_state(storage, start_canary(None, "7", "6", policy, datetime(2026, 11, 26, tzinfo=UTC))[0])
    retrain = RetrainConfig(backend="local", min_labels=1, train_command=("triage", "train"))
    launched = maybe_launch(storage, retrain, LocalLauncher(retrain, runner=lambda command, env: "pid:1"))
    assert launched.status == "launched"
    return request_id


def hostile_keys(storage: Storage) -> list[str]:
    """Input keys whose result key is exactly a state key, today's and the old layout's (`_monitor/...`)."""
    keys = []
    for state_key in storage.list_keys(names.STATE_BUCKET):
        stem = state_key.removesuffix(".json")
        keys += [stem, f"_{stem}"]
    return sorted({*keys, f"{names.STATE_BUCKET}/{keys[0]}"})


def test_uploads_named_like_state_keys_get_their_own_result_and_leave_the_state_untouched(storage, loaded_tiny_model):
    model = loaded_tiny_model
    request_id = write_every_kind_of_state(storage, model)
    before = state_snapshot(storage)
    assert {names.request_record_key(request_id), names.MONITOR_STATE_KEY, names.MONITOR_LABELS_KEY,
            names.MONITOR_REPORT_KEY, names.CANARY_STATE_KEY, names.RETRAIN_STATE_KEY} <= set(before)
    results_before = set(storage.list_keys(names.RESULT_BUCKET))
    keys = hostile_keys(storage)
    assert f"requests/{request_id}" in keys and "_monitor/state" in keys and "_canary/state" in keys

    for seed, key in enumerate(keys, start=1):
        outcome = ingest(storage, model, key, seed=seed)
        assert outcome.status == "created", key
        result = storage.get_json(names.RESULT_BUCKET, names.result_key(key))
        assert (result["key"], result["request_id"]) == (key, outcome.result["request_id"])

    expected = results_before | {names.result_key(k) for k in keys} | {names.heatmap_key(k) for k in keys}
    assert set(storage.list_keys(names.RESULT_BUCKET)) == expected  # each upload: its result and heatmap, no more
    after = state_snapshot(storage)
    new_records = {names.request_record_key(storage.get_json(names.RESULT_BUCKET, names.result_key(k))["request_id"])
                   for k in keys}
    assert set(after) == set(before) | new_records  # each upload indexed under its own (our) request id
    assert {k: after[k] for k in before} == before  # and nothing there before was rewritten
    assert storage.get_json(names.STATE_BUCKET, names.request_record_key(request_id))["result"] == (
        f"s3://{names.RESULT_BUCKET}/ward3/chest.png.json")


def test_the_monitor_keeps_counting_after_an_upload_named_like_its_state(storage, loaded_tiny_model):
    model = loaded_tiny_model
    first = ingest(storage, model, "ward3/a.png", seed=1).result
    second = ingest(storage, model, "ward3/b.png", seed=2).result
    assert [count_prediction(storage, r) for r in (first, second)] == ["counted", "counted"]
    hostile = ingest(storage, model, names.MONITOR_STATE_KEY.removesuffix(".json"), seed=3).result
    assert count_prediction(storage, hostile) == "counted"
    assert storage.get_json(names.STATE_BUCKET, names.MONITOR_STATE_KEY)["events_counted"] == 3  # not reset to 1


def test_no_input_key_maps_into_the_state_bucket():
    assert names.STATE_BUCKET in names.BUCKETS and names.STATE_BUCKET not in names.NOTIFYING_BUCKETS
    assert len({names.STATE_BUCKET, names.INPUT_BUCKET, names.RESULT_BUCKET, names.FEEDBACK_BUCKET}) == 4


def test_the_infrastructure_and_the_local_stack_create_the_state_bucket(storage):
    from infra_pulumi.manifests.object_store import BUCKETS, NOTIFYING_BUCKETS

    assert names.STATE_BUCKET in BUCKETS and names.STATE_BUCKET not in NOTIFYING_BUCKETS
    assert names.STATE_BUCKET in {b["Name"] for b in storage.client.list_buckets()["Buckets"]}  # ensure_buckets
