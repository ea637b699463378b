"""Canary of design §9 (Flagger-style): step traffic to the challenger while it stays within thresholds.

The decision core is pure: `decide(state, policy, observation, now)` → advance / hold / rollback / promote.
Around it sit injectable sources (Prometheus for per-revision requests, 5xx rate and p99; S3 feedback for
accuracy per model version) and traffic backends (`KnativeTraffic` patches the Services' `spec.traffic`;
`GatewayTraffic` drives the local gateway). `tick()` runs one observe → decide → apply step, with the state
kept in S3 so the scale-to-zero function remembers it between PingSource wake-ups.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml
from prometheus_client import Counter, Gauge

from shared.config import CANARY_SERVICES, CanaryPolicy, CanarySettings, parse_steps
from shared.errors import NotFound, TriageError, UserError
from shared.storage import Storage
from shared.timestamps import utc_iso

__all__ = [
    "ADVANCE",
    "CANARY_SERVICES",
    "HOLD",
    "PROMOTE",
    "PROMOTED",
    "ROLLBACK",
    "ROLLED_BACK",
    "RUNNING",
    "CanaryController",
    "CanaryError",
    "CanaryPolicy",
    "CanarySettings",
    "CanaryState",
    "Decision",
    "FeedbackStats",
    "GatewayMetricsSource",
    "GatewayTraffic",
    "KnativeTraffic",
    "KubernetesAPI",
    "MetricsSource",
    "Observation",
    "Observer",
    "PrometheusSource",
    "RevisionStats",
    "Traffic",
    "apply_decision",
    "controller_from_settings",
    "decide",
    "feedback_accuracy",
    "histogram_quantile",
    "load_state",
    "log_decision",
    "observer",
    "parse_steps",
    "promote_in_registry",
    "registry_champion",
    "save_state",
    "start_canary",
    "tick",
]

log = logging.getLogger("triage.canary")

ADVANCE, HOLD, ROLLBACK, PROMOTE = "advance", "hold", "rollback", "promote"
RUNNING, PROMOTED, ROLLED_BACK = "running", "promoted", "rolled_back"
RESULT_BUCKET = "inference-results"
FEEDBACK_BUCKET = "feedback"
STATE_KEY = "_canary/state.json"

WEIGHT = Gauge("triage_canary_weight_percent", "Percent of traffic the canary sends to the challenger.", ["service"])
DECISIONS = Counter("triage_canary_decisions_total", "Canary decisions, by outcome.", ["outcome"])


class CanaryError(TriageError):
    """A source or traffic backend failed (unreachable, non-2xx): our side, so 502 and a retry next tick."""

    status = 502
    code = "canary_backend_failed"




# ---------------------------------------------------------------- policy, observation, state, decision


@dataclass(frozen=True)
class RevisionStats:
    """Requests, 5xx answers and p99 latency (seconds, None without data) of one side over the window."""

    requests: float = 0.0
    errors: float = 0.0
    p99_s: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class FeedbackStats:
    """Radiologist labels of predictions made by one model version, and how many the model got right."""

    labelled: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


@dataclass(frozen=True)
class Observation:
    champion: RevisionStats
    challenger: RevisionStats
    champion_feedback: FeedbackStats = FeedbackStats()
    challenger_feedback: FeedbackStats = FeedbackStats()


@dataclass(frozen=True)
class Decision:
    outcome: str  # advance | hold | rollback | promote
    weight: int  # percent to the challenger after the decision
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "weight": self.weight, "reason": self.reason}


@dataclass(frozen=True)
class CanaryState:
    """The canary of one challenger `version`, persisted as JSON between ticks."""

    version: str
    champion_version: str | None
    weight: int
    step: int  # index into the policy's steps
    status: str  # running | promoted | rolled_back
    started: str
    updated: str
    revisions: dict[str, dict[str, str]] = field(default_factory=dict)  # service → {champion, challenger}
    history: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "history": list(self.history)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "canary state") -> CanaryState:
        try:
            return cls(
                version=str(data["version"]),
                champion_version=None if data.get("champion_version") is None else str(data["champion_version"]),
                weight=int(data["weight"]),
                step=int(data["step"]),
                status=str(data["status"]),
                started=str(data["started"]),
                updated=str(data["updated"]),
                revisions={k: dict(v) for k, v in dict(data.get("revisions") or {}).items()},
                history=tuple(dict(h) for h in data.get("history") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{where}: invalid ({type(exc).__name__}: {exc})") from exc


def start_canary(
    existing: CanaryState | None,
    version: str,
    champion_version: str | None,
    policy: CanaryPolicy,
    now: datetime,
    revisions: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[CanaryState, bool]:
    """(state at the first step, True) for a new challenger; (existing, False) when `version` already has one."""
    if existing is not None and existing.version == str(version):
        return existing, False
    stamp = utc_iso(now)
    entry = {"time": stamp, "outcome": "start", "weight": policy.steps[0], "reason": f"challenger {version}"}
    state = CanaryState(
        version=str(version),
        champion_version=champion_version,
        weight=policy.steps[0],
        step=0,
        status=RUNNING,
        started=stamp,
        updated=stamp,
        revisions={k: dict(v) for k, v in (revisions or {}).items()},
        history=(entry,),
    )
    return state, True


def _breach(policy: CanaryPolicy, obs: Observation) -> str | None:
    """The first threshold the challenger breaks, as a reason; None when it keeps every one."""
    challenger = obs.challenger
    if challenger.requests >= policy.min_requests:
        if challenger.error_rate > policy.max_error_rate:
            return f"error rate {challenger.error_rate:.3f} > {policy.max_error_rate}"
        if challenger.p99_s is not None and policy.max_p99_s is not None and challenger.p99_s > policy.max_p99_s:
            return f"p99 {challenger.p99_s:.3f} s > {policy.max_p99_s} s"
        p99, champion_p99, ratio = challenger.p99_s, obs.champion.p99_s, policy.max_p99_ratio
        if p99 is not None and champion_p99 and ratio is not None and p99 > ratio * champion_p99:
            return f"p99 {p99:.3f} s > {ratio} x champion's {champion_p99:.3f} s"
    feedback = obs.challenger_feedback
    if feedback.labelled >= policy.min_feedback and feedback.accuracy is not None:
        if policy.min_accuracy is not None and feedback.accuracy < policy.min_accuracy:
            return f"feedback accuracy {feedback.accuracy:.3f} < {policy.min_accuracy}"
        champion = obs.champion_feedback.accuracy
        if champion is not None and feedback.accuracy < champion - policy.max_accuracy_drop:
            return f"feedback accuracy {feedback.accuracy:.3f} < champion's {champion:.3f} - {policy.max_accuracy_drop}"
    return None


def decide(state: CanaryState, policy: CanaryPolicy, observation: Observation, now: datetime) -> Decision:
    """One step of the canary: rollback on any breach, hold without enough requests, else advance or promote."""
    del now  # the decision depends on the window's data only; `now` stamps the history in `apply_decision`
    if state.status != RUNNING:
        raise ValueError(f"canary of version {state.version} is {state.status}, not running")
    reason = _breach(policy, observation)
    if reason is not None:
        return Decision(ROLLBACK, 0, reason)
    if observation.challenger.requests < policy.min_requests:
        return Decision(HOLD, state.weight, f"{observation.challenger.requests:.0f} < {policy.min_requests} requests")
    if state.weight >= 100 or state.step >= len(policy.steps) - 1:
        return Decision(PROMOTE, 100, "every step within thresholds")
    return Decision(ADVANCE, policy.steps[state.step + 1], "within thresholds")


def apply_decision(state: CanaryState, policy: CanaryPolicy, decision: Decision, now: datetime) -> CanaryState:
    """The state after `decision`, its history extended by one entry."""
    stamp = utc_iso(now)
    step, status = state.step, state.status
    if decision.outcome == ADVANCE:
        step = policy.steps.index(decision.weight) if decision.weight in policy.steps else step + 1
    elif decision.outcome == ROLLBACK:
        status = ROLLED_BACK
    elif decision.outcome == PROMOTE:
        status = PROMOTED
    entry = {"time": stamp, **decision.to_json()}
    return replace(state, weight=decision.weight, step=step, status=status, updated=stamp,
                   history=(*state.history, entry))


def log_decision(state: CanaryState, decision: Decision, services: Iterable[str]) -> None:
    """One log line (no patient data) and the metrics of a decision."""
    DECISIONS.labels(outcome=decision.outcome).inc()
    for service in services:
        WEIGHT.labels(service=service).set(decision.weight)
    log.info("canary version=%s outcome=%s weight=%d->%d reason=%s",
             state.version, decision.outcome, state.weight, decision.weight, decision.reason)


# ---------------------------------------------------------------- settings


# ---------------------------------------------------------------- state in S3


def load_state(storage: Storage) -> CanaryState | None:
    try:
        data = storage.get_json(RESULT_BUCKET, STATE_KEY)
    except NotFound:
        return None
    return CanaryState.from_json(data, f"s3://{RESULT_BUCKET}/{STATE_KEY}")


def save_state(storage: Storage, state: CanaryState) -> None:
    storage.put_json(RESULT_BUCKET, STATE_KEY, state.to_json())


# ---------------------------------------------------------------- observation sources


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


class MetricsSource(Protocol):
    """Per-side request stats: `PrometheusSource` or `GatewayMetricsSource`."""

    def observe(self, services: Iterable[str], champion: Iterable[str],
                challenger: Iterable[str]) -> tuple[RevisionStats, RevisionStats]: ...


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
        if not key.endswith(".json"):
            continue
        try:
            label = storage.get_json(FEEDBACK_BUCKET, key)
            if label.get("model") and label.get("predicted_label"):  # the feedback function copies both: no join
                model, predicted = label["model"], label["predicted_label"]
            else:
                answered = storage.get_json(RESULT_BUCKET, f"requests/{label['request_id']}.json")
                model, predicted = answered.get("model") or {}, answered.get("label")
            version = str(model.get("version"))
        except (NotFound, KeyError, TypeError, ValueError, AttributeError):
            continue  # a label without a known prediction says nothing about a model version
        if version in counts:
            counts[version][0] += 1
            counts[version][1] += int(predicted == label.get("label"))
    return {v: FeedbackStats(labelled=n, correct=c) for v, (n, c) in counts.items()}


# ---------------------------------------------------------------- traffic backends


class Traffic(Protocol):
    """Where the split is applied. `revisions()` names each side per service; `set_weight` routes percent."""

    def prepare(self, version: str) -> None: ...

    def revisions(self) -> dict[str, dict[str, str]]: ...

    def set_weight(self, weight: int, revisions: Mapping[str, Mapping[str, str]], *, promote: bool = False) -> None: ...


class GatewayTraffic:
    """The local stack's gateway: `PUT /admin/revisions` makes the challenger, `PUT /admin/traffic` splits.

    With `model_uri` (e.g. "models:/xray-vit/{version}") `prepare` starts a revision `v<version>` serving it, as
    Knative makes one from a changed template; without, the gateway's running revisions are canaried as they are.
    The challenger is each service's latest revision, the champion the other one with the most traffic.
    """

    def __init__(self, url: str, *, service: str | None = None, model_uri: str | None = None,
                 transport: httpx.BaseTransport | None = None, timeout_s: float = 10.0,
                 prepare_timeout_s: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.service = service
        self.model_uri = model_uri
        self.prepare_timeout_s = prepare_timeout_s  # a revision is ready once its processes loaded the model
        self._client = httpx.Client(transport=transport, timeout=timeout_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._client.request(method, f"{self.url}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise CanaryError(f"gateway {self.url} unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise CanaryError(f"gateway {self.url} answered {response.status_code} to {method} {path}: "
                              f"{response.text[:200]}")
        return response.json()

    def current(self) -> dict[str, dict[str, int]]:
        return self._call("GET", "/admin/traffic")

    def prepare(self, version: str) -> None:
        if self.model_uri:
            body = {"name": f"v{version}", "model_uri": self.model_uri.format(version=version)}
            self._call("PUT", "/admin/revisions", json=body, timeout=self.prepare_timeout_s)

    def revisions(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for name, route in self._call("GET", "/admin/revisions").items():
            traffic: dict[str, int] = route["traffic"]
            # A gateway started with --challenger names it so; later revisions are each service's latest.
            challenger = route.get("latest") or ("challenger" if "challenger" in traffic else None)
            others = sorted((-percent, rev != "champion", rev) for rev, percent in traffic.items() if rev != challenger)
            if challenger in traffic and others and self.service in (None, name):
                found[name] = {"champion": others[0][2], "challenger": challenger}
        return found

    def set_weight(self, weight: int, revisions: Mapping[str, Mapping[str, str]], *, promote: bool = False) -> None:
        for service, pair in revisions.items():
            self._call("PUT", "/admin/traffic", json={"service": service, pair["champion"]: 100 - weight,
                                                      pair["challenger"]: weight})


def _tls_context(cluster: Mapping[str, Any], user: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context of a kubeconfig cluster (CA) and user (client certificate, as k3s writes them)."""
    tls = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    elif cluster.get("certificate-authority-data"):
        tls = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif cluster.get("certificate-authority"):
        tls = ssl.create_default_context(cafile=cluster["certificate-authority"])
    if user.get("client-certificate-data") and user.get("client-key-data"):
        # ssl loads a client key only from a file: a private directory (0700), removed once loaded.
        with tempfile.TemporaryDirectory(prefix="triage-kube-") as folder:
            cert_file, key_file = Path(folder) / "client.crt", Path(folder) / "client.key"
            cert_file.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key_file.touch(mode=0o600)
            key_file.write_bytes(base64.b64decode(user["client-key-data"]))
            tls.load_cert_chain(cert_file, key_file)
    elif user.get("client-certificate") and user.get("client-key"):
        tls.load_cert_chain(user["client-certificate"], user["client-key"])
    return tls


class KubernetesAPI:
    """A small Kubernetes API client: the in-cluster service account, or a KUBECONFIG's current context."""

    def __init__(self, server: str, *, token: str | None = None, verify: ssl.SSLContext | bool = True,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs: dict[str, Any] = {"transport": transport} if transport else {"verify": verify}
        self.server = server.rstrip("/")
        self.client = httpx.Client(headers=headers, timeout=15.0, **kwargs)

    @classmethod
    def in_cluster(cls, root: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount")) -> KubernetesAPI:
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        context = ssl.create_default_context(cafile=str(root / "ca.crt"))
        return cls(f"https://{host}:{port}", token=(root / "token").read_text().strip(), verify=context)

    @classmethod
    def from_kubeconfig(cls, path: str | Path) -> KubernetesAPI:
        """Server, CA and credentials (bearer token or client certificate data) of the current context."""
        path = Path(path)
        try:
            config = yaml.safe_load(path.read_text())
            current = config.get("current-context")
            context = next(c["context"] for c in config["contexts"] if c["name"] == current)
            cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
            user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
            return cls(cluster["server"], token=user.get("token"), verify=_tls_context(cluster, user))
        except (OSError, yaml.YAMLError, KeyError, TypeError, StopIteration, AttributeError, ValueError,
                ssl.SSLError) as exc:
            raise UserError(f"{path}: not a usable kubeconfig ({type(exc).__name__})") from exc

    @classmethod
    def from_environment(cls, kubernetes_api: str | None = None) -> KubernetesAPI:
        if os.environ.get("KUBECONFIG"):
            return cls.from_kubeconfig(os.environ["KUBECONFIG"].split(os.pathsep)[0])
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls.in_cluster()
        if kubernetes_api:
            return cls(kubernetes_api)
        raise UserError("knative: set KUBECONFIG, or run inside the cluster (KUBERNETES_SERVICE_HOST)")

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.client.request(method, self.server + path, **kwargs)
        except httpx.HTTPError as exc:
            raise CanaryError(f"kubernetes API {self.server} unreachable: {type(exc).__name__}") from exc
        if not response.is_success:
            raise CanaryError(f"kubernetes API answered {response.status_code} to {method} {path}")
        return response.json()


class KnativeTraffic:
    """Splits traffic of the Knative Services between the champion and challenger revisions.

    The challenger is the latest ready revision; the champion the revision tagged `champion` in the Service's
    traffic, else (never pinned) the newest older revision. A service whose latest revision is its champion has
    nothing to canary and is left out. Each step is one JSON merge patch of `spec.traffic`.
    """

    def __init__(self, api: KubernetesAPI, namespace: str, services: Iterable[str] = CANARY_SERVICES, *,
                 model_uri: str | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.services = tuple(services)
        self.model_uri = model_uri  # e.g. "models:/xray-vit/{version}": `prepare` makes a revision serving it

    def prepare(self, version: str) -> None:
        """A new revision of each Service serving model `version`, at 0 %: the serving one is pinned as champion.

        The template's containers are a list, which a merge patch replaces whole: the current list is sent back
        with only MODEL_URI changed.
        """
        if not self.model_uri:
            return
        uri = self.model_uri.format(version=version)
        for service in self.services:
            svc = self.api.request("GET", self._path(service))
            traffic = (svc.get("spec") or {}).get("traffic") or []
            champion = next((t.get("revisionName") for t in traffic if t.get("tag") == "champion"), None)
            champion = champion or (svc.get("status") or {}).get("latestReadyRevisionName")
            containers = [dict(c) for c in svc["spec"]["template"]["spec"]["containers"]]
            env = [e for e in containers[0].get("env", []) if e.get("name") != "MODEL_URI"]
            containers[0]["env"] = [*env, {"name": "MODEL_URI", "value": uri}]
            patch: dict[str, Any] = {"spec": {"template": {"spec": {"containers": containers}}}}
            if champion:
                patch["spec"]["traffic"] = [{"revisionName": champion, "percent": 100, "tag": "champion"}]
            self.api.request("PATCH", self._path(service), content=json.dumps(patch),
                             headers={"Content-Type": "application/merge-patch+json"})
            log.info("canary version=%s new revision of %s requested (champion %s)", version, service, champion)

    def _path(self, service: str = "") -> str:
        base = f"/apis/serving.knative.dev/v1/namespaces/{self.namespace}"
        return f"{base}/services/{service}" if service else f"{base}/revisions"

    def _older_revision(self, service: str, newest: str) -> str | None:
        selector = {"labelSelector": f"serving.knative.dev/service={service}"}
        generations = []
        for item in self.api.request("GET", self._path(), params=selector).get("items", []):
            labels = item["metadata"].get("labels", {})
            generation = int(labels.get("serving.knative.dev/configurationGeneration", 0))
            generations.append((generation, item["metadata"]["name"]))
        newest_generation = next((g for g, n in generations if n == newest), None)
        older = sorted((g, n) for g, n in generations if newest_generation is None or g < newest_generation)
        return older[-1][1] if older else None

    def revisions(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for service in self.services:
            svc = self.api.request("GET", self._path(service))
            challenger = (svc.get("status") or {}).get("latestReadyRevisionName")
            traffic = (svc.get("spec") or {}).get("traffic") or []
            champion = next((t.get("revisionName") for t in traffic if t.get("tag") == "champion"), None)
            if challenger and champion is None:  # never pinned: the revision before the latest one served
                champion = self._older_revision(service, challenger)
            if champion and challenger and champion != challenger:
                found[service] = {"champion": champion, "challenger": challenger}
        return found

    @staticmethod
    def traffic_block(weight: int, champion: str, challenger: str, *, promote: bool = False) -> list[dict[str, Any]]:
        if promote:  # the challenger is the new champion; pinned, so the next revision starts at 0 %
            return [{"revisionName": challenger, "percent": 100, "tag": "champion"}]
        return [
            {"revisionName": champion, "percent": 100 - weight, "tag": "champion"},
            {"revisionName": challenger, "percent": weight, "tag": "challenger"},
        ]

    def set_weight(self, weight: int, revisions: Mapping[str, Mapping[str, str]], *, promote: bool = False) -> None:
        for service, pair in revisions.items():
            patch = {"spec": {"traffic": self.traffic_block(weight, pair["champion"], pair["challenger"],
                                                           promote=promote)}}
            self.api.request("PATCH", self._path(service), content=json.dumps(patch),
                             headers={"Content-Type": "application/merge-patch+json"})


# ---------------------------------------------------------------- one tick


def promote_in_registry(version: str, tracking_uri: str | None = None) -> str | None:
    """Move MLflow's `champion` alias to `version` (training_jobs.registry imports mlflow lazily, never torch)."""
    from training_jobs import registry

    return registry.promote(str(version), mlflow_client=registry.client(tracking_uri))


def registry_champion(tracking_uri: str | None) -> str | None:
    """The version MLflow's `champion` alias points at; None without a registry or alias."""
    if not tracking_uri:
        return None
    from training_jobs import registry

    try:
        return registry.resolve("champion", mlflow_client=registry.client(tracking_uri))[0]
    except Exception as exc:  # no alias yet, registry down: the feedback check then waits for a champion
        log.warning("canary: no champion version in the registry (%s)", type(exc).__name__)
        return None


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


def tick(
    state: CanaryState,
    policy: CanaryPolicy,
    observe: Observer,
    traffic: Traffic,
    *,
    now: datetime,
    promote: Callable[[str], Any] | None = None,
) -> tuple[CanaryState, Decision]:
    """Observe, decide and apply one step; the returned state is what to persist."""
    if not state.revisions:
        state = replace(state, revisions=traffic.revisions())
        if not state.revisions:
            decision = Decision(HOLD, state.weight, "no challenger revision beside the champion yet")
        else:  # the first step is routed now; its data is judged on the next tick
            traffic.set_weight(state.weight, state.revisions)
            decision = Decision(HOLD, state.weight, f"routed the first step of {state.weight} %")
        log_decision(state, decision, state.revisions)
        return apply_decision(state, policy, decision, now), decision
    decision = decide(state, policy, observe(state), now)
    if decision.outcome in (ADVANCE, ROLLBACK, PROMOTE):
        traffic.set_weight(decision.weight, state.revisions, promote=decision.outcome == PROMOTE)
    if decision.outcome == PROMOTE and promote is not None:
        try:
            promote(state.version)
        except Exception as exc:  # not persisted as promoted: the next tick promotes again (both steps idempotent)
            raise CanaryError(f"registry: cannot move champion to {state.version}: {type(exc).__name__}") from exc
    log_decision(state, decision, state.revisions)
    return apply_decision(state, policy, decision, now), decision


class CanaryController:
    """The canary with its state in S3: `start` on a registered model, `tick` on each PingSource wake-up."""

    def __init__(self, storage: Storage, policy: CanaryPolicy, observe: Observer, traffic: Traffic, *,
                 promote: Callable[[str], Any] | None = None,
                 champion_version: Callable[[], str | None] = lambda: None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.champion_version = champion_version
        self.storage = storage
        self.policy = policy
        self.observe = observe
        self.traffic = traffic
        self.promote = promote
        self.clock = clock
        # One decision at a time: a slow tick must not race the next ping on the state or the metric deltas.
        self._busy = threading.Lock()

    def start(self, version: str, champion_version: str | None = None) -> dict[str, Any]:
        """A canary at the first step for `version`; a redelivered event for the same version changes nothing."""
        with self._busy:
            return self._start(version, champion_version)

    def _start(self, version: str, champion_version: str | None) -> dict[str, Any]:
        existing = load_state(self.storage)
        if existing is not None and existing.version == str(version):
            return {"status": "unchanged", "version": existing.version, "weight": existing.weight}
        champion_version = champion_version or self.champion_version()
        state, started = start_canary(existing, version, champion_version, self.policy, self.clock())
        if not started:
            return {"status": "unchanged", "version": state.version, "weight": state.weight}
        log.info("canary version=%s outcome=start weight=0->%d", state.version, state.weight)
        self.traffic.prepare(state.version)  # idempotent: a redelivery after a failure here prepares again
        save_state(self.storage, state)  # saved before routing: a failed split is retried by the next tick
        state, decision = tick(state, self.policy, self.observe, self.traffic, now=self.clock())
        save_state(self.storage, state)
        return {"status": "started", "version": state.version, **decision.to_json()}

    def tick(self) -> dict[str, Any]:
        """One step decision; a ping that arrives while one is being made is skipped (the next one comes)."""
        if not self._busy.acquire(blocking=False):
            return {"status": "busy"}
        try:
            return self._tick()
        finally:
            self._busy.release()

    def _tick(self) -> dict[str, Any]:
        state = load_state(self.storage)
        if state is None or state.status != RUNNING:
            return {"status": "idle", "version": state.version if state else None}
        state, decision = tick(state, self.policy, self.observe, self.traffic, now=self.clock(),
                               promote=self.promote)
        save_state(self.storage, state)
        return {"status": state.status, "version": state.version, **decision.to_json()}


def controller_from_settings(config: CanarySettings, storage: Storage,
                             mlflow_tracking_uri: str | None = None) -> CanaryController:
    """The function's controller: Prometheus + S3 feedback, Knative (or the local gateway), MLflow promotion."""
    flavor = "gateway" if config.gateway_url else "knative"
    metrics: MetricsSource
    if config.prometheus_url:
        metrics = PrometheusSource(config.prometheus_url, flavor=flavor, window=config.window)
    elif config.gateway_url:
        metrics = GatewayMetricsSource(config.gateway_url)
    else:
        raise UserError("PROMETHEUS_URL or CANARY_GATEWAY_URL must be set for the canary to observe anything")
    traffic: Traffic
    if config.gateway_url:
        traffic = GatewayTraffic(config.gateway_url, model_uri=config.model_uri)
    else:
        traffic = KnativeTraffic(KubernetesAPI.from_environment(config.kubernetes_api), config.namespace,
                                 config.services, model_uri=config.model_uri)

    def promote(version: str) -> None:
        previous = promote_in_registry(version, mlflow_tracking_uri)
        log.info("canary version=%s promoted in the registry (champion was %s)", version, previous)

    return CanaryController(storage, config.policy, observer(metrics, storage, config.services), traffic,
                            promote=promote if mlflow_tracking_uri else None,
                            champion_version=lambda: registry_champion(mlflow_tracking_uri))
