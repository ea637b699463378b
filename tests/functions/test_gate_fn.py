"""predict and explain over HTTP with a gated model: an image that is no chest radiograph is a valid request,
answered 200 with `assessable: false`, a `reason` and no label (no heatmap from explain, also under Accept: image/png),
in the shape the OpenAPI documents say."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from PIL import Image

from shared.openapi import document
from shared.openapi.components import SCHEMAS
from tests.functions.tiny_model import build_gated_model_dir, dicom_bytes, gated_phantoms


@pytest.fixture(scope="module")
def gated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gated_model_dir(tmp_path_factory.mktemp("gated-fn") / "model")


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _validator(function: str) -> Draft202012Validator:
    """The 200 JSON schema of `POST /` in the function's OpenAPI document, its $refs resolved in the document."""
    doc = document(function)
    schema = doc["paths"]["/"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": doc["components"]})


def test_predict_answers_a_flat_image_200_not_assessable_with_a_reason(client_for, gated_dir: Path) -> None:
    client = client_for("predict", MODEL_URI=str(gated_dir))
    response = client.post("/", data=_png(np.full((64, 64), 200)), content_type="image/png")
    assert response.status_code == 200, response.get_data()[:300]
    body = response.get_json()
    assert (body["assessable"], body["label"], body["probability"], body["urgent"]) == (False, None, None, False)
    assert body["reason"]["code"] == "flat_image" and body["reason"]["message"]
    _validator("predict").validate(body)
    chest = client.post("/", data=_png(gated_phantoms(1, seed=40)[0]), content_type="image/png").get_json()
    assert chest["assessable"] is True and chest["label"] in ("normal", "pneumonia") and "reason" not in chest
    _validator("predict").validate(chest)


@pytest.mark.parametrize("accept", ["application/json", "image/png"])
def test_explain_of_a_colour_image_is_json_without_a_heatmap(client_for, gated_dir: Path, accept: str) -> None:
    client = client_for("explain", MODEL_URI=str(gated_dir))
    colour = np.zeros((48, 48, 3), np.uint8)
    colour[..., 0], colour[8:40, 8:40, 2] = 220, 180
    response = client.post("/?method=occlusion", data=_png(colour), content_type="image/png",
                           headers={"Accept": accept})
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert body["assessable"] is False and body["reason"]["code"] == "not_grayscale"
    assert (body["heatmap_png"], body["heatmap_size"], body["label"]) == (None, None, None)
    _validator("explain").validate(body)


def test_the_prediction_schema_requires_assessable() -> None:
    assert "assessable" in SCHEMAS["Prediction"]["required"]
    assert set(SCHEMAS["Prediction"]["properties"]["reason"]["properties"]["code"]["enum"]) == {
        "not_grayscale", "too_small", "flat_image", "out_of_distribution", "header_not_chest"}


@pytest.mark.parametrize("gated", [True, False])
def test_a_dicom_whose_header_names_a_ct_or_a_lateral_view_is_not_assessable(
    client_for, gated_dir: Path, tiny_model_dir: Path, gated: bool
) -> None:
    import pydicom

    client = client_for("predict", MODEL_URI=str(gated_dir if gated else tiny_model_dir))
    film = gated_phantoms(1, seed=40)[0]
    answers = {}
    for name, attrs in {"chest": {"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA"},
                        "ct": {"Modality": "CT"}, "lateral": {"Modality": "DX", "ViewPosition": "LL"}}.items():
        ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film.shape[0])))
        ds.PixelData = (np.asarray(film, np.uint16) * 16).tobytes()  # the same film in every file
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        response = client.post("/", data=out.getvalue(), content_type="application/dicom")
        assert response.status_code == 200, response.get_data()[:300]
        answers[name] = response.get_json()
        _validator("predict").validate(answers[name])
    assert answers["chest"]["assessable"] is True and answers["chest"]["label"] in ("normal", "pneumonia")
    for name in ("ct", "lateral"):
        body = answers[name]
        assert (body["assessable"], body["label"], body["probability"], body["urgent"]) == (False, None, None, False)
        assert body["reason"]["code"] == "header_not_chest" and "frontal chest" in body["reason"]["message"]
