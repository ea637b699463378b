"""Registry against a real local MLflow sqlite store: register -> challenger, promote -> champion; the announcement."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from shared.errors import UserError
from shared.events import MODEL_REGISTERED, EventPublisher, event_from_http
from shared.modelcard import ModelCard
from training_jobs import registry

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from training_jobs.export import export_model_dir
    from training_jobs.vit import ViT, ViTConfig

    out = tmp_path_factory.mktemp("model")
    export_model_dir(ViT(ViTConfig(image_size=28, patch=7, dim=32, depth=2, heads=2)), out, threshold=0.3)
    return out


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mc = registry.client(uri)
    experiment = mc.create_experiment("test", artifact_location=(tmp_path / "artifacts").as_uri())
    return mc, experiment


def new_run(store) -> str:
    mc, experiment = store
    run_id = mc.create_run(experiment).info.run_id
    mc.set_terminated(run_id)
    return run_id


def test_register_sets_challenger_and_logs_the_three_files(store, model_dir, tmp_path):
    mc, _ = store
    version = registry.register_model_dir(model_dir, new_run(store), mlflow_client=mc)
    assert version == "1"
    assert str(mc.get_model_version_by_alias("xray-vit", "challenger").version) == "1"
    fetched = registry.download("models:/xray-vit@challenger", tmp_path / "dl", mlflow_client=mc)
    assert sorted(p.name for p in fetched.iterdir()) == ["model.int8.onnx", "model.onnx", "model_card.json"]
    assert ModelCard.load(fetched).version == "1"  # the registered card carries its version
    registry.validate_model_dir(fetched)  # files arrive intact


def test_promote_moves_champion(store, model_dir, capsys):
    mc, _ = store
    first = registry.register_model_dir(model_dir, new_run(store), mlflow_client=mc)
    second = registry.register_model_dir(model_dir, new_run(store), mlflow_client=mc)
    assert str(mc.get_model_version_by_alias("xray-vit", "challenger").version) == second
    assert registry.promote(first, mlflow_client=mc) is None
    assert registry.promote(second, mlflow_client=mc) == first
    assert registry.resolve("models:/xray-vit@champion", mlflow_client=mc)[0] == second

    from triage.cli import main

    assert main(["promote", first, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["previous"] == second
    assert str(mc.get_model_version_by_alias("xray-vit", "champion").version) == first
    assert main(["promote", "99"]) == 2
    assert "no version '99'" in capsys.readouterr().err


def test_incomplete_or_altered_dir_registers_nothing(store, model_dir, tmp_path):
    import shutil

    mc, _ = store
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.int8.onnx").write_bytes(b"tampered")
    with pytest.raises(UserError, match=r"model.int8.onnx: sha256 differs"):
        registry.register_model_dir(broken, new_run(store), mlflow_client=mc)
    (broken / "model.int8.onnx").unlink()
    with pytest.raises(UserError, match=r"model.int8.onnx: missing"):
        registry.register_model_dir(broken, new_run(store), mlflow_client=mc)
    assert mc.search_model_versions("name='xray-vit'") == []


def test_emit_model_registered_publishes_the_canary_trigger():
    received = []
    publisher = EventPublisher(
        "http://broker.local/",
        transport=httpx.MockTransport(
            lambda r: (received.append(event_from_http(dict(r.headers), r.content)), httpx.Response(202))[1]
        ),
    )
    registry.emit_model_registered(7, "run-abc", publisher, batch_id="b1")
    [event] = received
    assert event["type"] == MODEL_REGISTERED and event["source"] == "triage/retrain"
    assert event.get_data() == {"name": "xray-vit", "version": "7", "run_id": "run-abc", "batch_id": "b1"}
