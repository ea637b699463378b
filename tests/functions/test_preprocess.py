"""preprocess over HTTP: validation, DICOM de-identification before storing, the normalized image back."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.config import Settings
from shared.storage import Storage
from tests.functions.bad_requests import (
    BODY_LIMIT,
    assert_every_bad_request_is_a_json_4xx,
)
from tests.functions.tiny_model import dicom_bytes, png_bytes
from tests.local_http import LocalServer

SECRET = "preprocess-test-secret"


@pytest.fixture
def client(client_for):
    return client_for("preprocess", MAX_BODY_BYTES=str(BODY_LIMIT), DEID_SECRET=SECRET)


def test_png_gives_shape_and_stats(client) -> None:
    response = client.post("/", data=png_bytes(30, width=20), content_type="image/png")
    assert response.status_code == 200
    body = response.get_json()
    assert body["format"] == "png" and body["shape"] == [30, 20] and body["deidentified"] is False
    assert 0.0 <= body["stats"]["min"] <= body["stats"]["mean"] <= body["stats"]["max"] <= 1.0
    assert body["stored"] is None


def test_accept_png_returns_the_normalized_image(client) -> None:
    response = client.post("/", data=dicom_bytes(), content_type="application/dicom", headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.mimetype == "image/png"
    image = Image.open(io.BytesIO(response.data))
    assert image.size == (28, 28) and image.mode == "L"


def test_stored_dicom_has_no_patient_identifiers(client_for, s3_server: str) -> None:
    client = client_for("preprocess", S3_ENDPOINT_URL=s3_server, DEID_SECRET=SECRET)
    storage = Storage.from_settings(Settings(s3_endpoint_url=s3_server))
    storage.ensure_buckets()
    response = client.post("/?store=true", data=dicom_bytes(patient_name="DOE^JANE"), content_type="application/dicom")
    assert response.status_code == 200, response.get_data()[:300]
    body = response.get_json()
    assert body["deidentified"] is True and body["stored"]["bucket"] == "inference-inputs"
    stored = storage.get_bytes("inference-inputs", body["stored"]["key"])
    assert b"DOE^JANE" not in stored and b"PID-12345" not in stored and b"19700101" not in stored
    assert body["stored"]["key"] == f"{body['sha256']}.dcm"


def test_every_bad_input_is_a_4xx_json_error_and_the_process_keeps_serving(
    client, server: LocalServer, monkeypatch
) -> None:
    assert_every_bad_request_is_a_json_4xx(client, server.url, monkeypatch)
    assert client.post("/", data=png_bytes(), content_type="image/png").status_code == 200


def test_preprocess_is_ready_without_a_model(client_for, tmp_path) -> None:
    client = client_for("preprocess", MODEL_URI=str(tmp_path / "no-model"))
    assert client.get("/healthz").status_code == 200
    assert "triage_request_duration_seconds" in client.get("/metrics").get_data(as_text=True)


def test_without_deid_secret_a_dicom_is_a_503_and_nothing_is_stored(client_for, s3_server: str) -> None:
    client = client_for("preprocess", S3_ENDPOINT_URL=s3_server, DEID_SECRET="")
    storage = Storage.from_settings(Settings(s3_endpoint_url=s3_server))
    before = set(storage.list_keys("inference-inputs"))
    response = client.post("/?store=true", data=dicom_bytes(), content_type="application/dicom")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "deidentification_not_configured"
    assert set(storage.list_keys("inference-inputs")) == before
