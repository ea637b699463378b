"""The replay canary on the local stack: real uploads ingested by the champion, real labels, a real gateway.

A registered challenger first scores the stored uploads offline beside the champion (tiny exported models): a
good one (the same model) advances and only then gets its revision and its first 10 %; a bad one (always
"normal", inverted, or with broken files) is rolled back and never gets a revision nor a single request. Nothing
the replay computes is written where results, the worklist or feedback read.
"""

from __future__ import annotations

import io
import shutil
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.canary import CanaryController, Replayer, load_state, observer
from shared.canary.gateway import GatewayTraffic
from shared.canary.observe import GatewayMetricsSource
from shared.canary.policy import decide_replay, start_canary
from shared.config import CanaryPolicy, Settings
from shared.feedback import FeedbackRequest, submit_feedback
from shared.ingest import ObjectVersion, ingest_object
from shared.model import TriageModel
from shared.model_store import sha256_file
from shared.modelcard import CARD_FILE, ModelCard
from shared.names import CANARY_STATE_KEY, FEEDBACK_BUCKET, INPUT_BUCKET, RESULT_BUCKET, STATE_BUCKET
from tests.functions.tiny_model import build_tiny_model_dir
from tests.shared.canary.test_policy import NOW
from tests.stack.upstream import Upstream
from triage.canary import run_action
from triage.stack.gateway import Gateway, GatewayServer, Route

ADMIN_TOKEN = "replay-admin-token"
SERVICES = ("predict", "explain", "ingest")
POLICY = CanaryPolicy(steps=(10, 50, 100), min_requests=5, replay_min_agreement=0.9, replay_min_positives=3,
                      replay_min_unlabelled=10)
N_IMAGES, N_LABELLED = 32, 14


def png(seed: int) -> bytes:
    """A varied 32x32 grey image (gradient, blob and brightness drawn per seed), so the model's answers vary."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:32, 0:32] / 32.0
    cy, cx, gx, gy = rng.uniform(0.2, 0.8, 4)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / rng.uniform(0.005, 0.05))
    image = rng.uniform(0.1, 0.5) + 0.4 * (gx * x + gy * y) + rng.uniform(0.2, 0.7) * blob
    pixels = np.clip(255 * image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def with_card(model_dir: Path, **changes) -> None:
    card = ModelCard.load(model_dir / CARD_FILE)
    replace(card, **changes).save(model_dir / CARD_FILE)


def edit_head(model_dir: Path, edit) -> None:
    """Rewrite the classifier head's initializers of model.onnx (and its sha256 in the card)."""
    import onnx
    from onnx import numpy_helper

    path = model_dir / "model.onnx"
    graph = onnx.load(str(path))
    for init in graph.graph.initializer:
        if init.name in ("model.head.weight", "model.head.bias"):
            init.CopyFrom(numpy_helper.from_array(edit(init.name, numpy_helper.to_array(init)), init.name))
    onnx.save(graph, str(path))
    card = ModelCard.load(model_dir / CARD_FILE)
    replace(card, sha256={**card.sha256, "model.onnx": sha256_file(path)}).save(model_dir / CARD_FILE)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/{1: champion, 2: the same model, 3: always normal, 4: inverted, 5: corrupt files}."""
    root = tmp_path_factory.mktemp("models")
    champion = build_tiny_model_dir(root / "1")
    model = TriageModel(Settings(model_uri=str(champion), model_cache_dir=root / "cache"))
    model.load()
    probabilities = [float(model(png(i)).probability) for i in range(N_IMAGES)]
    threshold = float(np.median(probabilities))  # about half of the uploads are called pneumonia
    with_card(champion, threshold=threshold, version="1")
    for version in ("2", "3", "4", "5"):
        shutil.copytree(champion, root / version)
        with_card(root / version, version=version)
    edit_head(root / "3", lambda name, a: np.zeros_like(a) if name.endswith("weight") else
              np.array([20.0, -20.0], a.dtype))  # logit margin -40 whatever the image: always normal
    edit_head(root / "4", lambda name, a: a[::-1].copy())  # swapped classes: p -> 1 - p
    (root / "5" / "model.onnx").write_bytes(b"not a model")
    return root


class RecordingLauncher:
    """The gateway's revision launcher: records each revision asked for; every one is served by one upstream."""

    def __init__(self) -> None:
        self.launched: list[tuple[str, str]] = []
        self.upstream = Upstream("challenger")

    def launch(self, name: str, model_uri: str) -> dict[str, str]:
        self.launched.append((name, model_uri))
        return {service: self.upstream.url for service in SERVICES}

    def stop(self, name: str) -> None:
        pass


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def publish(self, event) -> None:
        self.events.append(event)


@pytest.fixture(scope="module")
def seeded(s3_server, models, tmp_path_factory):
    """Uploads ingested by the champion (results, request records) and labels on some; once per module."""
    import httpx

    from shared.storage import Storage

    httpx.post(f"{s3_server}/moto-api/reset")
    storage = Storage.from_settings(Settings(s3_endpoint_url=s3_server))
    storage.ensure_buckets()
    settings = Settings(model_uri=str(models / "1"), model_cache_dir=tmp_path_factory.mktemp("cache"))
    champion = TriageModel(settings)
    champion.load()
    results = []
    for i in range(N_IMAGES):
        key = f"upload-{i:02d}.png"
        etag = storage.put_bytes(INPUT_BUCKET, key, png(i), "image/png")
        results.append(ingest_object(storage, champion, ObjectVersion(INPUT_BUCKET, key, etag)).result)
    etag = storage.put_bytes(INPUT_BUCKET, "not-an-image.png", b"garbage", "image/png")  # stored as an error result
    assert ingest_object(storage, champion, ObjectVersion(INPUT_BUCKET, "not-an-image.png", etag)).status == "error"
    publisher = RecordingPublisher()
    for result in results[:N_LABELLED]:  # the radiologist confirms what the champion said
        submit_feedback(storage, FeedbackRequest(result["request_id"], result["label"], "dr-a", "dr-a"), publisher)
    positives = sum(result["label"] == "pneumonia" for result in results[:N_LABELLED])
    assert 3 <= positives <= N_LABELLED - 3  # both classes among the labels
    yield storage, positives, settings.model_cache_dir
    storage.delete(STATE_BUCKET, CANARY_STATE_KEY)


@pytest.fixture
def stack(seeded, models):
    """The seeded uploads without a canary yet, a gateway serving the champion, and the canary controller."""
    storage, positives, cache = seeded
    storage.delete(STATE_BUCKET, CANARY_STATE_KEY)  # each test registers its own challenger
    champion_url, launcher = Upstream("champion"), RecordingLauncher()
    gateway = Gateway({service: Route(service, {"champion": champion_url.url}) for service in SERVICES},
                      launcher=launcher)
    server = GatewayServer(gateway, admin_token=ADMIN_TOKEN).start()
    replays: list = []
    replayer = Replayer(storage, Settings(model_cache_dir=cache), str(models / "{version}"))

    def replay(state):
        replays.append(state.version)
        return replayer(state)

    traffic = GatewayTraffic(server.url, admin_token=ADMIN_TOKEN, model_uri=str(models / "{version}"))
    controller = CanaryController(storage, POLICY, observer(GatewayMetricsSource(server.url), storage, SERVICES),
                                  traffic, champion_version=lambda: "1", replay=replay)
    try:
        yield {"controller": controller, "gateway": gateway, "launcher": launcher, "replays": replays,
               "positives": positives, "storage": storage}
    finally:
        server.stop()
        champion_url.close()
        launcher.upstream.close()


def patient_facing(storage) -> dict[str, list[tuple[str, str]]]:
    """Every object (key, etag) where results, the worklist, feedback and request records are read."""
    return {
        RESULT_BUCKET: [(o.key, o.etag) for o in storage.iter_objects(RESULT_BUCKET)],
        FEEDBACK_BUCKET: [(o.key, o.etag) for o in storage.iter_objects(FEEDBACK_BUCKET)],
        STATE_BUCKET: [(o.key, o.etag) for o in storage.iter_objects(STATE_BUCKET, "requests/")],
    }


def test_a_good_challenger_passes_its_replay_then_gets_its_revision_and_first_step(stack, models, capsys):
    storage, controller = stack["storage"], stack["controller"]
    before = patient_facing(storage)
    result = controller.start("2")
    assert result["status"] == "started" and result["phase"] == "traffic" and result["weight"] == 10
    assert stack["launcher"].launched == [("v2", str(models / "2"))]  # made only after the replay passed
    assert stack["gateway"].traffic()["predict"] == {"champion": 90, "v2": 10}
    state = load_state(storage)
    report = state.replay
    assert report["verdict"] == "advance" and report["errors"] == 0
    assert report["labelled"] == N_LABELLED and report["positives"] == stack["positives"]
    # The champion re-scored by the replay answers exactly what it answered live (the labels are its answers).
    assert report["labelled_correct"] == {"champion": N_LABELLED, "challenger": N_LABELLED}
    assert report["unlabelled"] == N_IMAGES - N_LABELLED and report["agreement"] == 1.0
    assert report["challenger_sensitivity"] == report["champion_sensitivity"] == 1.0
    assert report["skipped"] == 1  # the garbage upload: neither model can score it
    assert patient_facing(storage) == before  # nothing written where results, worklist or feedback read

    assert controller.start("2")["status"] == "unchanged"  # a redelivered model.registered event
    assert stack["replays"] == ["2"] and len(stack["launcher"].launched) == 1
    assert load_state(storage).replay == report  # the finished replay is not restarted

    assert run_action(_status_args(), storage) == 0
    out = capsys.readouterr().out
    assert "phase traffic, 10 % to the challenger" in out and "replay: advance" in out
    assert "sensitivity challenger 1.000 vs champion 1.000" in out and "agreement 1.000" in out


@pytest.mark.parametrize("version, reasons", [
    ("3", ["sensitivity 0.000 vs the champion's 1.000", "lower", "agreement"]),  # always "normal"
    ("4", ["agreement"]),  # inverted: disagrees with the champion on (nearly) everything
    ("5", ["the challenger could not be loaded: ModelLoadError"]),  # its files do not verify
])
def test_a_bad_challenger_is_rolled_back_by_its_replay_and_never_gets_traffic(stack, models, version, reasons,
                                                                              capsys):
    storage, controller, gateway = stack["storage"], stack["controller"], stack["gateway"]
    before = patient_facing(storage)
    result = controller.start(version)
    assert result["status"] == "started" and result["outcome"] == "rollback" and result["weight"] == 0
    state = load_state(storage)
    assert state.status == "rolled_back" and state.revisions == {} and state.weight == 0
    assert all(h["weight"] == 0 for h in state.history)  # never a percent routed to it
    assert stack["launcher"].launched == []  # no revision was ever made for it
    assert gateway.traffic() == {service: {"champion": 100} for service in SERVICES}
    assert state.replay["verdict"] == "rollback"
    joined = " ".join(state.replay["reasons"])
    assert all(reason in joined for reason in reasons), joined
    assert controller.tick()["status"] == "idle" and stack["launcher"].launched == []
    assert controller.start(version)["status"] == "unchanged" and stack["replays"] == [version]
    assert patient_facing(storage) == before

    assert run_action(_status_args(json_out=True), storage) == 0
    assert '"verdict": "rollback"' in capsys.readouterr().out
    run_action(_status_args(), storage)
    assert "rolled_back (it never received traffic)" in capsys.readouterr().out


def test_a_challenger_that_fails_on_some_inputs_is_rolled_back(seeded, models):
    """(c) of the replay: an error on any input the champion scored. A real model that raises on bright images."""
    storage, _, cache = seeded
    settings = Settings(model_cache_dir=cache)

    class Fragile(TriageModel):
        def predict(self, model_input, **kwargs):
            if float(model_input.mean()) > 0.0:
                raise RuntimeError("onnxruntime: invalid dimension")
            return super().predict(model_input, **kwargs)

    def load(uri: str) -> TriageModel:
        model = (Fragile if uri.endswith("/2") else TriageModel)(replace(settings, model_uri=uri))
        model.load()
        return model

    state, _ = start_canary(None, "2", "1", POLICY, NOW, replay=True)
    report = Replayer(storage, settings, str(models / "{version}"), load=load)(state)
    assert 0 < report.errors < N_IMAGES and report.error_kinds == {"RuntimeError": report.errors}
    assert report.labelled + report.unlabelled + report.errors + report.skipped == N_IMAGES + 1
    decision = decide_replay(state, POLICY, report)
    assert decision.outcome == "rollback" and "raised an error on" in decision.reason


def _status_args(json_out: bool = False) -> Namespace:
    return Namespace(action="status", json=json_out, history=8)
