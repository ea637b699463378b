"""The serving runtime without HTTP: model resolution (dir, file, s3://, models:/), sha256 check, predict, explain."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from shared import imaging, runtime
from shared.config import Settings
from shared.modelcard import calibrated_probability
from tests.functions.tiny_model import build_tiny_model_dir, dicom_bytes, jpeg_bytes, png_bytes

PREDICTION_KEYS = {"request_id", "label", "probability", "threshold", "urgent", "model", "timings_ms"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("runtime") / "model")


@pytest.fixture(scope="module")
def loaded(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> runtime.TriageModel:
    model = runtime.TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path_factory.mktemp("cache")))
    model.load()
    return model


def _copy_with_card(model_dir: Path, target: Path, **changes: object) -> Path:
    shutil.copytree(model_dir, target)
    card = json.loads((target / "model_card.json").read_text())
    card.update(changes)
    (target / "model_card.json").write_text(json.dumps(card))
    return target


def test_ready_only_after_load(model_dir: Path, tmp_path: Path) -> None:
    model = runtime.TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path))
    assert model.ready is False
    model.load()
    assert model.ready is True
    assert model.load_seconds is not None and model.load_seconds > 0


def test_prediction_matches_a_bare_onnx_call_and_has_the_design_schema(
    loaded: runtime.TriageModel, model_dir: Path
) -> None:
    data = png_bytes()
    prediction = loaded.predict(loaded.preprocess(data, "image/png"))
    body = prediction.to_json()
    assert set(body) == PREDICTION_KEYS
    assert body["label"] in ("normal", "pneumonia")
    assert body["model"] == {"name": "xray-vit", "version": None}
    assert set(body["timings_ms"]) == {"decode", "preprocess", "inference", "total"}
    assert len(body["request_id"]) == 32
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    model_input = imaging.to_model_input(imaging.decode_image(data), 28)[np.newaxis]
    logits = session.run(["logits"], {"image": model_input})[0]
    assert body["probability"] == pytest.approx(float(calibrated_probability(logits, 1.0)[0]), abs=1e-5)
    assert body["label"] == ("pneumonia" if body["probability"] >= 0.5 else "normal")


def test_each_image_format_gives_a_prediction(loaded: runtime.TriageModel) -> None:
    for data, content_type in (
        (png_bytes(), "image/png"),
        (png_bytes(bits=16), "image/png"),
        (jpeg_bytes(), "image/jpeg"),
        (dicom_bytes(), "application/dicom"),
    ):
        prediction = loaded.triage(data, content_type, request_id="abc-1")
        assert prediction.request_id == "abc-1"
        assert 0.0 <= prediction.probability <= 1.0


@pytest.mark.parametrize(("threshold", "label"), [(0.0, "pneumonia"), (1.0, "normal")])
def test_the_cards_threshold_decides_the_label(model_dir: Path, tmp_path: Path, threshold: float, label: str) -> None:
    changed = _copy_with_card(model_dir, tmp_path / "model", threshold=threshold)
    model = runtime.TriageModel(Settings(model_uri=str(changed), model_cache_dir=tmp_path / "cache"))
    model.load()
    prediction = model.triage(png_bytes(), "image/png")
    assert (prediction.label, prediction.threshold) == (label, threshold)
    assert prediction.urgent is (prediction.probability >= 0.9)


def test_a_tampered_model_file_is_refused(model_dir: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "model"
    shutil.copytree(model_dir, tampered)
    with (tampered / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    model = runtime.TriageModel(Settings(model_uri=str(tampered), model_cache_dir=tmp_path / "cache"))
    with pytest.raises(runtime.ModelLoadError, match="sha256"):
        model.load()
    assert model.ready is False


@pytest.mark.parametrize("uri", [None, "/nonexistent/model", "models:/xray-vit"])
def test_a_bad_model_uri_names_the_problem(uri: str | None, tmp_path: Path) -> None:
    model = runtime.TriageModel(Settings(model_uri=uri, model_cache_dir=tmp_path))
    with pytest.raises(runtime.ModelLoadError, match="MODEL_URI"):
        model.load()


def test_an_onnx_file_path_and_the_int8_variant_load(model_dir: Path, tmp_path: Path) -> None:
    by_file = runtime.TriageModel(Settings(model_uri=str(model_dir / "model.int8.onnx"), model_cache_dir=tmp_path))
    by_file.load()
    by_variant = runtime.TriageModel(
        Settings(model_uri=str(model_dir), model_variant="model.int8.onnx", model_cache_dir=tmp_path)
    )
    by_variant.load()
    data = png_bytes()
    assert by_file.triage(data).probability == pytest.approx(by_variant.triage(data).probability)


def test_get_model_returns_one_model_per_process(model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(model_uri=str(model_dir), model_cache_dir=tmp_path)
    assert runtime.get_model(settings) is runtime.get_model(
        Settings(model_uri=str(model_dir), model_cache_dir=tmp_path)
    )


def test_ensure_loaded_reports_a_failed_load(tmp_path: Path) -> None:
    model = runtime.TriageModel(Settings(model_uri=str(tmp_path / "missing"), model_cache_dir=tmp_path))
    with pytest.raises(runtime.ModelLoadError) as error:
        model.ensure_loaded(timeout_s=30)
    assert error.value.status == 503


@pytest.mark.parametrize("method", ["rollout", "occlusion"])
def test_explain_gives_a_heatmap_png_of_the_inputs_size(loaded: runtime.TriageModel, method: str) -> None:
    data = png_bytes(40, width=56)  # not the model's size: the map must follow the input
    explanation = loaded.explain(loaded.preprocess(data, "image/png"), method)
    assert explanation.heatmap.shape == (40, 56)
    assert explanation.heatmap.min() >= 0.0 and explanation.heatmap.max() <= 1.0
    assert Image.open(io.BytesIO(explanation.overlay_png)).size == (56, 40)
    body = explanation.to_json()
    assert body["method"] == method and body["heatmap_size"] == [40, 56]
    assert set(body) >= PREDICTION_KEYS
    assert "explain" in body["timings_ms"]


def test_both_maps_can_be_scored_for_faithfulness(loaded: runtime.TriageModel) -> None:
    from shared.explain import faithfulness_against_random

    model_input = loaded.preprocess(png_bytes()).model_input
    rollout = loaded.saliency_map(model_input, "rollout")
    occlusion = loaded.saliency_map(model_input, "occlusion")
    assert rollout.shape == (4, 4) and occlusion.shape == (28, 28)
    for saliency in (rollout, occlusion):
        report = faithfulness_against_random(loaded.probabilities, model_input, saliency, steps=8, random_maps=1)
        assert all(0.0 <= value <= 1.0 for value in report.values())


def test_explain_refuses_an_unknown_method(loaded: runtime.TriageModel) -> None:
    with pytest.raises(runtime.InvalidField, match="method"):
        loaded.explain(loaded.preprocess(png_bytes()), "gradcam")


def test_clean_upload_strips_dicom_identifiers() -> None:
    upload = runtime.clean_upload(dicom_bytes(patient_name="DOE^JANE"), "application/dicom", max_pixels=10_000)
    assert upload.deidentified and upload.format == "dicom"
    assert b"DOE^JANE" not in upload.data and b"PID-12345" not in upload.data
    assert upload.image.shape == (28, 28)
    png = runtime.clean_upload(png_bytes(), "image/png", max_pixels=10_000)
    assert not png.deidentified and png.to_json()["shape"] == [28, 28]


def test_s3_model_uri_downloads_once_into_the_cache(model_dir: Path, tmp_path: Path, s3_server: str) -> None:
    from shared.storage import Storage

    settings = Settings(s3_endpoint_url=s3_server, model_uri="s3://models/xray/v1/", model_cache_dir=tmp_path)
    storage = Storage.from_settings(settings)
    storage.client.create_bucket(Bucket="models")
    for name in ("model.onnx", "model_card.json"):
        storage.put_bytes("models", f"xray/v1/{name}", (model_dir / name).read_bytes())
    model = runtime.TriageModel(settings)
    model.load()
    assert 0.0 <= model.triage(png_bytes()).probability <= 1.0
    storage.delete("models", "xray/v1/model.onnx")  # a second process finds the verified copy in the cache
    again = runtime.TriageModel(settings)
    again.load()
    assert again.ready


def test_s3_model_with_a_wrong_checksum_is_refused(model_dir: Path, tmp_path: Path, s3_server: str) -> None:
    from shared.storage import Storage

    settings = Settings(s3_endpoint_url=s3_server, model_uri="s3://bad-models/m", model_cache_dir=tmp_path)
    storage = Storage.from_settings(settings)
    storage.client.create_bucket(Bucket="bad-models")
    storage.put_bytes("bad-models", "m/model.onnx", (model_dir / "model.onnx").read_bytes() + b"\0")
    storage.put_bytes("bad-models", "m/model_card.json", (model_dir / "model_card.json").read_bytes())
    with pytest.raises(runtime.ModelLoadError, match="sha256"):
        runtime.TriageModel(settings).load()
    assert not any((tmp_path / "s3").glob("*/model.onnx"))  # nothing unverified is left in the cache


def test_registry_alias_resolves_through_a_real_mlflow_store(model_dir: Path, tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.create_experiment("serving-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("xray-vit")
    mlflow.set_registry_uri(tracking_uri)
    version = client.create_model_version("xray-vit", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("xray-vit", "champion", version.version)

    settings = Settings(
        model_uri="models:/xray-vit@champion", mlflow_tracking_uri=tracking_uri, model_cache_dir=tmp_path / "cache"
    )
    model = runtime.TriageModel(settings)
    model.load()
    assert model.version == str(version.version)
    assert model.triage(png_bytes()).model == {"name": "xray-vit", "version": str(version.version)}
    with pytest.raises(runtime.ModelLoadError, match="MLflow"):
        runtime.TriageModel(
            Settings(model_uri="models:/xray-vit@nope", mlflow_tracking_uri=tracking_uri, model_cache_dir=tmp_path)
        ).load()
