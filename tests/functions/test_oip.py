"""predict's Open Inference Protocol (KServe v2): routes over the test client, then Triton's own HTTP client
(`tritonclient.http`, which no one here wrote) against a real predict process."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from shared.inference_protocol import BINARY_HEADER
from tests.functions.function_process import function_process
from tests.functions.tiny_model import png_bytes

INFER = "/v2/models/xray-vit/infer"


@pytest.fixture
def client(client_for):
    return client_for("predict")


def wait_ready(client) -> None:
    deadline = time.monotonic() + 30
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "the model never became ready"
        time.sleep(0.05)


def model_input(client, seed: int = 0) -> np.ndarray:
    """What the design's route feeds the model for one PNG: [1, 1, S, S]."""
    model = client.module.MODEL
    return model.preprocess(model.decode(png_bytes(seed=seed), "image/png"))[np.newaxis]


def infer_body(batch: np.ndarray, **extra) -> dict:
    image = {"name": "image", "datatype": "FP32", "shape": list(batch.shape), "data": batch.reshape(-1).tolist()}
    return {"inputs": [image], **extra}


def test_health_is_open_and_ready_only_once_the_model_is_loaded(client_for) -> None:
    client = client_for("predict", authorized=False)
    assert client.get("/v2/health/live").status_code == 200
    first = client.get("/v2/health/ready")
    assert first.status_code == 503 and isinstance(first.get_json()["error"], str)
    wait_ready(client)
    assert client.get("/v2/models/xray-vit/ready").get_json() == {"name": "xray-vit", "ready": True}
    # metadata and inference need the predict route's API token, refused in the protocol's error form
    refused = client.get("/v2/models/xray-vit")
    assert refused.status_code == 401 and isinstance(refused.get_json()["error"], str)
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.post(INFER, json=infer_body(np.zeros((1, 1, 28, 28)))).status_code == 401


def test_metadata_says_the_input_and_outputs_of_the_model_card(client) -> None:
    wait_ready(client)
    metadata = client.get("/v2/models/xray-vit").get_json()
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("probability", "FP32", [-1]), ("logits", "FP32", [-1, 2]), ("label", "BYTES", [-1]), ("urgent", "BOOL", [-1]),
        ("assessable", "BOOL", [-1]), ("reason", "BYTES", [-1])]
    assert metadata["parameters"]["threshold"] == 0.5 and metadata["parameters"]["input_mean"] == 0.5
    assert client.get("/v2").get_json()["extensions"] == ["binary_tensor_data"]


def test_json_infer_gives_the_design_routes_probability_for_each_image_of_a_batch(client) -> None:
    wait_ready(client)
    batch = np.concatenate([model_input(client, seed) for seed in (0, 1, 2)])
    answer = client.post(INFER, json=infer_body(batch, id="study-7"))
    assert answer.status_code == 200, answer.get_data()[:300]
    body = answer.get_json()
    assert body["model_name"] == "xray-vit" and body["id"] == "study-7"
    outputs = {o["name"]: o for o in body["outputs"]}
    expected = [client.post("/", data=png_bytes(seed=s), content_type="image/png").get_json() for s in (0, 1, 2)]
    assert outputs["probability"]["shape"] == [3] and outputs["logits"]["shape"] == [3, 2]
    assert outputs["probability"]["data"] == pytest.approx([e["probability"] for e in expected], abs=1e-5)
    assert outputs["label"]["data"] == [e["label"] for e in expected]
    assert outputs["urgent"]["data"] == [e["urgent"] for e in expected]
    # nested data is row-major too; a requested subset of outputs comes back alone
    nested = {"inputs": [{**infer_body(batch)["inputs"][0], "data": batch.tolist()}], "outputs": [{"name": "label"}]}
    assert [o["name"] for o in client.post(INFER, json=nested).get_json()["outputs"]] == ["label"]


def test_binary_tensor_data_in_and_out(client) -> None:
    wait_ready(client)
    batch = model_input(client)
    header = json.dumps({
        "inputs": [{"name": "image", "datatype": "FP32", "shape": list(batch.shape),
                    "parameters": {"binary_data_size": batch.nbytes}}],
        "outputs": [{"name": "probability", "parameters": {"binary_data": True}}, {"name": "label"}],
    }).encode()
    answer = client.post(INFER, data=header + batch.astype("<f4").tobytes(),
                         headers={BINARY_HEADER: str(len(header))}, content_type="application/octet-stream")
    assert answer.status_code == 200, answer.get_data()[:300]
    length = int(answer.headers[BINARY_HEADER])
    described = json.loads(answer.get_data()[:length])
    probability = np.frombuffer(answer.get_data()[length:], dtype="<f4")
    expected = client.post("/", data=png_bytes(), content_type="image/png").get_json()
    assert described["outputs"][0]["parameters"] == {"binary_data_size": 4}
    assert probability[0] == pytest.approx(expected["probability"], abs=1e-5)
    assert described["outputs"][1]["data"] == [expected["label"]]


def test_every_bad_tensor_is_a_400_in_the_protocols_error_form(client) -> None:
    wait_ready(client)
    good = infer_body(np.zeros((1, 1, 28, 28), np.float32))["inputs"][0]
    nan = np.zeros(28 * 28).tolist()
    nan[5] = float("nan")
    cases = {
        "not json": b"{",
        "not an object": b"[1]",
        "no inputs": b'{"inputs": []}',
        "fp64": {"inputs": [{**good, "datatype": "FP64"}]},
        "bad shape": {"inputs": [{**good, "shape": [1, 28, 28]}]},
        "wrong size": {"inputs": [{**good, "shape": [1, 1, 14, 14]}]},
        "count mismatch": {"inputs": [{**good, "data": [0.0] * 10}]},
        "strings": {"inputs": [{**good, "data": ["0.0"] * (28 * 28)}]},
        "booleans": {"inputs": [{**good, "data": [True] * (28 * 28)}]},
        "ragged": {"inputs": [{**good, "data": [[0.0], [0.0, 1.0]]}]},
        "nan": {"inputs": [{**good, "data": nan}]},
        "out of range": {"inputs": [{**good, "data": [3.0] * (28 * 28)}]},
        "batch too big": {"inputs": [{**good, "shape": [65, 1, 28, 28], "data": [0.0] * (65 * 28 * 28)}]},
        "unknown input": {"inputs": [good, {**good, "name": "mask"}]},
        "unknown output": {"inputs": [good], "outputs": [{"name": "attention"}]},
        "bad id": {"inputs": [good], "id": "../x"},
        "binary size": {"inputs": [{**good, "data": None, "parameters": {"binary_data_size": 7}}]},
        "shape overflow": {"inputs": [{**good, "shape": [2**62, 2**62, 1, 1], "data": [0.0]}]},
    }
    for case, body in cases.items():
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = client.post(INFER, data=data, content_type="application/json")
        assert answer.status_code == 400, f"{case}: {answer.status_code} {answer.get_data()[:200]!r}"
        assert isinstance(answer.get_json()["error"], str) and answer.get_json()["error"], case
    bad_header = client.post(INFER, data=b"{}", headers={BINARY_HEADER: "99"})
    assert bad_header.status_code == 400
    for path in ("/v2/models/other", "/v2/models/other/infer", "/v2/models/xray-vit/versions/9", "/v2/nowhere"):
        answer = client.get(path) if not path.endswith("infer") else client.post(path, json={"inputs": [good]})
        assert answer.status_code == 404 and isinstance(answer.get_json()["error"], str), path
    assert client.get(INFER).status_code == 405
    assert client.post(INFER, json={"inputs": [good]}).status_code == 200  # still serving


def test_oip_requests_are_timed_by_route_template_not_raw_path(client) -> None:
    wait_ready(client)
    client.get("/v2/models/some-unknown-model")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'route="/v2/health/ready",status="200"' in text
    assert "some-unknown-model" not in text


def test_tritons_http_client_against_a_real_predict_process(tiny_model_dir, tmp_path, api_tokens) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    from shared import imaging

    env = {"MODEL_URI": str(tiny_model_dir), "MODEL_CACHE_DIR": str(tmp_path / "cache"),
           "API_TOKENS_URI": str(api_tokens[0].path)}
    token = f"Bearer {api_tokens[1]}"

    def auth() -> dict[str, str]:  # a new dict per call: the client writes its own headers into the one it is given
        return {"Authorization": token}

    batch = np.concatenate([imaging.to_model_input(imaging.decode_image(png_bytes(seed=s), "image/png"), 28)[None]
                            for s in (0, 1)])
    with function_process("predict", env, ready_path="/v2/health/ready") as base:
        client = triton.InferenceServerClient(url=base.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("xray-vit")
        metadata = client.get_model_metadata("xray-vit", headers=auth())
        assert metadata["inputs"][0]["shape"] == [-1, 1, 28, 28]
        results = {}
        for binary in (True, False):  # the client's default (binary tensor data both ways), then plain JSON
            image = triton.InferInput("image", list(batch.shape), "FP32")
            image.set_data_from_numpy(batch, binary_data=binary)
            outputs = None if binary else [triton.InferRequestedOutput(n, binary_data=False)
                                           for n in ("probability", "logits", "label", "urgent")]
            result = client.infer("xray-vit", [image], outputs=outputs, headers=auth())
            results[binary] = result
            assert result.as_numpy("logits").shape == (2, 2) and result.as_numpy("urgent").dtype == bool
        np.testing.assert_allclose(results[True].as_numpy("probability"), results[False].as_numpy("probability"))
        designs = []
        for seed in (0, 1):
            import urllib.request

            request = urllib.request.Request(base + "/", data=png_bytes(seed=seed),
                                             headers={"Content-Type": "image/png", **auth()})
            with urllib.request.urlopen(request, timeout=10) as response:
                designs.append(json.loads(response.read()))
        np.testing.assert_allclose(results[True].as_numpy("probability"), [d["probability"] for d in designs],
                                   atol=1e-5)
        assert [x.decode() for x in results[True].as_numpy("label")] == [d["label"] for d in designs]
        with pytest.raises(InferenceServerException) as unauthorized:
            client.infer("xray-vit", [image])
        assert unauthorized.value.status() == "401" and "token" in unauthorized.value.message()
        with pytest.raises(InferenceServerException) as unknown:
            client.get_model_metadata("resnet50", headers=auth())
        assert unknown.value.status() == "404"
        bad = triton.InferInput("image", [1, 1, 14, 14], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 1, 14, 14), np.float32))
        with pytest.raises(InferenceServerException) as wrong_shape:
            client.infer("xray-vit", [bad], headers=auth())
        assert wrong_shape.value.status() == "400" and "shape" in wrong_shape.value.message()
        client.close()


def test_the_gate_judges_each_tensor_as_the_design_route_judges_its_image(client_for, tmp_path) -> None:
    """A gated model: a flat tensor is refused (no label, NaN / null probability, not urgent) beside an accepted
    phantom in the same batch, with the verdict the design's route gives the same pixels."""
    from tests.functions.test_gate_fn import _png
    from tests.functions.tiny_model import build_gated_model_dir, gated_phantoms

    client = client_for("predict", MODEL_URI=str(build_gated_model_dir(tmp_path / "gated")))
    wait_ready(client)
    model = client.module.MODEL
    phantom, flat = gated_phantoms(1, seed=40)[0], np.full((28, 28), 200)
    batch = np.stack([model.preprocess(model.decode(_png(image), "image/png")) for image in (phantom, flat)])
    body = client.post(INFER, json=infer_body(batch)).get_json()
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    routed = [client.post("/", data=_png(image), content_type="image/png").get_json() for image in (phantom, flat)]
    assert outputs["assessable"] == [r["assessable"] for r in routed] == [True, False]
    assert outputs["reason"] == ["", "flat_image"] and outputs["label"][1] == "" and outputs["urgent"][1] is False
    assert outputs["probability"][0] == pytest.approx(routed[0]["probability"], abs=1e-5)
    assert outputs["probability"][1] is None and outputs["label"][0] == routed[0]["label"]
    binary = client.post(INFER, json=infer_body(batch, parameters={"binary_data_output": True}))
    header = json.loads(binary.get_data()[: int(binary.headers[BINARY_HEADER])])
    assert [o["name"] for o in header["outputs"]][-2:] == ["assessable", "reason"]
