"""Export to a real Orthanc (started with the local stack's generated configuration): SR and Secondary Capture in
the original study by STOW-RS and by C-STORE, once however often the event comes; PACS down is a 5xx to retry."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY, generate_latest

from shared.dicom import DeidentificationNotConfigured
from shared.errors import UserError
from shared.names import INPUT_BUCKET, RESULT_BUCKET
from shared.pacs.export import export_prediction
from shared.pacs.send import CStoreSender, PacsRejected, PacsUnavailable, StowSender
from shared.pacs.sr import SC_SERIES_DESCRIPTION, SR_SERIES_DESCRIPTION
from tests.shared.pacs.export_inputs import ingested, not_assessable_event, prediction_event
from tests.shared.pacs.generated_dx import IDENTIFIERS, generated_dx
from tests.shared.pacs.orthanc_process import orthanc, qido
from triage.stack.processes import unused_port_block

SECRET = "export-test-secret"
SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    with orthanc(tmp_path_factory.mktemp("orthanc")) as ports:
        yield ports


def _stow(pacs) -> StowSender:
    return StowSender(pacs.dicomweb_url, timeout_s=5)


def _classes_and_series(instances: list[dict]) -> list[tuple[str, str]]:
    return sorted((i["00080016"]["Value"][0], i["0020000E"]["Value"][0]) for i in instances)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_stow_stores_the_sr_and_the_secondary_capture_in_the_original_study(storage, pacs):
    source, event = ingested(storage, seed=1)
    before = _metric("triage_export_total", method="stow", outcome="exported")
    outcome = export_prediction(storage, event, sender=_stow(pacs), secret=SECRET)
    assert outcome.status == "exported" and outcome.study_instance_uid == source.StudyInstanceUID
    instances = qido(pacs, str(source.StudyInstanceUID))
    assert sorted(i["00080016"]["Value"][0] for i in instances) == sorted([SR_CLASS, SC_CLASS])
    assert {i["00080018"]["Value"][0] for i in instances} == set(outcome.instances)
    series = {s["0008103E"]["Value"][0] for s in _series(pacs, str(source.StudyInstanceUID))}
    assert series == {SR_SERIES_DESCRIPTION, SC_SERIES_DESCRIPTION}
    assert _metric("triage_export_total", method="stow", outcome="exported") == before + 1


def _series(pacs, study: str) -> list[dict]:
    import httpx

    response = httpx.get(f"{pacs.dicomweb_url}/studies/{study}/series", headers={"Accept": "application/dicom+json"})
    response.raise_for_status()
    return response.json()


def test_the_stored_sr_parses_and_carries_the_prediction(storage, pacs):
    import io

    import highdicom as hd
    import httpx

    source, event = ingested(storage, seed=2)
    outcome = export_prediction(storage, event, sender=_stow(pacs), secret=SECRET)
    sr_uid = outcome.instances[0]
    (found,) = httpx.post(f"{pacs.http_url}/tools/lookup", content=sr_uid, timeout=5).json()
    data = httpx.get(f"{pacs.http_url}/instances/{found['ID']}/file", timeout=5).content
    sr = hd.sr.srread(io.BytesIO(data))
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == source.StudyInstanceUID
    (group,) = sr.content.get_image_measurement_groups()
    assert {m.value for m in group.get_measurements()} == {0.8125, 0.4}
    assert sr.ContributingEquipmentSequence[0].SoftwareVersions == "5"


def test_cstore_stores_them_too(storage, pacs):
    source, event = ingested(storage, seed=3)
    sender = CStoreSender("127.0.0.1", pacs.dicom, called_ae="ORTHANC", calling_ae=pacs.receiver_ae, timeout_s=5)
    outcome = export_prediction(storage, event, sender=sender, secret=SECRET)
    assert outcome.status == "exported"
    assert sorted(c for c, _ in _classes_and_series(qido(pacs, str(source.StudyInstanceUID)))) == \
        sorted([SR_CLASS, SC_CLASS])


def test_orthanc_refuses_an_unknown_calling_ae(storage, pacs):
    _, event = ingested(storage, seed=4)
    sender = CStoreSender("127.0.0.1", pacs.dicom, called_ae="ORTHANC", calling_ae="STRANGER", timeout_s=5)
    with pytest.raises((PacsUnavailable, PacsRejected)):
        export_prediction(storage, event, sender=sender, secret=SECRET)


def test_a_redelivered_event_replaces_never_duplicates(storage, pacs):
    source, event = ingested(storage, seed=5)
    first = export_prediction(storage, event, sender=_stow(pacs), secret=SECRET)
    for _ in range(2):
        assert export_prediction(storage, event, sender=_stow(pacs), secret=SECRET).instances == first.instances
    cstore = CStoreSender("127.0.0.1", pacs.dicom, called_ae="ORTHANC", calling_ae=pacs.receiver_ae)
    export_prediction(storage, event, sender=cstore, secret=SECRET)
    assert len(qido(pacs, str(source.StudyInstanceUID))) == 2


def test_pacs_down_is_a_5xx_then_a_redelivery_stores_it_once(storage, tmp_path):
    source, event = ingested(storage, seed=6)
    http, dicom = unused_port_block(2)
    from triage.stack.orthanc import OrthancPorts

    ports = OrthancPorts(http=http, dicom=dicom)
    sleeps: list[float] = []
    before = _metric("triage_export_attempt_failures_total", method="stow", reason="pacs_unavailable")
    failed_deliveries = _metric("triage_export_failures_total")
    with pytest.raises(PacsUnavailable) as raised:
        export_prediction(storage, event, sender=StowSender(ports.dicomweb_url, timeout_s=2), secret=SECRET,
                          attempts=3, backoff_s=0.25, sleep=sleeps.append)
    assert raised.value.status == 503 and sleeps == [0.25, 0.5]
    assert _metric("triage_export_attempt_failures_total", method="stow", reason="pacs_unavailable") == before + 3
    assert _metric("triage_export_failures_total") == failed_deliveries + 1
    with pytest.raises(PacsUnavailable):
        export_prediction(storage, event, sender=CStoreSender("127.0.0.1", dicom, called_ae="ORTHANC",
                                                              calling_ae="XRAYTRIAGE", timeout_s=2), secret=SECRET)
    with orthanc(tmp_path, ports=ports):  # the PACS is back: the broker's next delivery
        export_prediction(storage, event, sender=StowSender(ports.dicomweb_url), secret=SECRET)
        export_prediction(storage, event, sender=StowSender(ports.dicomweb_url), secret=SECRET)
        assert len(qido(ports, str(source.StudyInstanceUID))) == 2


class Recorder:
    method = "stow"

    def __init__(self) -> None:
        self.sent: list = []

    def send(self, datasets) -> None:
        self.sent.append(datasets)


def test_only_stored_dicom_predictions_are_exported(storage):
    recorder = Recorder()
    png_etag = storage.put_bytes(INPUT_BUCKET, "scan.png", b"\x89PNG\r\n\x1a\n" + b"0" * 200, "image/png")
    dcm_etag = storage.put_bytes(INPUT_BUCKET, "dicom/a.dcm", generated_dx(), "application/dicom")
    cases = {
        "not_dicom": prediction_event("scan.png", png_etag),
        "incomplete_prediction": prediction_event("dicom/a.dcm", dcm_etag, label=None, probability=None),
        "not_a_stored_prediction": prediction_event("dicom/a.dcm", dcm_etag, status="error"),
        "replaced": prediction_event("dicom/a.dcm", "0" * 32),
        "gone": prediction_event("dicom/none.dcm", dcm_etag),
    }
    for reason, event in cases.items():
        outcome = export_prediction(storage, event, sender=recorder, secret=SECRET)
        assert (outcome.status, outcome.reason) == ("skipped", reason)
    assert recorder.sent == []
    other = prediction_event("dicom/a.dcm", dcm_etag, bucket=RESULT_BUCKET)
    assert export_prediction(storage, other, sender=recorder, secret=SECRET).reason == "not_a_stored_prediction"


def test_sr_only_when_the_heatmap_is_missing(storage):
    recorder = Recorder()
    etag = storage.put_bytes(INPUT_BUCKET, "dicom/b.dcm", generated_dx(), "application/dicom")
    export_prediction(storage, prediction_event("dicom/b.dcm", etag), sender=recorder, secret=SECRET)
    assert [str(ds.SOPClassUID) for ds in recorder.sent[0]] == [SR_CLASS]


def test_a_not_assessable_result_is_one_sr_saying_indeterminate_and_why_never_a_heatmap(storage):
    import io

    import highdicom as hd
    from pydicom.sr.codedict import codes

    recorder = Recorder()
    source, event = ingested(storage, seed=9)  # a heatmap file lies there: a not-assessable export must not use it
    refused = not_assessable_event(str(event.data["key"]), str(event.data["etag"]), "flat_image")
    before = _metric("triage_export_total", method="stow", outcome="exported")
    outcome = export_prediction(storage, refused, sender=recorder, secret=SECRET)
    assert outcome.status == "exported" and outcome.study_instance_uid == source.StudyInstanceUID
    (sent,) = recorder.sent
    assert [str(ds.SOPClassUID) for ds in sent] == [SR_CLASS]
    assert list(outcome.instances) == [str(sent[0].SOPInstanceUID)]
    buffer = io.BytesIO()
    sent[0].save_as(buffer, enforce_file_format=True)
    sr = hd.sr.srread(io.BytesIO(buffer.getvalue()))
    assert isinstance(sr, hd.sr.ComprehensiveSR) and sr.VerificationFlag == "UNVERIFIED"
    (group,) = sr.content.get_image_measurement_groups()
    assert [e.value for e in group.get_qualitative_evaluations()] == [codes.SCT.Indeterminate]
    assert group.get_measurements() == []
    assert _metric("triage_export_total", method="stow", outcome="exported") == before + 1
    again = export_prediction(storage, refused, sender=recorder, secret=SECRET)
    assert again.instances == outcome.instances  # a redelivery replaces


def test_orthanc_stores_the_not_assessable_sr_alone_once(storage, pacs):
    source, event = ingested(storage, seed=10)
    refused = not_assessable_event(str(event.data["key"]), str(event.data["etag"]))
    for _ in range(2):  # redelivered: replaced, not added
        outcome = export_prediction(storage, refused, sender=_stow(pacs), secret=SECRET)
    instances = qido(pacs, str(source.StudyInstanceUID))
    assert [i["00080016"]["Value"][0] for i in instances] == [SR_CLASS]
    assert [i["00080018"]["Value"][0] for i in instances] == list(outcome.instances)


def test_no_secret_is_a_503_no_pacs_a_counted_skip_and_a_bad_event_a_4xx(storage):
    _, event = ingested(storage, seed=7)
    with pytest.raises(DeidentificationNotConfigured) as no_secret:
        export_prediction(storage, event, sender=Recorder(), secret=None)
    assert no_secret.value.status == 503
    before = _metric("triage_export_total", method="none", outcome="no_pacs_configured")
    assert export_prediction(storage, event, sender=None, secret=SECRET).reason == "no_pacs_configured"
    assert _metric("triage_export_total", method="none", outcome="no_pacs_configured") == before + 1
    bad = prediction_event("dicom/a.dcm", "e")
    bad.data["key"] = {"not": "a string"}
    with pytest.raises(UserError) as raised:
        export_prediction(storage, bad, sender=Recorder(), secret=SECRET)
    assert 400 <= raised.value.status < 500


def test_no_identifier_of_the_input_in_logs_metrics_or_the_outcome(storage, pacs, caplog):
    caplog.set_level(logging.INFO)  # what the functions log (DEBUG is botocore quoting every request)
    _, event = ingested(storage, seed=8)
    outcome = export_prediction(storage, event, sender=_stow(pacs), secret=SECRET)
    with pytest.raises(PacsUnavailable):
        export_prediction(storage, event, sender=StowSender("http://127.0.0.1:9/dicom-web", timeout_s=1),
                          secret=SECRET)
    text = caplog.text + generate_latest(REGISTRY).decode() + str(outcome.to_json())
    assert "exported 2 instances" in caplog.text
    for identifier in (*IDENTIFIERS, str(event.data["key"])):
        assert identifier not in text


def test_a_pacs_refusing_an_instance_leaves_no_uid_in_the_log(storage, caplog):
    """highdicom named the source's SOP Instance UID at INFO while it built the SR; dicomweb-client logs a refused
    instance's UID and, at DEBUG, the request's headers."""
    import json

    from tests.local_http import LocalServer, QuietHandler

    refused = {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.7777"]},
                                                    "00081197": {"vr": "US", "Value": [0xC000]}}]}}

    class PartialStore(QuietHandler):
        def do_POST(self):  # noqa: N802
            self.body()
            self.reply(202, json.dumps(refused).encode(), "application/dicom+json")

    source, event = ingested(storage, seed=9)
    caplog.set_level(logging.DEBUG)
    with LocalServer(PartialStore) as pacs, pytest.raises(PacsRejected):
        export_prediction(storage, event, sender=StowSender(pacs.url), secret=SECRET)
    assert any(r.name.startswith("dicomweb_client") for r in caplog.records)  # it did log the request
    for value in ("3680043.7777", str(source.SOPInstanceUID), str(source.StudyInstanceUID)):
        assert value not in caplog.text  # highdicom named the source at INFO while it built the SR
