"""export over HTTP: a prediction event in, the SR and Secondary Capture in a real Orthanc; 5xx when the PACS is
down (the broker retries), 4xx for what is not a prediction event."""

from __future__ import annotations

import pytest

from shared.events import event_to_binary_http, event_to_structured_http, object_created_event
from tests.shared.pacs.export_inputs import ingested
from tests.shared.pacs.orthanc_process import orthanc, qido


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    with orthanc(tmp_path_factory.mktemp("orthanc")) as ports:
        yield ports


def send(client, event, structured: bool = False):
    headers, body = (event_to_structured_http if structured else event_to_binary_http)(event)
    return client.post("/", data=body, headers=headers)


def test_a_prediction_event_puts_the_sr_and_heatmap_in_the_pacs(client_for, storage, s3_server, pacs):
    client = client_for("export", S3_ENDPOINT_URL=s3_server, PACS_STOW_URL=pacs.dicomweb_url, DEID_SECRET="k")
    source, event = ingested(storage, seed=11)
    response = send(client, event, structured=True)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "exported" and body["study_instance_uid"] == source.StudyInstanceUID
    assert len(qido(pacs, str(source.StudyInstanceUID))) == 2
    assert send(client, event).status_code == 200  # redelivered: replaced, not added
    assert len(qido(pacs, str(source.StudyInstanceUID))) == 2
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'triage_export_total{method="stow",outcome="exported"}' in metrics


def test_cstore_by_setting(client_for, storage, s3_server, pacs):
    client = client_for("export", S3_ENDPOINT_URL=s3_server, EXPORT_METHOD="cstore", PACS_HOST="127.0.0.1",
                        PACS_PORT=str(pacs.dicom), PACS_AE_TITLE="ORTHANC", DEID_SECRET="k")
    source, event = ingested(storage, seed=12)
    assert send(client, event).status_code == 200
    assert len(qido(pacs, str(source.StudyInstanceUID))) == 2


@pytest.mark.parametrize("env", [
    {"PACS_STOW_URL": "http://127.0.0.1:9/dicom-web", "EXPORT_TIMEOUT_S": "1", "EXPORT_ATTEMPTS": "1"},
    {"EXPORT_METHOD": "cstore", "PACS_HOST": "127.0.0.1", "PACS_PORT": "9", "EXPORT_TIMEOUT_S": "1",
     "EXPORT_ATTEMPTS": "1"},
])
def test_pacs_down_is_a_503_so_the_broker_retries(client_for, storage, s3_server, env):
    client = client_for("export", S3_ENDPOINT_URL=s3_server, DEID_SECRET="k", **env)
    _, event = ingested(storage, seed=13)
    response = send(client, event)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "pacs_unavailable"


def test_without_a_pacs_the_event_is_skipped_not_retried(client_for, storage, s3_server):
    client = client_for("export", S3_ENDPOINT_URL=s3_server, DEID_SECRET="k")
    _, event = ingested(storage, seed=14)
    response = send(client, event)
    assert response.status_code == 200
    assert response.get_json() == {"status": "skipped", "reason": "no_pacs_configured"}


def test_not_a_prediction_event_is_a_4xx(client_for, storage, s3_server):
    client = client_for("export", S3_ENDPOINT_URL=s3_server, PACS_STOW_URL="http://127.0.0.1:9/", DEID_SECRET="k")
    assert send(client, object_created_event("inference-inputs", "a.dcm", "e", 1)).status_code == 400
    response = client.post("/", data=b"{}", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "error" in response.get_json()
    assert client.get("/healthz").status_code == 200


def test_a_bad_export_setting_names_the_variable(client_for, s3_server):
    from shared.errors import UserError

    with pytest.raises(UserError, match="EXPORT_METHOD"):
        client_for("export", S3_ENDPOINT_URL=s3_server, EXPORT_METHOD="ftp")
