"""Property-based, over HTTP: no raw body, multipart form or JSON {"url"} body makes preprocess answer a 5xx, and
no CloudEvent makes ingest answer one (the request parsers and decoders answer the caller's faults with a 4xx)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.functions.tiny_model import dicom_bytes, png_bytes

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MEDIA = st.sampled_from(["image/png", "image/jpeg", "application/dicom", "application/octet-stream",
                         "multipart/form-data; boundary=xyz", "application/json", "text/plain", ""])
SEEDS = [png_bytes(16), dicom_bytes(16)]


def _bodies() -> st.SearchStrategy[bytes]:
    cut = st.tuples(st.sampled_from(SEEDS), st.integers(0, 400)).map(lambda pair: pair[0][: pair[1]])
    return st.binary(max_size=256) | cut


def _assert_json_4xx_or_ok(response) -> None:
    assert response.status_code < 500, response.data[:300]
    if response.status_code >= 400:
        assert set(response.get_json()["error"]) == {"code", "message"}


@FUZZ
@given(body=_bodies(), media=MEDIA)
def test_any_raw_body_is_answered_without_a_5xx(client_for, body: bytes, media: str) -> None:
    client = client_for("preprocess", DEID_SECRET="fuzz")
    _assert_json_4xx_or_ok(client.post("/", data=body, headers={"Content-Type": media}))


@FUZZ
@given(body=_bodies(), field=st.sampled_from(["file", "image", ""]), mimetype=MEDIA)
def test_any_multipart_form_is_answered_without_a_5xx(client_for, body: bytes, field: str, mimetype: str) -> None:
    import io

    client = client_for("preprocess", DEID_SECRET="fuzz")
    form = {field or "x": (io.BytesIO(body), "upload.bin", mimetype or "application/octet-stream")}
    _assert_json_4xx_or_ok(client.post("/", data=form, content_type="multipart/form-data"))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)
# URLs that are refused without a network: other schemes, private / loopback / link-local addresses, nonsense.
URLS = st.sampled_from(["ftp://example.org/a.png", "file:///etc/passwd", "http://127.0.0.1:9/a.png",
                        "http://169.254.169.254/latest", "http://[::1]/x", "https://10.0.0.1/a", "not a url", "",
                        "http://", "gopher://x"]) | st.text(max_size=20).filter(lambda t: not t.startswith("http"))


@FUZZ
@given(payload=JSON | st.fixed_dictionaries({"url": URLS | JSON}))
def test_any_json_url_body_is_answered_without_a_5xx(client_for, payload) -> None:
    client = client_for("preprocess", DEID_SECRET="fuzz")
    _assert_json_4xx_or_ok(client.post("/", data=json.dumps(payload), content_type="application/json"))


@FUZZ
@given(data=JSON | st.fixed_dictionaries({"bucket": JSON, "key": JSON, "etag": JSON, "size": JSON}),
       structured=st.booleans())
def test_any_object_created_event_is_answered_without_a_5xx(client_for, s3_server, data, structured: bool) -> None:
    client = client_for("ingest", DEID_SECRET="fuzz", S3_ENDPOINT_URL=s3_server, K_SINK="")
    attributes = {"specversion": "1.0", "id": "fuzz", "source": "minio:inference-inputs",
                  "type": "io.minio.object.created"}
    if structured:
        response = client.post("/", data=json.dumps({**attributes, "data": data}),
                               content_type="application/cloudevents+json")
    else:
        headers = {f"ce-{name}": value for name, value in attributes.items()}
        response = client.post("/", data=json.dumps(data), headers={**headers, "Content-Type": "application/json"})
    _assert_json_4xx_or_ok(response)
