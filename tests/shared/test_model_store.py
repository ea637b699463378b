"""The model store: MODEL_URI resolution (dir, file, s3://, models:/), the cache and the sha256 check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shared.config import Settings
from shared.model import TriageModel
from shared.model_store import ModelLoadError, resolve_model, sha256_file
from tests.functions.tiny_model import build_tiny_model_dir, png_bytes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("store") / "model")


def test_a_model_directory_resolves_to_verified_files(model_dir: Path, tmp_path: Path) -> None:
    resolved = resolve_model(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path))
    assert resolved.onnx_path == model_dir / "model.onnx" and resolved.version is None
    assert resolved.card.sha256["model.onnx"] == sha256_file(resolved.onnx_path)


def test_a_tampered_model_file_is_refused(model_dir: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "model"
    shutil.copytree(model_dir, tampered)
    with (tampered / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    model = TriageModel(Settings(model_uri=str(tampered), model_cache_dir=tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="sha256"):
        model.load()
    assert model.ready is False


@pytest.mark.parametrize("uri", [None, "/nonexistent/model", "models:/xray-vit"])
def test_a_bad_model_uri_names_the_problem(uri: str | None, tmp_path: Path) -> None:
    model = TriageModel(Settings(model_uri=uri, model_cache_dir=tmp_path))
    with pytest.raises(ModelLoadError, match="MODEL_URI"):
        model.load()


def test_an_onnx_file_path_and_the_int8_variant_load(model_dir: Path, tmp_path: Path) -> None:
    by_file = TriageModel(Settings(model_uri=str(model_dir / "model.int8.onnx"), model_cache_dir=tmp_path))
    by_file.load()
    by_variant = TriageModel(
        Settings(model_uri=str(model_dir), model_variant="model.int8.onnx", model_cache_dir=tmp_path)
    )
    by_variant.load()
    data = png_bytes()
    assert by_file(data).probability == pytest.approx(by_variant(data).probability)


def test_s3_model_uri_downloads_once_into_the_cache(model_dir: Path, tmp_path: Path, s3_server: str) -> None:
    from shared.storage import Storage

    settings = Settings(s3_endpoint_url=s3_server, model_uri="s3://models/xray/v1/", model_cache_dir=tmp_path)
    storage = Storage.from_settings(settings)
    storage.client.create_bucket(Bucket="models")
    for name in ("model.onnx", "model_card.json"):
        storage.put_bytes("models", f"xray/v1/{name}", (model_dir / name).read_bytes())
    model = TriageModel(settings)
    model.load()
    assert 0.0 <= model(png_bytes()).probability <= 1.0
    storage.delete("models", "xray/v1/model.onnx")  # a second process finds the verified copy in the cache
    again = TriageModel(settings)
    again.load()
    assert again.ready


def test_s3_model_with_a_wrong_checksum_is_refused(model_dir: Path, tmp_path: Path, s3_server: str) -> None:
    from shared.storage import Storage

    settings = Settings(s3_endpoint_url=s3_server, model_uri="s3://bad-models/m", model_cache_dir=tmp_path)
    storage = Storage.from_settings(settings)
    storage.client.create_bucket(Bucket="bad-models")
    storage.put_bytes("bad-models", "m/model.onnx", (model_dir / "model.onnx").read_bytes() + b"\0")
    storage.put_bytes("bad-models", "m/model_card.json", (model_dir / "model_card.json").read_bytes())
    with pytest.raises(ModelLoadError, match="sha256"):
        TriageModel(settings).load()
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
    model = TriageModel(settings)
    model.load()
    assert model.version == str(version.version)
    assert model(png_bytes()).model == {"name": "xray-vit", "version": str(version.version)}
    with pytest.raises(ModelLoadError, match="MLflow"):
        TriageModel(
            Settings(model_uri="models:/xray-vit@nope", mlflow_tracking_uri=tracking_uri, model_cache_dir=tmp_path)
        ).load()
