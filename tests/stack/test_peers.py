"""The MLflow peers of `triage bench` compute what predict computes: the same preprocessing, the same ONNX logits."""

from __future__ import annotations

import base64
import json
import os

import numpy as np
import onnxruntime as ort
import pytest

from load_tests.peers import PEERS, build_peers, peer_bodies, png_peer_model, tree_cpu_s
from shared.imaging import decode_image, to_model_input
from tests.functions.tiny_model import build_tiny_model_dir, png_bytes


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    root = tmp_path_factory.mktemp("peers")
    model_dir = build_tiny_model_dir(root / "model")
    return model_dir, build_peers(model_dir / "model.onnx", 28, root / "peers")


def _bare_logits(onnx_path, png: bytes) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = to_model_input(decode_image(png, "image/png"), 28)[np.newaxis].astype(np.float32)
    return session.run(["logits"], {session.get_inputs()[0].name: x})[0]


def test_the_png_pyfunc_decodes_the_request_body_into_the_same_logits(peers):
    model_dir, folders = peers
    assert set(folders) == set(PEERS) and all((folder / "MLmodel").is_file() for folder in folders.values())
    pngs = [png_bytes(seed=0), png_bytes(seed=3)]
    body = json.loads(peer_bodies(pngs[0], to_model_input(decode_image(pngs[0], "image/png"), 28))["mlflow_png_pyfunc"])
    assert base64.b64decode(body["inputs"]["png"][0]) == pngs[0]
    model = png_peer_model(folders["mlflow_png_pyfunc"])
    out = model.predict({"png": np.asarray([base64.b64encode(p).decode() for p in pngs])})
    expected = np.concatenate([_bare_logits(model_dir / "model.onnx", p) for p in pngs])
    assert out["logits"].shape == (2, 2)
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-5)


def test_the_onnx_flavor_gets_the_preprocessed_tensor_and_gives_the_same_logits(peers):
    import mlflow.pyfunc

    model_dir, folders = peers
    png = png_bytes(seed=1)
    body = json.loads(peer_bodies(png, to_model_input(decode_image(png, "image/png"), 28))["mlflow_onnx_flavor"])
    tensor = np.asarray(body["inputs"]["image"], np.float32)
    assert tensor.shape == (1, 1, 28, 28)
    out = mlflow.pyfunc.load_model(str(folders["mlflow_onnx_flavor"])).predict({"image": tensor})
    np.testing.assert_allclose(out["logits"], _bare_logits(model_dir / "model.onnx", png), rtol=1e-4, atol=1e-4)


def test_tree_cpu_counts_this_process_and_skips_the_gone():
    before = tree_cpu_s([os.getpid()])
    sum(i * i for i in range(300_000))
    assert tree_cpu_s([os.getpid()]) > before > 0
    assert tree_cpu_s([2**22 + 12345]) == 0.0  # no such process: nothing, no error
