"""The canary: decision core, Prometheus source, Knative traffic patches, feedback accuracy, state in S3."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from shared import canary
from shared.canary import (
    ADVANCE,
    HOLD,
    PROMOTE,
    ROLLBACK,
    CanaryController,
    CanaryPolicy,
    CanarySettings,
    CanaryState,
    FeedbackStats,
    KnativeTraffic,
    KubernetesAPI,
    Observation,
    PrometheusSource,
    RevisionStats,
    decide,
    start_canary,
)
from shared.errors import UserError
from tests.local_http import LocalServer, QuietHandler

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
POLICY = CanaryPolicy(steps=(10, 25, 50, 100), max_error_rate=0.02, max_p99_s=1.0, max_p99_ratio=2.0,
                      min_requests=20, min_feedback=10, max_accuracy_drop=0.05)
HEALTHY = Observation(champion=RevisionStats(200, 1, 0.10), challenger=RevisionStats(50, 0, 0.12))


def started(policy: CanaryPolicy = POLICY) -> CanaryState:
    state, _ = start_canary(None, "7", "6", policy, NOW)
    return state


# ---------------------------------------------------------------- decision core


def test_a_healthy_challenger_advances_through_every_step_then_is_promoted():
    state = started()
    assert (state.weight, state.step, state.status) == (10, 0, "running")
    weights = []
    for minute in range(1, 10):
        decision = decide(state, POLICY, HEALTHY, NOW)
        state = canary.apply_decision(state, POLICY, decision, NOW + timedelta(minutes=minute))
        weights.append((decision.outcome, decision.weight))
        if state.status != "running":
            break
    assert weights == [(ADVANCE, 25), (ADVANCE, 50), (ADVANCE, 100), (PROMOTE, 100)]
    assert state.status == "promoted" and state.weight == 100
    assert [h["outcome"] for h in state.history] == ["start", ADVANCE, ADVANCE, ADVANCE, PROMOTE]
    with pytest.raises(ValueError, match="promoted, not running"):
        decide(state, POLICY, HEALTHY, NOW)


def test_too_few_requests_holds_at_the_current_weight():
    state = started()
    quiet = Observation(RevisionStats(200, 0, 0.1), RevisionStats(19, 0, 0.1))
    decision = decide(state, POLICY, quiet, NOW)
    assert (decision.outcome, decision.weight) == (HOLD, 10) and "19 < 20 requests" in decision.reason
    assert canary.apply_decision(state, POLICY, decision, NOW).step == 0


@pytest.mark.parametrize("challenger, feedback, reason", [
    (RevisionStats(100, 3, 0.1), None, "error rate 0.030 > 0.02"),
    (RevisionStats(100, 0, 1.5), None, "p99 1.500 s > 1.0 s"),
    (RevisionStats(100, 0, 0.25), None, "p99 0.250 s > 2.0 x champion's 0.100 s"),
    (RevisionStats(100, 0, 0.1), (FeedbackStats(40, 38), FeedbackStats(10, 8)), "accuracy 0.800 < champion's 0.950"),
    (RevisionStats(5, 0, None), (FeedbackStats(40, 38), FeedbackStats(12, 6)), "accuracy 0.500 < champion's"),
])
def test_any_breach_rolls_back_to_zero(challenger, feedback, reason):
    state = canary.apply_decision(started(), POLICY, decide(started(), POLICY, HEALTHY, NOW), NOW)  # at 25 %
    champion_fb, challenger_fb = feedback or (FeedbackStats(), FeedbackStats())
    obs = Observation(RevisionStats(300, 1, 0.1), challenger, champion_fb, challenger_fb)
    decision = decide(state, POLICY, obs, NOW)
    assert (decision.outcome, decision.weight) == (ROLLBACK, 0)
    assert reason in decision.reason
    after = canary.apply_decision(state, POLICY, decision, NOW)
    assert after.status == "rolled_back" and after.weight == 0


def test_few_labels_and_an_absolute_accuracy_floor():
    state = started()
    few = Observation(HEALTHY.champion, HEALTHY.challenger, FeedbackStats(40, 40), FeedbackStats(9, 0))
    assert decide(state, POLICY, few, NOW).outcome == ADVANCE  # 9 labels < min_feedback: not judged yet
    floor = CanaryPolicy(min_feedback=10, min_accuracy=0.9, max_accuracy_drop=1.0)
    low = Observation(HEALTHY.champion, HEALTHY.challenger, FeedbackStats(), FeedbackStats(10, 8))
    assert decide(started(floor), floor, low, NOW).reason == "feedback accuracy 0.800 < 0.9"


def test_starting_is_idempotent_on_the_version():
    state = started()
    again, created = start_canary(state, "7", "6", POLICY, NOW + timedelta(hours=1))
    assert again is state and created is False
    newer, created = start_canary(state, "8", "6", POLICY, NOW)
    assert created and newer.version == "8" and newer.weight == 10 and newer.history[0]["outcome"] == "start"


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": (10, 50)}, "ending at 100"),
    ({"steps": (50, 25, 100)}, "strictly increasing"),
    ({"steps": (0, 100)}, "1..100"),
    ({"max_error_rate": 1.5}, "max_error_rate"),
    ({"max_p99_s": 0}, "max_p99_s"),
    ({"min_requests": 0}, "min_requests"),
])
def test_invalid_policies_name_the_field(kwargs, message):
    with pytest.raises(UserError, match=message):
        CanaryPolicy(**kwargs)


def test_settings_from_env_and_state_round_trip():
    settings = CanarySettings.from_env({"CANARY_STEPS": "5,50,100", "CANARY_MAX_P99_S": "none",
                                        "CANARY_MIN_REQUESTS": "3", "KNATIVE_NAMESPACE": "ns"})
    assert settings.policy.steps == (5, 50, 100) and settings.policy.max_p99_s is None
    assert settings.policy.min_requests == 3 and settings.namespace == "ns"
    assert settings.prometheus_url == "http://prometheus.ns.svc.cluster.local:9090"
    local = CanarySettings.from_env({"CANARY_GATEWAY_URL": "http://127.0.0.1:8080"})
    assert local.prometheus_url is None and local.model_uri == "models:/xray-vit/{version}"  # the gateway's metrics
    assert CanarySettings.from_env({"CANARY_MODEL_URI": ""}).model_uri is None  # canary the running revisions as is
    with pytest.raises(UserError, match="steps"):
        CanarySettings.from_env({"CANARY_STEPS": "ten,100"})
    state = started()
    assert CanaryState.from_json(json.loads(json.dumps(state.to_json()))) == state
    with pytest.raises(UserError, match="canary state: invalid"):
        CanaryState.from_json({"version": "1"})


# ---------------------------------------------------------------- Prometheus source


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
        with pytest.raises(canary.CanaryError, match="answered 400: parse error"):
            source.query("bad query")
    finally:
        prom.close()
    with pytest.raises(canary.CanaryError, match="unreachable"):
        PrometheusSource(prom.url).query("up")


# ---------------------------------------------------------------- Knative traffic


def knative_api(services: dict[str, dict], revisions: dict[str, list[tuple[str, int]]], patches: list) -> KubernetesAPI:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t0ken"
        path = request.url.path
        if request.method == "PATCH":
            assert request.headers["Content-Type"] == "application/merge-patch+json"
            patches.append((path.rsplit("/", 1)[1], json.loads(request.content)))
            return httpx.Response(200, json={})
        if path.endswith("/revisions"):
            service = request.url.params["labelSelector"].split("=")[1]
            items = [{"metadata": {"name": name, "labels": {"serving.knative.dev/configurationGeneration": str(g)}}}
                     for name, g in revisions.get(service, [])]
            return httpx.Response(200, json={"items": items})
        name = path.rsplit("/", 1)[1]
        if name not in services:
            return httpx.Response(404, json={"kind": "Status"})
        return httpx.Response(200, json=services[name])

    return KubernetesAPI("https://k8s.example:6443", token="t0ken", transport=httpx.MockTransport(handle))


def test_knative_traffic_finds_the_revisions_and_patches_the_exact_traffic_block():
    services = {
        "predict": {"spec": {}, "status": {"latestReadyRevisionName": "predict-00003"}},
        "explain": {"spec": {"traffic": [{"revisionName": "explain-00001", "percent": 100, "tag": "champion"}]},
                    "status": {"latestReadyRevisionName": "explain-00002"}},
        "ingest": {"spec": {"traffic": [{"revisionName": "ingest-00004", "percent": 100, "tag": "champion"}]},
                   "status": {"latestReadyRevisionName": "ingest-00004"}},  # already promoted: nothing to do
    }
    revisions = {"predict": [("predict-00001", 1), ("predict-00002", 2), ("predict-00003", 3)]}
    patches: list = []
    traffic = KnativeTraffic(knative_api(services, revisions, patches), "xray-triage")
    found = traffic.revisions()
    assert found == {"predict": {"champion": "predict-00002", "challenger": "predict-00003"},
                     "explain": {"champion": "explain-00001", "challenger": "explain-00002"}}
    traffic.set_weight(25, found)
    assert patches == [
        ("predict", {"spec": {"traffic": [{"revisionName": "predict-00002", "percent": 75, "tag": "champion"},
                                          {"revisionName": "predict-00003", "percent": 25, "tag": "challenger"}]}}),
        ("explain", {"spec": {"traffic": [{"revisionName": "explain-00001", "percent": 75, "tag": "champion"},
                                          {"revisionName": "explain-00002", "percent": 25, "tag": "challenger"}]}}),
    ]
    patches.clear()
    traffic.set_weight(100, {"predict": found["predict"]}, promote=True)
    assert patches == [("predict", {"spec": {"traffic": [
        {"revisionName": "predict-00003", "percent": 100, "tag": "champion"}]}})]
    with pytest.raises(canary.CanaryError, match="answered 404 to GET"):
        KnativeTraffic(knative_api({}, {}, []), "xray-triage", ["predict"]).revisions()


def test_kubeconfig_with_a_bearer_token_and_a_broken_one(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "current-context": "ci",
        "contexts": [{"name": "ci", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "abc"}}],
    }))
    api = KubernetesAPI.from_kubeconfig(path)
    assert api.server == "https://10.0.0.1:6443" and api.client.headers["Authorization"] == "Bearer abc"
    path.write_text("current-context: nowhere\ncontexts: []\n")
    with pytest.raises(UserError, match="kubeconfig: not a usable kubeconfig"):
        KubernetesAPI.from_kubeconfig(path)


def self_signed_pem() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k3s-test")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_kubeconfig_with_client_certificate_data_like_k3s(tmp_path):
    cert, key = self_signed_pem()
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "current-context": "default",
        "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
        "clusters": [{"name": "default", "cluster": {"server": "https://203.0.113.7:6443",
                                                     "certificate-authority-data": b64(cert)}}],
        "users": [{"name": "default", "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
    }))
    api = KubernetesAPI.from_kubeconfig(path)
    assert api.server == "https://203.0.113.7:6443" and "Authorization" not in api.client.headers


# ---------------------------------------------------------------- feedback accuracy and the controller (moto S3)


def put_labelled(storage, request_id: str, version: str, predicted: str, truth: str) -> None:
    storage.put_json("inference-results", f"requests/{request_id}.json",
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
    stats = canary.feedback_accuracy(storage, ["6", "7", None])
    assert stats == {"6": FeedbackStats(5, 4), "7": FeedbackStats(3, 2)}
    assert stats["6"].accuracy == 0.8 and stats["7"].accuracy == pytest.approx(2 / 3)


class RecordingTraffic:
    def __init__(self) -> None:
        self.weights: list[int] = []
        self.prepared: list[str] = []

    def prepare(self, version):
        self.prepared.append(version)

    def revisions(self):
        return {"predict": {"champion": "champion", "challenger": "challenger"}}

    def set_weight(self, weight, revisions, *, promote=False):
        self.weights.append(weight)


def test_controller_keeps_state_in_s3_and_a_redelivered_start_changes_nothing(storage):
    traffic, promoted = RecordingTraffic(), []
    controller = CanaryController(storage, CanaryPolicy(steps=(50, 100), min_requests=1), lambda state: HEALTHY,
                                  traffic, promote=promoted.append, clock=lambda: NOW)
    assert controller.tick() == {"status": "idle", "version": None}
    first = controller.start("7", "6")
    assert first["status"] == "started" and traffic.weights == [50] and traffic.prepared == ["7"]
    assert controller.start("7")["status"] == "unchanged" and traffic.weights == [50] and traffic.prepared == ["7"]
    assert controller.tick()["outcome"] == ADVANCE and traffic.weights == [50, 100]
    assert controller.tick()["outcome"] == PROMOTE and promoted == ["7"]
    assert controller.tick()["status"] == "idle"
    saved = canary.load_state(storage)
    assert saved.status == "promoted" and [h["outcome"] for h in saved.history] == ["start", HOLD, ADVANCE, PROMOTE]


def test_knative_prepare_creates_a_challenger_revision_of_the_new_model_pinning_the_champion():
    template = {"spec": {"containers": [{"name": "function", "image": "repo/predict:abc",
                                         "env": [{"name": "MODEL_URI", "value": "models:/xray-vit@champion"},
                                                 {"name": "AWS_REGION", "value": "us-east-1"}]}]}}
    services = {"predict": {"spec": {"template": template}, "status": {"latestReadyRevisionName": "predict-00004"}}}
    patches: list = []
    KnativeTraffic(knative_api(services, {}, patches), "xray-triage", ["predict"],
                   model_uri="models:/xray-vit/{version}").prepare("9")
    assert patches == [("predict", {"spec": {
        "template": {"spec": {"containers": [{"name": "function", "image": "repo/predict:abc", "env": [
            {"name": "AWS_REGION", "value": "us-east-1"}, {"name": "MODEL_URI", "value": "models:/xray-vit/9"}]}]}},
        "traffic": [{"revisionName": "predict-00004", "percent": 100, "tag": "champion"}],
    }})]
    patches.clear()
    KnativeTraffic(knative_api(services, {}, patches), "xray-triage", ["predict"]).prepare("9")
    assert patches == []  # without a model URI template (the CLI after a deploy) nothing is created


PROMOTE_SCRIPT = """
import json, sys
from mlflow.tracking import MlflowClient
uri, source = sys.argv[1], sys.argv[2]
mc = MlflowClient(tracking_uri=uri, registry_uri=uri)
mc.create_registered_model("xray-vit")
for _ in range(2):
    mc.create_model_version("xray-vit", source=source)
mc.set_registered_model_alias("xray-vit", "champion", "1")
from shared import canary
before = canary.registry_champion(uri)
previous = canary.promote_in_registry("2", uri)
after = str(mc.get_model_version_by_alias("xray-vit", "champion").version)
print(json.dumps({"before": before, "previous": previous, "after": after, "torch": "torch" in sys.modules}))
"""


def test_promotion_moves_the_mlflow_champion_alias_without_importing_torch(tmp_path):
    import subprocess
    import sys

    from shared.config import PROJECT_ROOT

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "model").mkdir()
    done = subprocess.run([sys.executable, "-c", PROMOTE_SCRIPT, uri, str(tmp_path / "model")], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "before": "1", "previous": "1", "after": "2", "torch": False}


def test_histogram_quantile_interpolates_like_prometheus():
    inf = float("inf")
    # 100 observations: 50 <= 0.1 s, 90 <= 0.5 s, 99 <= 1 s, 1 above.
    buckets = {0.1: 50, 0.5: 90, 1.0: 99, inf: 100}
    assert canary.histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert canary.histogram_quantile(0.9, buckets) == pytest.approx(0.5)
    assert canary.histogram_quantile(0.7, buckets) == pytest.approx(0.1 + 0.4 * (20 / 40))
    assert canary.histogram_quantile(0.995, buckets) == 1.0  # in the +Inf bucket: the highest finite bound
    assert canary.histogram_quantile(0.99, {0.1: 0, inf: 0}) is None


def test_a_failed_registry_promotion_is_retried_on_the_next_tick(storage):
    traffic, calls = RecordingTraffic(), []

    def flaky_promote(version):
        calls.append(version)
        if len(calls) == 1:
            raise ConnectionError("mlflow down")

    controller = CanaryController(storage, CanaryPolicy(steps=(100,), min_requests=1), lambda state: HEALTHY,
                                  traffic, promote=flaky_promote, clock=lambda: NOW)
    controller.start("7", "6")
    with pytest.raises(canary.CanaryError, match="cannot move champion to 7: ConnectionError"):
        controller.tick()
    assert canary.load_state(storage).status == "running"
    assert controller.tick()["status"] == "promoted" and calls == ["7", "7"]


def test_a_ping_during_a_slow_decision_is_skipped_not_run_alongside(storage):
    entered, release = threading.Event(), threading.Event()

    def slow_observe(state):
        entered.set()
        assert release.wait(10)
        return HEALTHY

    controller = CanaryController(storage, CanaryPolicy(steps=(50, 100), min_requests=1), slow_observe,
                                  RecordingTraffic(), clock=lambda: NOW)
    controller.start("7", "6")
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(controller.tick()))
    worker.start()
    assert entered.wait(10)
    assert controller.tick() == {"status": "busy"}  # the state and the metric deltas stay one decision's
    release.set()
    worker.join(10)
    assert first["outcome"] == ADVANCE and canary.load_state(storage).weight == 100


def test_a_kubeconfig_with_a_corrupt_ca_names_the_file(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://x", "certificate-authority-data": "bm90IGEgY2E="}}],
        "users": [{"name": "u", "user": {}}],
    }))
    with pytest.raises(UserError, match=f"{path}: not a usable kubeconfig"):
        KubernetesAPI.from_kubeconfig(path)
