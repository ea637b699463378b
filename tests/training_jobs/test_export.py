"""Export: a real ONNX graph that matches torch at several batch sizes, an int8 variant, a valid card."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.modelcard import ModelCard, calibrated_probability
from training_jobs import export
from training_jobs.export import ExportError, check_parity, export_model_dir, onnx_session, sha256_file
from training_jobs.vit import ViT, ViTConfig, save_checkpoint

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model() -> ViT:
    torch.manual_seed(0)
    return ViT(ViTConfig(image_size=28, patch=7, dim=32, depth=2, heads=2)).eval()


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 2, 40)
    card = export_model_dir(tiny_model, out, temperature=1.3, threshold=0.4, calibration_x=x, calibration_y=y,
                            data_hash="abc", synthetic_data=True)
    return out, card


def test_model_dir_is_complete_and_valid(model_dir):
    out, card = model_dir
    assert sorted(p.name for p in out.iterdir()) == ["model.int8.onnx", "model.onnx", "model_card.json"]
    assert ModelCard.load(out) == card
    assert card.sha256 == {name: sha256_file(out / name) for name in ("model.onnx", "model.int8.onnx")}
    assert card.grid == 4 and card.input["image_size"] == 28 and card.temperature == 1.3 and card.threshold == 0.4
    assert card.synthetic_data and card.data_hash == "abc" and card.config["depth"] == 2


@pytest.mark.parametrize("batch", [1, 3, 32, 64])
@pytest.mark.parametrize("variant", ["model.onnx", "model.int8.onnx"])
def test_graph_runs_at_any_batch_size(model_dir, tiny_model, batch, variant):
    out, _ = model_dir
    x = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    logits, attention = onnx_session(out / variant).run(["logits", "attention"], {"image": x})
    assert logits.shape == (batch, 2) and attention.shape == (batch, 2, 17, 17)
    with torch.no_grad():
        want_logits, want_attention = tiny_model.forward_with_attention(torch.from_numpy(x))
    tolerance = 1e-4 if variant == "model.onnx" else 0.1  # int8 is close, not equal
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=tolerance)
    if variant == "model.onnx":
        np.testing.assert_allclose(attention, want_attention.numpy(), atol=1e-5)


def test_card_reports_parity_and_int8_change(model_dir):
    _, card = model_dir
    parity = card.metrics["parity"]
    assert set(parity) == {f"max_abs_{output}_b{n}" for output in ("diff", "embedding_diff") for n in (1, 3, 32, 64)}
    assert max(parity.values()) <= 1e-4
    assert {"accuracy_fp32", "accuracy_int8", "accuracy_change", "max_abs_probability_change"} <= set(card.int8)
    assert card.int8["accuracy_change"] == pytest.approx(card.int8["accuracy_int8"] - card.int8["accuracy_fp32"])


def test_parity_failure_raises(model_dir, tiny_model):
    out, _ = model_dir
    changed = ViT(tiny_model.config).eval()  # different random weights than the exported graph
    changed.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        changed.head.bias += 0.01
    with pytest.raises(ExportError, match=r"parity failed at batch size 1"):
        check_parity(changed, out / "model.onnx", np.zeros((4, 1, 28, 28), np.float32))


def test_failed_export_leaves_no_files(tmp_path, tiny_model, monkeypatch):
    def broken(*args, **kwargs):
        raise ExportError("simulated parity failure")

    monkeypatch.setattr(export, "check_parity", broken)
    with pytest.raises(ExportError):
        export_model_dir(tiny_model, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_exports_a_checkpoint(tmp_path, tiny_model, capsys):
    import json

    from triage.cli import main

    ckpt = save_checkpoint(tiny_model, tmp_path / "ckpt.pt", temperature=2.0, threshold=0.25)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m"), "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last["sha256"]) == {"model.onnx", "model.int8.onnx"}
    card = ModelCard.load(tmp_path / "m")
    assert card.temperature == 2.0 and card.threshold == 0.25
    session = onnx_session(tmp_path / "m" / "model.onnx")
    logits = session.run(["logits"], {"image": np.zeros((1, 1, 28, 28), np.float32)})[0]
    assert 0.0 <= calibrated_probability(logits, card.temperature)[0] <= 1.0


def test_cli_rejects_a_missing_checkpoint(tmp_path, capsys):
    from triage.cli import main

    assert main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_dynamo_exporter_also_keeps_the_batch_axis(tmp_path, tiny_model):
    path = export.export_onnx(tiny_model, tmp_path / "dynamo.onnx", exporter="dynamo")
    diffs = check_parity(tiny_model, path, np.random.default_rng(0).standard_normal((8, 1, 28, 28)))
    assert max(diffs.values()) <= 1e-4 and len(diffs) == 8  # logits and embedding at 4 batch sizes
