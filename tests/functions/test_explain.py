"""explain over HTTP: the heatmap PNG has the input image's size, as JSON (base64) or image/png by Accept."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from shared.security import parse_networks
from tests.functions.bad_requests import (
    BODY_LIMIT,
    assert_every_bad_request_is_a_json_4xx,
)
from tests.functions.tiny_model import dicom_bytes, jpeg_bytes, png_bytes
from tests.local_http import LocalServer


@pytest.fixture
def client(client_for):
    return client_for("explain", MAX_BODY_BYTES=str(BODY_LIMIT))


def heatmap_size(response) -> tuple[int, int]:
    assert response.status_code == 200, response.get_data()[:300]
    body = response.get_json()
    assert body["label"] in ("normal", "pneumonia") and body["model"]["name"] == "xray-vit"
    png = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert png.format == "PNG" and [png.height, png.width] == body["heatmap_size"]
    return png.size


@pytest.mark.parametrize("method", ["rollout", "occlusion"])
def test_json_heatmap_has_the_inputs_size(client, method: str) -> None:
    response = client.post(f"/?method={method}", data=png_bytes(40, width=56), content_type="image/png")
    assert heatmap_size(response) == (56, 40)
    assert response.get_json()["method"] == method


def test_accept_png_answers_the_overlay_image(client) -> None:
    response = client.post("/", data=png_bytes(36, width=30), content_type="image/png", headers={"Accept": "image/png"})
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert Image.open(io.BytesIO(response.data)).size == (30, 36)
    assert response.headers["X-Label"] in ("normal", "pneumonia")


def test_the_callers_request_id_is_only_a_correlation_field(client, storage) -> None:
    from shared.request_records import load_request_record

    caller = {"X-Request-Id": "study-42"}
    as_json = client.post("/", data=png_bytes(), content_type="image/png", headers=caller).get_json()
    as_png = client.post("/", data=png_bytes(), content_type="image/png", headers={**caller, "Accept": "image/png"})
    client.module.REQUESTS.flush()
    assert as_json["correlation_id"] == as_png.headers["X-Correlation-Id"] == "study-42"
    ids = {as_json["request_id"], as_png.headers["X-Request-Id"]}
    assert len(ids) == 2 and "study-42" not in ids
    for request_id in ids:
        assert load_request_record(storage, request_id)["correlation_id"] == "study-42"


def test_each_input_form_gets_a_heatmap(client, server: LocalServer, monkeypatch) -> None:
    multipart = {"file": (io.BytesIO(png_bytes()), "x.png", "image/png")}
    assert heatmap_size(client.post("/", data=jpeg_bytes(32), content_type="image/jpeg")) == (32, 32)
    assert heatmap_size(client.post("/", data=dicom_bytes(), content_type="application/dicom")) == (28, 28)
    assert heatmap_size(client.post("/", data=multipart, content_type="multipart/form-data")) == (28, 28)
    monkeypatch.setattr(client.module, "URL_ALLOW_NETWORKS", parse_networks("127.0.0.1/32"))
    assert heatmap_size(client.post("/", json={"url": server.url + "/image.png"})) == (28, 28)


def test_an_unknown_method_is_a_422_naming_it(client) -> None:
    response = client.post("/?method=gradcam", data=png_bytes(), content_type="image/png")
    assert response.status_code == 422 and "method" in response.get_json()["error"]["message"]


def test_every_bad_input_is_a_4xx_json_error_and_the_process_keeps_serving(
    client, server: LocalServer, monkeypatch
) -> None:
    assert_every_bad_request_is_a_json_4xx(client, server.url, monkeypatch)
    assert heatmap_size(client.post("/", data=png_bytes(), content_type="image/png")) == (28, 28)


def test_health_and_metrics(client) -> None:
    client.post("/", data=png_bytes(), content_type="image/png")
    assert client.get("/healthz").status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert 'triage_request_duration_seconds_count{function="explain",route="/",status="200"}' in text
