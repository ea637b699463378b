"""The dicomweb function: STOW-RS from `dicomweb-client` (a client no one here wrote) against a real
functions-framework process, and the refusals (wrong type, no token, a part that is not DICOM, another study)
through the function's test client."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.config import PROJECT_ROOT, Settings
from shared.names import INPUT_BUCKET, dicom_instance_key
from shared.storage import Storage
from tests.functions.conftest import api_token_table
from tests.shared.pacs.generated_dx import IDENTIFIERS, generated_dx
from tests.shared.pacs.stow_body import CONTENT_TYPE, ct_image, related_body, uids, with_study

REFERENCED, FAILED, FAILURE_REASON = "00081199", "00081198", "00081197"


def _dataset(data: bytes) -> Any:
    import pydicom

    return pydicom.dcmread(io.BytesIO(data))


@pytest.fixture(scope="module")
def dicomweb_process(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, API token) of functions/dicomweb as its own process, started as the local stack starts it."""
    from triage.stack.processes import ProcessSpec, Supervisor, unused_port_block
    from triage.stack.stack import Stack

    run_dir = tmp_path_factory.mktemp("dicomweb")
    store, token = api_token_table(run_dir / "api-tokens.json")
    port = unused_port_block(1)[0]
    env = {"PYTHONPATH": str(PROJECT_ROOT), "S3_ENDPOINT_URL": s3_server, "API_TOKENS_URI": str(store.path),
           "WORKERS": "1", "THREADS": "2"}
    supervisor = Supervisor(run_dir)
    try:
        supervisor.start(ProcessSpec("dicomweb", Stack.function_argv("dicomweb", port), env=env, port=port,
                                     health_url=f"http://127.0.0.1:{port}/healthz", cwd=PROJECT_ROOT))
        yield f"http://127.0.0.1:{port}", token
    finally:
        supervisor.stop_all()


def _storage(s3_server: str) -> Storage:
    storage = Storage.from_settings(Settings.from_env({"S3_ENDPOINT_URL": s3_server}))
    storage.ensure_buckets()
    return storage


def test_dicomweb_client_stores_a_dx_and_it_is_in_inference_inputs(dicomweb_process, s3_server: str) -> None:
    from dicomweb_client.api import DICOMwebClient

    base, token = dicomweb_process
    storage = _storage(s3_server)
    dx = generated_dx(rows=256, columns=256, seed=21)
    sop_class, sop_instance, study = uids(dx)
    # A small chunk size: the body goes with chunked transfer encoding, as a real image's does.
    client = DICOMwebClient(url=base, headers={"Authorization": f"Bearer {token}"}, chunk_size=16 * 1024)
    response = client.store_instances([_dataset(dx)])
    (item,) = response.ReferencedSOPSequence
    assert (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) == (sop_class, sop_instance)
    assert item.RetrieveURL.startswith(f"{base}/studies/{study}/series/")
    assert "FailedSOPSequence" not in response
    stored = _dataset(storage.get_bytes(INPUT_BUCKET, dicom_instance_key(study, sop_instance)))
    assert stored.SOPInstanceUID == sop_instance and stored.pixel_array.shape == (256, 256)


def test_dicomweb_client_to_another_study_fails_and_stores_nothing(dicomweb_process, s3_server: str) -> None:
    import requests
    from dicomweb_client.api import DICOMwebClient

    base, token = dicomweb_process
    storage = _storage(s3_server)
    dx = generated_dx(seed=22)
    _, sop_instance, study = uids(dx)
    client = DICOMwebClient(url=base, headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(requests.HTTPError) as raised:
        client.store_instances([_dataset(dx)], study_instance_uid="1.2.826.0.1.3680043.8.498.4242")
    assert raised.value.response.status_code == 409
    answer = raised.value.response.json()
    assert answer[FAILED]["Value"][0][FAILURE_REASON] == {"vr": "US", "Value": [0xA900]}
    assert not storage.exists(INPUT_BUCKET, dicom_instance_key(study, sop_instance))
    with pytest.raises(requests.HTTPError) as raised:  # no token
        DICOMwebClient(url=base).store_instances([_dataset(dx)])
    assert raised.value.response.status_code == 401
    assert not storage.exists(INPUT_BUCKET, dicom_instance_key(study, sop_instance))


@pytest.fixture
def dicomweb(client_for, storage) -> Any:
    return client_for("dicomweb")


def test_a_body_of_the_wrong_type_is_415(dicomweb, storage) -> None:
    dx = generated_dx(seed=23)
    for content_type in ("application/dicom", "image/png", 'multipart/related; type="application/dicom+json"; '
                         "boundary=stow-test-boundary-7d3e"):
        response = dicomweb.post("/studies", data=related_body(dx), content_type=content_type)
        assert response.status_code == 415, content_type
        assert response.get_json()["error"]["code"] == "unsupported_media_type"
    assert storage.list_keys(INPUT_BUCKET) == []


def test_a_part_that_is_not_dicom_fails_and_the_others_are_stored_202(dicomweb, storage) -> None:
    first, second = generated_dx(seed=24), generated_dx(seed=25)
    body = related_body(first, b"just some text, not an instance", second)
    response = dicomweb.post("/studies", data=body, content_type=CONTENT_TYPE)
    assert response.status_code == 202 and response.mimetype == "application/dicom+json"
    answer = json.loads(response.data)
    referenced = [item["00081155"]["Value"][0] for item in answer[REFERENCED]["Value"]]
    assert referenced == [uids(first)[1], uids(second)[1]]
    assert [item[FAILURE_REASON]["Value"] for item in answer[FAILED]["Value"]] == [[0xC000]]
    assert sorted(storage.list_keys(INPUT_BUCKET)) == sorted(
        dicom_instance_key(uids(d)[2], uids(d)[1]) for d in (first, second))


def test_the_study_route_refuses_other_studies_and_keeps_uids_out_of_metrics(dicomweb, storage) -> None:
    study = "1.2.826.0.1.3680043.8.498.9090"
    mine, other = with_study(generated_dx(seed=26), study), generated_dx(seed=27)
    response = dicomweb.post(f"/studies/{study}", data=related_body(mine, other), content_type=CONTENT_TYPE)
    assert response.status_code == 202
    answer = json.loads(response.data)
    assert [item[FAILURE_REASON]["Value"] for item in answer[FAILED]["Value"]] == [[0xA900]]
    assert storage.list_keys(INPUT_BUCKET) == [dicom_instance_key(study, uids(mine)[1])]
    assert dicomweb.post("/studies/not-a-uid", data=related_body(mine), content_type=CONTENT_TYPE).status_code == 400
    metrics = dicomweb.get("/metrics").get_data(as_text=True)
    assert 'route="/studies/{study}"' in metrics
    assert study not in metrics and uids(other)[2] not in metrics


def test_nothing_storable_is_409_and_a_malformed_body_400(dicomweb, storage) -> None:
    ct = ct_image(generated_dx(seed=28))
    response = dicomweb.post("/studies", data=related_body(ct), content_type=CONTENT_TYPE)
    assert response.status_code == 409
    assert json.loads(response.data)[FAILED]["Value"][0][FAILURE_REASON]["Value"] == [0x0122]
    cut = related_body(generated_dx(seed=29))[:-40]
    response = dicomweb.post("/studies", data=cut, content_type=CONTENT_TYPE)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_request"
    assert storage.list_keys(INPUT_BUCKET) == []


def test_a_token_is_required_and_must_allow_dicomweb(client_for, storage) -> None:
    client = client_for("dicomweb", authorized=False)
    body = related_body(generated_dx(seed=30))
    response = client.post("/studies", data=body, content_type=CONTENT_TYPE)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    token = client.api_tokens.update(lambda table: table.add("viewer", now="t", functions=["predict"])[::-1])
    time.sleep(0.3)  # the table is re-read every 0.2 s
    response = client.post("/studies", data=body, content_type=CONTENT_TYPE,
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    assert storage.list_keys(INPUT_BUCKET) == []


def test_the_response_and_the_stored_object_key_carry_no_patient_identifier(dicomweb, storage) -> None:
    dx = generated_dx(seed=31)
    response = dicomweb.post("/studies", data=related_body(dx), content_type=CONTENT_TYPE)
    assert response.status_code == 200
    text = response.get_data(as_text=True) + " ".join(storage.list_keys(INPUT_BUCKET))
    for identifier in IDENTIFIERS:
        assert identifier not in text


def test_a_study_over_max_body_bytes_is_stored_up_to_max_input_bytes(client_for, storage) -> None:
    """MAX_BODY_BYTES (20 MB by default) bounds the other functions' bodies; an uncompressed DX passes it."""
    dx = generated_dx(rows=64, columns=64, seed=33)
    client = client_for("dicomweb", MAX_BODY_BYTES="4096", MAX_INPUT_BYTES=str(4 * len(dx)))
    response = client.post("/studies", data=related_body(dx), content_type=CONTENT_TYPE)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(storage.list_keys(INPUT_BUCKET)) == 1


def test_a_body_over_the_limit_is_413_and_nothing_is_stored(client_for, storage) -> None:
    client = client_for("dicomweb", MAX_INPUT_BYTES="4096")
    response = client.post("/studies", data=related_body(generated_dx(rows=64, columns=64, seed=32)),
                           content_type=CONTENT_TYPE)
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "payload_too_large"
    assert client.get("/studies").status_code == 405  # STOW-RS only: no QIDO / WADO here
    assert storage.list_keys(INPUT_BUCKET) == []
