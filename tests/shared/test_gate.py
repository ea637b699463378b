"""The not-assessable gate (issue 11 item 2) on a tiny model whose card carries a gate fitted on SYNTHETIC phantoms:
it accepts phantoms of the training distribution, refuses noise, flat and colour images, and every answer says
`assessable`; a card without a gate answers assessable for everything."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from shared.config import Settings
from shared.events import PREDICTION_CREATED
from shared.gate import LAYOUT, REASONS, Gate, GateError, features, fit_reference
from shared.imaging import Chroma, decode_image, encode_png
from shared.ingest import ObjectVersion, ingest_event, ingest_object
from shared.model import TriageModel
from shared.modelcard import ModelCard, ModelCardError
from shared.names import RESULT_BUCKET, heatmap_key, result_key
from tests.functions.event_sink import RecordingSink
from tests.functions.tiny_model import build_gated_model_dir, gated_phantoms, png_bytes


@pytest.fixture(scope="module")
def gated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gated_model_dir(tmp_path_factory.mktemp("gated") / "model")


@pytest.fixture(scope="module")
def gated(gated_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TriageModel:
    model = TriageModel(Settings(model_uri=str(gated_dir), model_cache_dir=tmp_path_factory.mktemp("cache"),
                                 deid_secret="gate-test-secret"))
    model.load()
    return model


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _jpeg_rgb(gray: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(gray).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def _colour_photo(seed: int = 0) -> np.ndarray:
    """A colourful uint8 [96, 96, 3] picture: smooth blobs of different hue per channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    channels = [np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05) for cx, cy in rng.uniform(0.2, 0.8, (3, 2))]
    return (np.stack(channels, axis=2) * 255).astype(np.uint8)


def _not_assessable() -> float:
    return REGISTRY.get_sample_value("triage_not_assessable_total") or 0.0


def _predictions() -> float:
    return sum(REGISTRY.get_sample_value("triage_predictions_total", {"label": label}) or 0.0
               for label in ("normal", "pneumonia"))


# --- the reference in the card ---------------------------------------------------------------------------------
def test_the_card_carries_the_gate_fitted_on_train_with_its_threshold_set_on_val(gated_dir: Path) -> None:
    card = ModelCard.load(gated_dir)
    reference = card.gate
    assert reference is not None and reference["n_train"] == 160 and reference["n_val"] == 120
    assert reference["quantile"] == 0.995 and reference["val_accepted"] >= 0.99
    assert set(reference["thresholds"]) == {"model.onnx", "model.int8.onnx"}
    gate = card.load_gate("model.onnx")
    assert gate is not None and gate.threshold == pytest.approx(reference["threshold"])
    assert card.load_gate("model.int8.onnx").threshold == pytest.approx(reference["thresholds"]["model.int8.onnx"])


def test_fit_reference_accepts_the_asked_share_of_val_and_refuses_what_is_far() -> None:
    rng = np.random.default_rng(0)
    train, val = rng.standard_normal((600, 8)), rng.standard_normal((400, 8))
    labels = (rng.random(600) < 0.5).astype(int)
    reference = fit_reference(train, labels, val)
    gate = Gate.from_reference(reference)
    assert gate is not None
    assert 0.99 <= float((gate.distances(val) <= gate.threshold).mean()) <= 1.0
    assert (gate.distances(rng.standard_normal((50, 8)) + 6.0) > gate.threshold).all()


def test_a_card_whose_gate_is_unusable_is_refused_naming_the_field(gated_dir: Path) -> None:
    data = json.loads((gated_dir / "model_card.json").read_text())
    data["gate"]["precision_cholesky"] = "AAAA"
    with pytest.raises(ModelCardError, match="'gate'"):
        ModelCard.from_json(json.dumps(data))
    with pytest.raises(GateError, match="version"):
        Gate.from_reference({**data["gate"], "version": 99})


def test_an_old_card_without_a_gate_loads_and_answers_assessable_for_anything(loaded_tiny_model) -> None:
    card = loaded_tiny_model.loaded_card
    data = json.loads(card.to_json())
    del data["gate"]  # as cards written before the gate existed
    assert ModelCard.from_json(json.dumps(data)).gate is None and loaded_tiny_model.gate is None
    flat = loaded_tiny_model(_png(np.full((28, 28), 128)), "image/png")
    assert flat.assessable is True and flat.to_json()["assessable"] is True and flat.label is not None


# --- the verdicts --------------------------------------------------------------------------------------------------
def test_the_gate_accepts_phantoms_of_the_training_distribution(gated: TriageModel) -> None:
    answers = [gated(_png(image), "image/png") for image in gated_phantoms(40)]
    accepted = [a.assessable for a in answers]
    assert np.mean(accepted) >= 0.9, [a.verdict for a in answers if not a.assessable]
    assert all(a.label in ("normal", "pneumonia") and a.probability is not None for a in answers if a.assessable)


def test_too_small_is_a_source_under_half_the_models_side(gated: TriageModel) -> None:
    from PIL import Image

    film = np.asarray(Image.fromarray(gated_phantoms(1, seed=22)[0].astype(np.uint8)).resize((14, 14)))
    assert gated(_png(film), "image/png").verdict.reason != "too_small"  # half the 28 px input: judged
    assert gated(_png(film[:13]), "image/png").verdict.reason == "too_small"
    assert gated.gate is not None and gated.gate.check_input(0.0, np.zeros((1, 28, 28)), source_side=None).reason \
        != "too_small"  # not told the size: not checked


def test_a_grey_image_stored_as_rgb_jpeg_is_not_taken_for_colour(gated: TriageModel) -> None:
    chroma = Chroma()
    image = gated_phantoms(1, seed=21)[0]
    decode_image(_jpeg_rgb(image), chroma=chroma)
    assert chroma.mean < gated.gate.colour_max
    assert gated(_jpeg_rgb(image), "image/jpeg").verdict.reason != "not_grayscale"


@pytest.mark.parametrize(("name", "pixels", "reasons"), [
    ("uniform noise", np.random.default_rng(1).integers(0, 256, (28, 28)), {"out_of_distribution"}),
    ("noise at 64 px", np.random.default_rng(2).integers(0, 256, (64, 64)), {"out_of_distribution", "flat_image"}),
    ("black", np.zeros((28, 28)), {"flat_image"}),
    ("white", np.full((40, 40), 255), {"flat_image"}),
    ("near-constant", 128 + np.random.default_rng(3).normal(0, 1, (28, 28)), {"flat_image"}),
    ("colour", _colour_photo(), {"not_grayscale"}),
    ("a thumbnail", np.kron(np.eye(2) * 200 + 30, np.ones((6, 6))), {"too_small"}),
    ("one pixel high", np.random.default_rng(4).integers(0, 256, (1, 500)), {"too_small"}),
])
def test_the_gate_refuses_noise_flat_and_colour_images(gated: TriageModel, name, pixels, reasons) -> None:
    answer = gated(_png(np.clip(pixels, 0, 255)), "image/png")
    assert answer.assessable is False, name
    assert answer.verdict.reason in reasons, (name, answer.verdict)


# --- the answers ---------------------------------------------------------------------------------------------------
def test_a_refused_input_answers_assessable_false_with_a_reason_and_no_label(gated: TriageModel) -> None:
    before = _not_assessable(), _predictions()
    answer = gated(_png(np.zeros((28, 28))), "image/png", request_id="r-gate")
    body = answer.to_json()
    assert (body["assessable"], body["label"], body["probability"], body["urgent"]) == (False, None, None, False)
    assert body["reason"] == {"code": "flat_image", "message": REASONS["flat_image"]}
    assert body["threshold"] == pytest.approx(0.5) and body["request_id"] == "r-gate"
    assert {"decode", "preprocess", "inference", "gate", "total"} <= set(body["timings_ms"])
    assert (_not_assessable() - before[0], _predictions() - before[1]) == (1.0, 0.0)
    accepted = gated(_png(gated_phantoms(1, seed=30)[0]), "image/png").to_json()
    assert accepted["assessable"] is True and "reason" not in accepted


@pytest.mark.parametrize("method", ["rollout", "occlusion"])
def test_explain_of_a_refused_input_has_no_heatmap(gated: TriageModel, method: str) -> None:
    seen = []
    explanation = gated(_png(_colour_photo(1)), "image/png", explain=method, on_prediction=seen.append)
    assert explanation.heatmap is None and explanation.overlay_png is None
    body = explanation.to_json()
    assert (body["assessable"], body["heatmap_png"], body["heatmap_size"]) == (False, None, None)
    assert body["reason"]["code"] == "not_grayscale" and body["method"] == method
    assert "explain" not in body["timings_ms"] and seen[0].assessable is False


def test_ingest_writes_the_not_assessable_result_without_a_heatmap_and_publishes_it(storage, gated) -> None:
    key = "ward3/blank.png"
    etag = storage.put_bytes("inference-inputs", key, encode_png(np.zeros((28, 28), np.uint8)))
    sink = RecordingSink()
    outcome = ingest_object(storage, gated, ObjectVersion("inference-inputs", key, etag, None, "2026-11-26T10:00:00Z"),
                            publisher=sink.publisher())
    assert outcome.status == "created" and outcome.to_json()["assessable"] is False
    stored = storage.get_json(RESULT_BUCKET, result_key(key))
    answer = (stored["assessable"], stored["label"], stored["probability"], stored["urgent"])
    assert answer == (False, None, None, False)
    assert stored["reason"]["code"] == "flat_image"
    assert stored["heatmap"] == {"status": "none", "reason": "not_assessable"}
    assert not storage.exists(RESULT_BUCKET, heatmap_key(key))
    [event] = sink.events
    assert event["type"] == PREDICTION_CREATED and event.get_data()["assessable"] is False
    # A redelivered event finds the committed result: nothing is redone.
    again = ingest_object(storage, gated, ObjectVersion("inference-inputs", key, etag, None, "2026-11-26T10:00:00Z"))
    assert again.status == "duplicate"


def test_ingest_of_a_chest_image_still_gets_a_label_and_a_heatmap(storage, gated) -> None:
    key = "ward3/chest.png"
    etag = storage.put_bytes("inference-inputs", key, _png(gated_phantoms(3, seed=31)[0]))
    outcome = ingest_object(storage, gated, ObjectVersion("inference-inputs", key, etag, None, "2026-11-26T10:00:00Z"))
    assert ingest_event(storage, gated, outcome.event).status == "completed"  # the heatmap step
    stored = storage.get_json(RESULT_BUCKET, result_key(key))
    assert outcome.status == "created" and stored["assessable"] is True and stored["label"] in ("normal", "pneumonia")
    assert stored["heatmap"]["status"] == "ready" and storage.exists(RESULT_BUCKET, heatmap_key(key))


def test_the_tiny_models_png_of_the_serving_tests_stays_assessable_without_a_gate(loaded_tiny_model) -> None:
    assert loaded_tiny_model(png_bytes(), "image/png").to_json()["assessable"] is True


@pytest.mark.parametrize("seed", [0, 1])
def test_every_form_of_one_radiograph_gets_the_same_verdict(gated: TriageModel, tmp_path: Path, seed: int) -> None:
    """PNG at 28 / 224 / 1536 px, 16-bit PNG, JPEG and the DICOM variants (issue 11 item 3) all pass the gate alike."""
    from tests.shared.test_format_invariance import SIZE, forms
    from training_jobs.phantom import make_phantom

    image = make_phantom(np.random.default_rng(seed), SIZE, bool(seed)).astype(np.float64)
    made = forms(image, tmp_path)
    verdicts = {name: gated(data, content_type).verdict for name, (data, content_type) in made.items()}
    assert len(verdicts) >= 10 and all(v.assessable for v in verdicts.values()), verdicts
    distances = [v.distance for v in verdicts.values()]
    assert max(distances) - min(distances) < 0.2 * gated.gate.threshold


@pytest.mark.parametrize("side", [28, 37, 64])
def test_the_gate_features_are_the_statistics_they_name(side: int) -> None:
    rng = np.random.default_rng(side)
    images = rng.random((3, side, side))  # in [0, 1]
    images[1] = np.linspace(0, 1, side)[None, :] * 0.8  # a gradient: no symmetry
    images[2] = (images[2] + images[2][:, ::-1]) / 2  # symmetric
    embeddings = rng.random((3, 5))
    got = features(embeddings, (images[:, None] - 0.5) / 0.5)
    edges = np.linspace(0, side, LAYOUT + 1).round().astype(int)
    cells = LAYOUT * LAYOUT
    for n, image in enumerate(images):
        blocks = np.array([[image[edges[i]:edges[i + 1], edges[j]:edges[j + 1]].mean() for j in range(LAYOUT)]
                           for i in range(LAYOUT)])
        upsampled = np.repeat(np.repeat(blocks, np.diff(edges), axis=0), np.diff(edges), axis=1)
        centred = image - image.mean()
        layout = blocks.ravel() - blocks.mean()
        np.testing.assert_allclose(got[n, :5], embeddings[n])
        np.testing.assert_allclose(got[n, 5:5 + cells], layout / (layout.std() + 0.02), atol=1e-9)
        level, spread, detail, symmetry = got[n, 5 + cells:]
        assert level == pytest.approx(image.mean()) and spread == pytest.approx(image.std())
        assert detail == pytest.approx((image - upsampled).std() / (image.std() + 0.02))
        assert symmetry == pytest.approx((centred * centred[:, ::-1]).sum() / (centred**2).sum(), abs=1e-9)
    assert got[2, -1] == pytest.approx(1.0) and got[1, -1] < 0  # the mirror image of a ramp runs the other way
