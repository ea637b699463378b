"""ModelCard round trip and validation; calibrated_probability."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from shared.modelcard import ModelCard, ModelCardError, calibrated_probability


def make_card(**changes) -> ModelCard:
    fields = dict(
        input={"name": "image", "shape": ["batch", 1, 28, 28], "image_size": 28, "mean": 0.5, "std": 0.5},
        grid=7, temperature=1.5, threshold=0.3, config={"image_size": 28, "patch": 4},
        sha256={"model.onnx": "a" * 64, "model.int8.onnx": "b" * 64},
        threshold_spread={"p5": 0.2, "p50": 0.3, "p95": 0.4}, metrics={"val": {"auc": 0.99}},
    )
    fields.update(changes)
    return ModelCard(**fields)


def test_round_trip_through_file(tmp_path):
    card = make_card(version="3")
    path = card.save(tmp_path / "model_card.json")
    loaded = ModelCard.load(tmp_path)  # a directory resolves to its model_card.json
    assert loaded == card
    assert json.loads(path.read_text())["class_names"] == ["normal", "pneumonia"]


def test_urgent_threshold_is_at_least_point_nine():
    assert make_card(threshold=0.3).urgent_threshold == 0.9
    assert make_card(threshold=0.95).urgent_threshold == 0.95


@pytest.mark.parametrize(
    ("field", "value"),
    [("threshold", 1.5), ("temperature", 0.0), ("grid", 5), ("class_names", ["a", "b"]),
     ("sha256", {"model.onnx": "short"}), ("threshold_spread", {"p5": 0.1})],
)
def test_bad_field_is_named(field, value):
    with pytest.raises(ModelCardError, match=f"'{field}"):
        make_card(**{field: value})


def test_load_names_the_file_and_the_missing_field(tmp_path):
    data = json.loads(make_card().to_json())
    del data["temperature"]
    path = tmp_path / "model_card.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelCardError, match=r"model_card.json: field 'temperature' is missing"):
        ModelCard.load(path)
    path.write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        ModelCard.load(path)
    with pytest.raises(ModelCardError, match="not found"):
        ModelCard.load(tmp_path / "nope.json")


def test_calibrated_probability_is_softmax_over_temperature():
    logits = np.array([[0.0, 0.0], [0.0, 2.0], [1000.0, -1000.0]])
    probs = calibrated_probability(logits, 2.0)
    expected = np.exp(logits / 2.0 - (logits / 2.0).max(1, keepdims=True))
    expected = expected[:, 1] / expected.sum(1)
    np.testing.assert_allclose(probs, expected, atol=1e-12)
    assert probs[0] == 0.5 and np.isfinite(probs).all()
    with pytest.raises(ValueError, match="temperature"):
        calibrated_probability(logits, 0.0)


def test_shared_modelcard_does_not_import_torch():
    import subprocess

    code = "import sys, shared.modelcard; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
