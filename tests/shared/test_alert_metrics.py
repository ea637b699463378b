"""The series the alerting rules read: urgent cases within 60 s (ingest), dead letters (where they are stored),
and the counters that exist from the start so their first increment is visible to increase()."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cloudevents.http import CloudEvent
from prometheus_client import REGISTRY

from shared import metrics
from shared.config import Settings
from shared.dead_letter import dead_letter_record, store_dead_letter
from shared.ingest import ObjectVersion, ingest_object
from shared.model import TriageModel
from tests.functions.tiny_model import build_tiny_model_dir, png_bytes


def _urgent(within: str) -> float:
    return REGISTRY.get_sample_value("triage_urgent_flagged_total", {"within_60s": within}) or 0.0


def _dead(subscriber: str) -> float:
    return REGISTRY.get_sample_value("triage_dead_letters_total", {"subscriber": subscriber}) or 0.0


def test_the_alerted_counters_are_exported_at_zero_from_the_start() -> None:
    for name, labels in (("triage_urgent_flagged_total", {"within_60s": "true"}),
                         ("triage_urgent_flagged_total", {"within_60s": "false"}),
                         ("triage_predictions_total", {"label": "normal"}),
                         ("triage_not_assessable_total", {}), ("triage_export_failures_total", {})):
        assert REGISTRY.get_sample_value(name, labels) is not None, (name, labels)


def test_an_urgent_result_counts_by_whether_it_came_within_60_s() -> None:
    before = _urgent("true"), _urgent("false")
    metrics.record_urgent_flagged(59.9)
    metrics.record_urgent_flagged(60.0)
    metrics.record_urgent_flagged(61.0)
    assert (_urgent("true") - before[0], _urgent("false") - before[1]) == (2.0, 1.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TriageModel:
    model_dir = build_tiny_model_dir(tmp_path_factory.mktemp("alert-model") / "model")
    loaded = TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path_factory.mktemp("cache"),
                                  deid_secret="alert-test-secret"))
    loaded.load()
    return loaded


@pytest.mark.parametrize(("threshold", "completed", "counted"), [
    (0.0, "2026-11-26T10:00:30Z", ("true", 1.0)),
    (0.0, "2026-11-26T10:01:30Z", ("false", 1.0)),
    (1.01, "2026-11-26T10:01:30Z", ("false", 0.0)),  # not urgent: not counted
])
def test_ingest_counts_each_urgent_result_against_the_60_s_deadline(storage, model, monkeypatch, threshold,
                                                                  completed, counted) -> None:
    monkeypatch.setattr(TriageModel, "urgent_threshold", property(lambda self: threshold))
    etag = storage.put_bytes("inference-inputs", "ward3/urgent.png", png_bytes(28))
    obj = ObjectVersion("inference-inputs", "ward3/urgent.png", etag, None, "2026-11-26T10:00:00Z")
    before = _urgent(counted[0])
    done = datetime.fromisoformat(completed.replace("Z", "+00:00")).astimezone(UTC)
    outcome = ingest_object(storage, model, obj, now=lambda: done)
    assert outcome.status == "created" and outcome.result["urgent"] is (threshold == 0.0)
    assert _urgent(counted[0]) - before == counted[1]


def test_a_stored_dead_letter_is_counted_by_subscriber(storage) -> None:
    event = CloudEvent({"type": "triage.prediction.created", "source": "triage/ingest", "id": "e-1"}, {"x": 1})
    before = _dead("monitor")
    store_dead_letter(storage, dead_letter_record(event, error="boom", subscriber="monitor"))
    assert _dead("monitor") - before == 1.0
    assert b'triage_dead_letters_total{subscriber="monitor"}' in metrics.dead_letter_exposition()
    assert b"triage_predictions_total" not in metrics.dead_letter_exposition()
