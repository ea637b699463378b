"""The serving model without HTTP: loading, the one inference order (predict, explain), its step metrics."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from shared import imaging
from shared.config import Settings
from shared.errors import InvalidField
from shared.model import TriageModel, get_model
from shared.model_store import ModelLoadError
from shared.modelcard import calibrated_probability
from tests.functions.tiny_model import build_tiny_model_dir, dicom_bytes, jpeg_bytes, png_bytes

PREDICTION_KEYS = {"request_id", "assessable", "label", "probability", "threshold", "urgent", "model", "timings_ms"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def loaded(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TriageModel:
    model = TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path_factory.mktemp("cache")))
    model.load()
    return model


def _copy_with_card(model_dir: Path, target: Path, **changes: object) -> Path:
    shutil.copytree(model_dir, target)
    card = json.loads((target / "model_card.json").read_text())
    card.update(changes)
    (target / "model_card.json").write_text(json.dumps(card))
    return target


def test_ready_only_after_load(model_dir: Path, tmp_path: Path) -> None:
    model = TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path))
    assert model.ready is False
    model.load()
    assert model.ready is True
    assert model.load_seconds is not None and model.load_seconds > 0


def test_prediction_matches_a_bare_onnx_call_and_has_the_design_schema(loaded: TriageModel, model_dir: Path) -> None:
    data = png_bytes()
    prediction = loaded(data, "image/png")
    body = prediction.to_json()
    assert set(body) == PREDICTION_KEYS  # no `reason`: the tiny model's card has no gate, every answer is assessable
    assert body["assessable"] is True
    assert body["label"] in ("normal", "pneumonia")
    assert body["model"] == {"name": "xray-vit", "version": None}
    assert set(body["timings_ms"]) == {"decode", "preprocess", "inference", "gate", "total"}
    assert len(body["request_id"]) == 32
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    model_input = imaging.to_model_input(imaging.decode_image(data), 28)[np.newaxis]
    logits = session.run(["logits"], {"image": model_input})[0]
    assert body["probability"] == pytest.approx(float(calibrated_probability(logits, 1.0)[0]), abs=1e-5)
    assert body["label"] == ("pneumonia" if body["probability"] >= 0.5 else "normal")


def test_each_image_format_gives_a_prediction(loaded: TriageModel) -> None:
    for data, content_type in (
        (png_bytes(), "image/png"),
        (png_bytes(bits=16), "image/png"),
        (jpeg_bytes(), "image/jpeg"),
        (dicom_bytes(), "application/dicom"),
    ):
        prediction = loaded(data, content_type, request_id="abc-1")
        assert prediction.request_id == "abc-1"
        assert 0.0 <= prediction.probability <= 1.0


@pytest.mark.parametrize(("threshold", "label"), [(0.0, "pneumonia"), (1.0, "normal")])
def test_the_cards_threshold_decides_the_label(model_dir: Path, tmp_path: Path, threshold: float, label: str) -> None:
    changed = _copy_with_card(model_dir, tmp_path / "model", threshold=threshold)
    model = TriageModel(Settings(model_uri=str(changed), model_cache_dir=tmp_path / "cache"))
    model.load()
    prediction = model(png_bytes(), "image/png")
    assert (prediction.label, prediction.threshold) == (label, threshold)
    assert prediction.urgent is (prediction.probability >= 0.9)


def test_get_model_returns_one_model_per_process(model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(model_uri=str(model_dir), model_cache_dir=tmp_path)
    assert get_model(settings) is get_model(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path))


def test_the_optimized_graph_is_made_once_verified_and_answers_as_the_source(model_dir: Path, tmp_path: Path) -> None:
    """Cold start: later processes open the cached, already optimized graph (`_optimized_graph`), same outputs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(3).random((4, 1, 28, 28), dtype=np.float32)
    names = [output.name for output in source.get_outputs()]
    expected = source.run(names, {source.get_inputs()[0].name: batch})
    for attempt in range(2):  # the first load makes the file, the second opens it
        model = TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path))
        model.load()
        made = sorted((tmp_path / "optimized").glob("*.onnx"))
        assert len(made) == 1, attempt
        for got, want in zip(model.run_outputs(batch, tuple(names)), expected, strict=True):
            np.testing.assert_array_equal(got, want)
    # named by the source's sha256, ONNX Runtime's version and its own sha256 (checked before every use)
    card = json.loads((model_dir / "model_card.json").read_text())
    assert made[0].name.startswith(f"{card['sha256']['model.onnx'][:32]}-onnxruntime-{ort.__version__}-")
    good = made[0].read_bytes()
    made[0].write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # a corrupt cached graph is made again, never opened
    TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path)).load()
    remade = sorted((tmp_path / "optimized").glob("*.onnx"))
    assert len(remade) == 1 and remade[0].read_bytes() == good


def test_a_cache_that_cannot_be_written_still_serves_the_source(model_dir: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")  # every mkdir below it fails
    model = TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=blocked))
    model.load()
    assert model.ready and model(png_bytes(), "image/png").label in ("normal", "pneumonia")


def test_ensure_loaded_reports_a_failed_load(tmp_path: Path) -> None:
    model = TriageModel(Settings(model_uri=str(tmp_path / "missing"), model_cache_dir=tmp_path))
    with pytest.raises(ModelLoadError) as error:
        model.ensure_loaded(timeout_s=30)
    assert error.value.status == 503


@pytest.mark.parametrize("method", ["rollout", "occlusion"])
def test_explain_gives_a_heatmap_png_of_the_inputs_size(loaded: TriageModel, method: str) -> None:
    data = png_bytes(40, width=56)  # not the model's size: the map must follow the input
    explanation = loaded(data, "image/png", explain=method)
    assert explanation.heatmap.shape == (40, 56)
    assert explanation.heatmap.min() >= 0.0 and explanation.heatmap.max() <= 1.0
    assert Image.open(io.BytesIO(explanation.overlay_png)).size == (56, 40)
    body = explanation.to_json()
    assert body["method"] == method and body["heatmap_size"] == [40, 56]
    assert set(body) >= PREDICTION_KEYS
    assert "explain" in body["timings_ms"]


def test_both_maps_can_be_scored_for_faithfulness(loaded: TriageModel) -> None:
    from shared.explain import faithfulness_against_random

    model_input = loaded.preprocess(loaded.decode(png_bytes()))
    rollout = loaded.saliency_map(model_input, "rollout")
    occlusion = loaded.saliency_map(model_input, "occlusion")
    assert rollout.shape == (4, 4) and occlusion.shape == (28, 28)
    for saliency in (rollout, occlusion):
        report = faithfulness_against_random(loaded.probabilities, model_input, saliency, steps=8, random_maps=1)
        assert all(0.0 <= value <= 1.0 for value in report.values())


def test_explain_refuses_an_unknown_method(loaded: TriageModel) -> None:
    with pytest.raises(InvalidField, match="method"):
        loaded(png_bytes(), explain="gradcam")


def step_count(step: str) -> float:
    return REGISTRY.get_sample_value("triage_step_seconds_count", {"step": step}) or 0.0


def test_each_step_is_timed_into_the_step_histogram(loaded: TriageModel) -> None:
    steps = ("decode", "preprocess", "predict", "gate", "explain", "postprocess")
    before = {step: step_count(step) for step in steps}
    loaded(png_bytes(), "image/png")
    loaded(png_bytes(), "image/png", explain="rollout")
    assert {step: step_count(step) - before[step] for step in steps} == {
        "decode": 2, "preprocess": 2, "predict": 2, "gate": 2, "explain": 1, "postprocess": 2,
    }  # fmt: skip


def test_the_prediction_carries_the_input_drift_statistic(loaded: TriageModel) -> None:
    prediction = loaded(png_bytes(), "image/png")
    assert prediction.mean_intensity == pytest.approx(float(imaging.decode_image(png_bytes()).mean()), abs=1e-3)
    assert "mean_intensity" not in prediction.to_json()


# --- working size and burned-in annotations (issue 8) -------------------------------------------------------------
def _burned_in_dicom(size: int = 28) -> bytes:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(size)))
    ds.BurnedInAnnotation = "YES"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_7000_pixel_image_reaches_the_model_steps_at_the_working_size(loaded: TriageModel) -> None:
    from load_tests.memory import large_image
    from shared.imaging import WORKING_SIDE

    data, content_type = large_image("png")
    assert len(data) < 200_000  # compresses well: the hostile case
    image = loaded.decode(data, content_type)
    assert max(image.shape) <= WORKING_SIDE and image.dtype == np.float32
    explanation = loaded(data, content_type, explain="occlusion")
    assert max(explanation.heatmap.shape) <= WORKING_SIDE  # the overlay's display size is bounded too


def test_a_burned_in_image_is_refused_by_default(loaded: TriageModel) -> None:
    from shared.dicom import BurnedInAnnotation

    with pytest.raises(BurnedInAnnotation) as caught:
        loaded(_burned_in_dicom(), "application/dicom", explain="occlusion")
    assert caught.value.status == 400 and "(0028,0301)" in caught.value.message


def test_a_burned_in_image_is_marked_and_its_pixels_stay_out_of_the_heatmap(model_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    model = TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path, burned_in_annotation="mark"))
    explanation = model(_burned_in_dicom(), "application/dicom", explain="occlusion")
    assert explanation.prediction.to_json()["burned_in_annotation"] is True
    overlay = np.asarray(Image.open(io.BytesIO(explanation.overlay_png)).convert("RGB"), np.float32)
    heat_only = np.asarray(Image.open(io.BytesIO(saliency_overlay(explanation.heatmap))).convert("RGB"), np.float32)
    np.testing.assert_array_equal(overlay, heat_only)  # the map on black: not one pixel of the image
    assert "burned_in_annotation" not in model(dicom_bytes(), "application/dicom").to_json()


def saliency_overlay(heatmap: np.ndarray) -> bytes:
    from shared.explain import overlay_png

    return overlay_png(np.zeros_like(heatmap), heatmap)


def test_occlusion_runs_its_occluded_copies_as_one_onnx_batch_equal_to_the_unbatched_map(
    loaded: TriageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.explain import occlusion_map

    model_input = loaded.preprocess(loaded.decode(png_bytes(seed=5)))
    unbatched = occlusion_map(loaded.probabilities, model_input, patch=7, batch_size=1)
    runs: list[int] = []
    real_run = loaded.run_outputs

    def counted(batch: np.ndarray, names: tuple[str, ...]):
        runs.append(len(batch))
        return real_run(batch, names)

    monkeypatch.setattr(loaded, "run_outputs", counted)
    explanation = loaded(png_bytes(seed=5), "image/png", explain="occlusion")

    assert runs == [1, 64]  # the prediction, then all 8 x 8 occluded copies in one run (its reference reused)
    raw = loaded.saliency_map(model_input, "occlusion")
    np.testing.assert_allclose(raw, unbatched, rtol=0, atol=1e-5)
    assert explanation.heatmap.shape == (28, 28)


def test_the_prediction_is_handed_over_before_the_heatmap_is_computed(
    loaded: TriageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    real_explain = loaded.explain

    def explain_step(*args: object, **kwargs: object):
        order.append("explain")
        return real_explain(*args, **kwargs)

    monkeypatch.setattr(loaded, "explain", explain_step)
    seen = []
    explanation = loaded(png_bytes(), "image/png", explain="occlusion", request_id="r-1",
                         on_prediction=lambda p: (order.append("prediction"), seen.append(p)))
    assert order == ["prediction", "explain"]
    assert seen[0].label == explanation.prediction.label and seen[0].request_id == "r-1"
    assert "explain" not in seen[0].timings_ms and "explain" in explanation.prediction.timings_ms
    timings = explanation.prediction.timings_ms
    assert timings["total"] == pytest.approx(sum(v for k, v in timings.items() if k != "total"))
