"""What the canary observes: per-revision requests, 5xx and p99, and feedback accuracy per model version.

`MetricsSource` is either `PrometheusSource` (the Prometheus HTTP API) or `GatewayMetricsSource` (the local
gateway's own /metrics, no Prometheus needed); `feedback_accuracy` joins the radiologists' labels in S3 with the
stored predictions; `observer` combines both into the `Observation` that `policy.decide` judges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import httpx

from shared.canary.errors import CanaryError
from shared.canary.policy import CanaryState, FeedbackStats, Observation, RevisionStats
from shared.errors import NotFound, UserError
from shared.names import FEEDBACK_BUCKET, feedback_request_id
from shared.request_records import load_request_record
from shared.storage import Storage

__all__ = [
    "GatewayMetricsSource",
    "MetricsSource",
    "Observer",
    "PrometheusSource",
    "feedback_accuracy",
    "histogram_quantile",
    "observer",
]


class MetricsSource(Protocol):
    """Per-side request stats: `PrometheusSource` or `GatewayMetricsSource`."""

    def observe(self, services: Iterable[str], champion: Iterable[str],
                challenger: Iterable[str]) -> tuple[RevisionStats, RevisionStats]: ...


class PrometheusSource:
    """Per-revision requests, 5xx and p99 over `window` from the Prometheus HTTP API (`/api/v1/query`).

    `flavor="knative"` reads the functions' `triage_request_duration_seconds` (label `revision` added by the
    scrape config from the Knative pod label); `flavor="gateway"` the local gateway's own metrics.
    """

    def __init__(self, url: str, *, flavor: str = "knative", window: str = "5m",
                 transport: httpx.BaseTransport | None = None, client: httpx.Client | None = None,
                 timeout_s: float = 10.0) -> None:
        if flavor not in ("knative", "gateway"):
            raise UserError(f"prometheus flavor: expected knative or gateway, got {flavor!r}")
        self.url = url.rstrip("/")
        self.flavor = flavor
        self.window = window
        # `client`: e.g. the Kubernetes API's, to reach Prometheus through the API server's service proxy.
        self._client = client or httpx.Client(transport=transport, timeout=timeout_s)

    def _queries(self, services: Iterable[str]) -> dict[str, str]:
        names = "|".join(services)
        w = self.window
        if self.flavor == "gateway":
            sel = f'service=~"{names}"'
            return {
                "requests": f"sum by (revision) (increase(gateway_requests_total{{{sel}}}[{w}]))",
                "errors": f'sum by (revision) (increase(gateway_requests_total{{{sel},code=~"5.."}}[{w}]))',
                "p99": "histogram_quantile(0.99, sum by (revision, le) "
                       f"(rate(gateway_request_duration_seconds_bucket{{{sel}}}[{w}])))",
            }
        sel = f'function=~"{names}",route="/"'
        count = "triage_request_duration_seconds_count"
        return {
            "requests": f"sum by (revision) (increase({count}{{{sel}}}[{w}]))",
            "errors": f'sum by (revision) (increase({count}{{{sel},status=~"5.."}}[{w}]))',
            "p99": "histogram_quantile(0.99, sum by (revision, le) "
                   f"(rate(triage_request_duration_seconds_bucket{{{sel}}}[{w}])))",
        }

    def query(self, promql: str) -> dict[str, float]:
        """revision → value of an instant vector query; NaN values (no data) are left out."""
        try:
            response = self._client.get(f"{self.url}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise CanaryError(f"prometheus {self.url} unreachable: {type(exc).__name__}") from exc
        try:
            payload = response.json()
        except ValueError as exc:
            raise CanaryError(f"prometheus {self.url} answered {response.status_code} without JSON") from exc
        if response.status_code != 200 or payload.get("status") != "success":
            raise CanaryError(f"prometheus {self.url} answered {response.status_code}: {payload.get('error')}")
        values: dict[str, float] = {}
        for item in payload["data"]["result"]:
            value = float(item["value"][1])
            if value == value:  # NaN: a histogram without observations in the window
                values[item["metric"].get("revision", "")] = value
        return values

    def observe(self, services: Iterable[str], champion: Iterable[str],
                challenger: Iterable[str]) -> tuple[RevisionStats, RevisionStats]:
        """(champion, challenger) stats, summed over each side's revisions; p99 is the worst revision's."""
        results = {name: self.query(q) for name, q in self._queries(list(services)).items()}

        def side(revisions: Iterable[str]) -> RevisionStats:
            revisions = set(revisions)
            p99s = [v for r, v in results["p99"].items() if r in revisions]
            return RevisionStats(
                requests=sum(v for r, v in results["requests"].items() if r in revisions),
                errors=sum(v for r, v in results["errors"].items() if r in revisions),
                p99_s=max(p99s) if p99s else None,
            )

        return side(champion), side(challenger)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's `histogram_quantile` on cumulative bucket counts {upper bound: count}; None when empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):  # as Prometheus: the highest finite bound
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


class GatewayMetricsSource:
    """The local gateway's own `/metrics`, read at each tick: the stats are the change since the previous read.

    Lets `triage canary --gateway` judge steps without a Prometheus server (design §6: Prometheus is optional).
    """

    def __init__(self, url: str, *, transport: httpx.BaseTransport | None = None, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(transport=transport, timeout=timeout_s)
        self._previous: dict[str, dict[str, Any]] = {}

    def _read(self, services: set[str]) -> dict[str, dict[str, Any]]:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            response = self._client.get(f"{self.url}/metrics")
        except httpx.HTTPError as exc:
            raise CanaryError(f"gateway {self.url} unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise CanaryError(f"gateway {self.url} answered {response.status_code} to GET /metrics")
        totals: dict[str, dict[str, Any]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("service") not in services:
                    continue
                entry = totals.setdefault(labels["revision"], {"requests": 0.0, "errors": 0.0, "buckets": {}})
                if sample.name == "gateway_requests_total":
                    entry["requests"] += sample.value
                    entry["errors"] += sample.value if labels.get("code", "").startswith("5") else 0.0
                elif sample.name == "gateway_request_duration_seconds_bucket":
                    bound = float(labels["le"])
                    entry["buckets"][bound] = entry["buckets"].get(bound, 0.0) + sample.value
        return totals

    def observe(self, services: Iterable[str], champion: Iterable[str],
                challenger: Iterable[str]) -> tuple[RevisionStats, RevisionStats]:
        current = self._read(set(services))
        previous, self._previous = self._previous, current
        empty: dict[str, Any] = {"requests": 0.0, "errors": 0.0, "buckets": {}}

        def side(revisions: Iterable[str]) -> RevisionStats:
            requests = errors = 0.0
            buckets: dict[float, float] = {}
            for revision in set(revisions):
                now, before = current.get(revision, empty), previous.get(revision, empty)
                requests += now["requests"] - before["requests"]
                errors += now["errors"] - before["errors"]
                for bound, count in now["buckets"].items():
                    buckets[bound] = buckets.get(bound, 0.0) + count - before["buckets"].get(bound, 0.0)
            return RevisionStats(requests, errors, histogram_quantile(0.99, buckets))

        return side(champion), side(challenger)


def feedback_accuracy(
    storage: Storage, versions: Iterable[str | None], *, max_labels: int = 5000
) -> dict[str, FeedbackStats]:
    """Accuracy per model version: each `feedback/<id>.json` label joined with its stored prediction."""
    wanted = {str(v) for v in versions if v is not None}
    counts = {v: [0, 0] for v in wanted}
    for key in storage.list_keys(FEEDBACK_BUCKET)[-max_labels:]:
        if feedback_request_id(key) is None:
            continue  # not a label
        try:
            label = storage.get_json(FEEDBACK_BUCKET, key)
            if label.get("model") and label.get("predicted_label"):  # the feedback function copies both: no join
                model, predicted = label["model"], label["predicted_label"]
            else:
                answered = load_request_record(storage, str(label["request_id"]))
                if answered is None:
                    raise NotFound("no request record")
                model, predicted = answered.get("model") or {}, answered.get("label")
            version = str(model.get("version"))
        except (NotFound, KeyError, TypeError, ValueError, AttributeError):
            continue  # a label without a known prediction says nothing about a model version
        if version in counts:
            counts[version][0] += 1
            counts[version][1] += int(predicted == label.get("label"))
    return {v: FeedbackStats(labelled=n, correct=c) for v, (n, c) in counts.items()}


Observer = Callable[[CanaryState], Observation]


def observer(metrics: MetricsSource, storage: Storage | None, services: Iterable[str]) -> Observer:
    """Observation of a state from Prometheus and (when `storage` is given) the feedback in S3."""
    services = tuple(services)

    def observe(state: CanaryState) -> Observation:
        champion_revs = {pair["champion"] for pair in state.revisions.values()}
        challenger_revs = {pair["challenger"] for pair in state.revisions.values()}
        champion, challenger = metrics.observe(services, champion_revs, challenger_revs)
        if storage is None or state.champion_version == state.version:
            return Observation(champion, challenger)
        accuracy = feedback_accuracy(storage, (state.version, state.champion_version))
        return Observation(champion, challenger, accuracy.get(str(state.champion_version), FeedbackStats()),
                           accuracy.get(state.version, FeedbackStats()))

    return observe
