"""What the canary observes: Prometheus per-revision stats, histogram quantiles, feedback accuracy (moto S3)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.canary.errors import CanaryError
from shared.canary.observe import PrometheusSource, feedback_accuracy, histogram_quantile
from shared.canary.policy import FeedbackStats, RevisionStats
from tests.local_http import LocalServer, QuietHandler


class FakePrometheus(LocalServer):
    """A real HTTP server answering /api/v1/query with canned vectors, picked by a substring of the query."""

    def __init__(self, answers: dict[str, dict[str, str]]) -> None:
        self.queries: list[str] = []
        outer = self

        class Handler(QuietHandler):
            def do_GET(self):  # noqa: N802
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)["query"][0]
                outer.queries.append(query)
                if parts.path != "/api/v1/query" or "bad" in query:
                    body, status = {"status": "error", "error": "parse error"}, 400
                else:
                    kind = "p99" if "histogram_quantile" in query else "errors" if "5.." in query else "requests"
                    result = [{"metric": {"revision": rev}, "value": [1.0, value]}
                              for rev, value in answers.get(kind, {}).items()]
                    body, status = {"status": "success", "data": {"resultType": "vector", "result": result}}, 200
                self.reply(status, json.dumps(body).encode(), "application/json")

        super().__init__(Handler)


def test_prometheus_source_sums_each_side_and_takes_the_worst_p99():
    prom = FakePrometheus({
        "requests": {"predict-00001": "100", "explain-00001": "20", "predict-00002": "30", "other": "999"},
        "errors": {"predict-00002": "3"},
        "p99": {"predict-00001": "0.1", "explain-00001": "0.4", "predict-00002": "NaN", "explain-00002": "0.2"},
    })
    try:
        source = PrometheusSource(prom.url, window="2m")
        champion, challenger = source.observe(("predict", "explain"), {"predict-00001", "explain-00001"},
                                              {"predict-00002", "explain-00002"})
        assert champion == RevisionStats(120, 0, 0.4)
        assert challenger == RevisionStats(30, 3, 0.2) and challenger.error_rate == pytest.approx(0.1)
        assert any('function=~"predict|explain",route="/",status=~"5.."' in q and "[2m]" in q for q in prom.queries)
        gateway = PrometheusSource(prom.url, flavor="gateway")
        gateway.observe(("predict",), {"champion"}, {"challenger"})
        assert any(q.startswith("histogram_quantile(0.99") and "gateway_request_duration_seconds_bucket" in q
                   for q in prom.queries)
        with pytest.raises(CanaryError, match="answered 400: parse error"):
            source.query("bad query")
    finally:
        prom.close()
    with pytest.raises(CanaryError, match="unreachable"):
        PrometheusSource(prom.url).query("up")


def test_histogram_quantile_interpolates_like_prometheus():
    inf = float("inf")
    # 100 observations: 50 <= 0.1 s, 90 <= 0.5 s, 99 <= 1 s, 1 above.
    buckets = {0.1: 50, 0.5: 90, 1.0: 99, inf: 100}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.9, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.1 + 0.4 * (20 / 40))
    assert histogram_quantile(0.995, buckets) == 1.0  # in the +Inf bucket: the highest finite bound
    assert histogram_quantile(0.99, {0.1: 0, inf: 0}) is None


def put_labelled(storage, request_id: str, version: str, predicted: str, truth: str) -> None:
    storage.put_json("triage-state", f"requests/{request_id}.json",
                     {"request_id": request_id, "label": predicted, "model": {"name": "xray-vit", "version": version}})
    storage.put_json("feedback", f"{request_id}.json",
                     {"request_id": request_id, "label": truth, "reviewer": "dr-a", "time": "2026-11-26T11:00:00Z"})


def test_feedback_accuracy_per_model_version(storage):
    for i in range(4):
        put_labelled(storage, f"champ-{i}", "6", "pneumonia", "pneumonia")
    put_labelled(storage, "champ-x", "6", "normal", "pneumonia")
    put_labelled(storage, "chal-1", "7", "normal", "normal")
    put_labelled(storage, "chal-2", "7", "normal", "pneumonia")
    storage.put_json("feedback", "orphan.json", {"request_id": "orphan", "label": "normal"})  # no prediction
    storage.put_json("feedback", "copied.json", {"request_id": "gone", "label": "normal", "predicted_label": "normal",
                                                 "model": {"name": "xray-vit", "version": "7"}})  # as feedback stores
    stats = feedback_accuracy(storage, ["6", "7", None])
    assert stats == {"6": FeedbackStats(5, 4), "7": FeedbackStats(3, 2)}
    assert stats["6"].accuracy == 0.8 and stats["7"].accuracy == pytest.approx(2 / 3)
