"""PACS in, PACS out on the local stack: DCMTK's storescu → the receiver → ingest → export → SR + heatmap in Orthanc,
and the same from STOW-RS (dicomweb-client through the gateway's /dicomweb).

Real processes (S3, relay, broker, minio_source, ingest, export, gateway, the receiver, Orthanc with the stack's
generated configuration), a tiny random-weight model. The SR and the Secondary Capture land in the original
StudyInstanceUID (QIDO-RS); the SR carries the ingest result's probability and model version, UNVERIFIED. With
Orthanc down the broker's retries carry the export over until it is back, and it is stored once. No identifier of
the patient reaches results, state, logs or /metrics.
"""

from __future__ import annotations

import io
import json
import subprocess
import time

import httpx
import numpy as np
import pydicom
import pytest

from shared.names import BUCKETS, RESULT_BUCKET, dicom_instance_key, result_key
from tests.functions.tiny_model import build_tiny_model_dir
from tests.shared.pacs.dcmtk import dcmtk_tool
from tests.shared.pacs.generated_dx import IDENTIFIERS, generated_dx
from tests.shared.pacs.orthanc_process import qido
from triage.stack import Stack, StackConfig, StackPorts
from triage.stack.orthanc import OrthancPorts, orthanc_spec
from triage.stack.processes import unused_port_block

SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs-stack")
    dicom_port, http_port, orthanc_dicom = unused_port_block(3)
    ports = OrthancPorts(http=http_port, dicom=orthanc_dicom, receiver=dicom_port)
    if orthanc_spec(root, ports) is None:
        from tests.system_tools import require_tool

        require_tool("Orthanc", "apt-get install -y orthanc orthanc-dicomweb")
    config = StackConfig(run_dir=root / "run", model_uri=str(build_tiny_model_dir(root / "model")),
                         functions=("dicomweb", "minio_source", "ingest", "export"), ports=StackPorts.free(),
                         mlflow=False, prometheus=False, dicom_port=dicom_port, orthanc=True, orthanc_ports=ports,
                         extra_env={"THREADS": "2", "EXPORT_ATTEMPTS": "1", "EXPORT_TIMEOUT_S": "2"})
    with Stack(config, echo=None) as running:
        assert "orthanc" in running.urls, "Orthanc did not start in the stack"
        yield running


def storescu(stack, data: bytes, tmp_path) -> pydicom.Dataset:
    path = tmp_path / "chest.dcm"
    path.write_bytes(data)
    port = stack.urls["dicom"].rsplit(":", 1)[1]
    done = subprocess.run([dcmtk_tool("storescu"), "-aet", "CHESTROOM1", "-aec", "XRAYTRIAGE", "127.0.0.1", port,
                           str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return pydicom.dcmread(io.BytesIO(data))


def wait_for_instances(ports: OrthancPorts, study: str, count: int, timeout_s: float = 90.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = qido(ports, study)
        if len(found) >= count:
            return found
        time.sleep(0.3)
    return found


def test_storescu_to_the_receiver_puts_the_sr_and_heatmap_in_orthanc(stack, tmp_path):
    import highdicom as hd

    sent = storescu(stack, generated_dx(rows=128, columns=112, seed=21), tmp_path)
    ports = stack.config.orthanc_ports
    instances = wait_for_instances(ports, str(sent.StudyInstanceUID), 2)
    assert sorted(i["00080016"]["Value"][0] for i in instances) == sorted([SR_CLASS, SC_CLASS])

    key = dicom_instance_key(sent.StudyInstanceUID, sent.SOPInstanceUID)
    result = json.loads(stack.s3().get_object(Bucket=RESULT_BUCKET, Key=result_key(key))["Body"].read())
    (sr_json,) = [i for i in instances if i["00080016"]["Value"][0] == SR_CLASS]
    sr_uid = sr_json["00080018"]["Value"][0]
    (found,) = httpx.post(f"{ports.http_url}/tools/lookup", content=sr_uid, timeout=5).json()
    sr = hd.sr.srread(io.BytesIO(httpx.get(f"{ports.http_url}/instances/{found['ID']}/file", timeout=5).content))
    assert sr.VerificationFlag == "UNVERIFIED" and str(sr.PatientName) == str(sent.PatientName)
    (group,) = sr.content.get_image_measurement_groups()
    assert result["probability"] in {m.value for m in group.get_measurements()}
    version = result["model"]["version"]  # a model from a folder has none: "unversioned" in the SR
    assert sr.ContributingEquipmentSequence[0].SoftwareVersions == (str(version) if version else "unversioned")


def test_stow_rs_at_the_gateway_puts_the_sr_and_heatmap_in_orthanc(stack):
    import highdicom as hd
    from dicomweb_client.api import DICOMwebClient

    sent = pydicom.dcmread(io.BytesIO(generated_dx(rows=128, columns=112, seed=23)))
    client = DICOMwebClient(url=f"{stack.urls['gateway']}/dicomweb", headers=stack.api_headers)
    response = client.store_instances([sent])
    assert [item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence] == [sent.SOPInstanceUID]
    ports = stack.config.orthanc_ports
    instances = wait_for_instances(ports, str(sent.StudyInstanceUID), 2)
    by_class = {i["00080016"]["Value"][0]: i for i in instances}
    assert sorted(by_class) == sorted([SR_CLASS, SC_CLASS])  # in the original study, nothing else
    assert all(i["0020000D"]["Value"][0] == sent.StudyInstanceUID for i in instances)

    key = dicom_instance_key(sent.StudyInstanceUID, sent.SOPInstanceUID)
    result = json.loads(stack.s3().get_object(Bucket=RESULT_BUCKET, Key=result_key(key))["Body"].read())
    sr_uid = by_class[SR_CLASS]["00080018"]["Value"][0]
    (found,) = httpx.post(f"{ports.http_url}/tools/lookup", content=sr_uid, timeout=5).json()
    sr = hd.sr.srread(io.BytesIO(httpx.get(f"{ports.http_url}/instances/{found['ID']}/file", timeout=5).content))
    assert sr.VerificationFlag == "UNVERIFIED" and sr.StudyInstanceUID == sent.StudyInstanceUID
    (group,) = sr.content.get_image_measurement_groups()
    assert result["probability"] in {m.value for m in group.get_measurements()}
    sc_uid = by_class[SC_CLASS]["00080018"]["Value"][0]
    (found,) = httpx.post(f"{ports.http_url}/tools/lookup", content=sc_uid, timeout=5).json()
    sc = pydicom.dcmread(io.BytesIO(httpx.get(f"{ports.http_url}/instances/{found['ID']}/file", timeout=5).content))
    assert sc.BurnedInAnnotation == "YES" and sc.StudyInstanceUID == sent.StudyInstanceUID


def test_the_pacs_benchmark_times_cstore_to_the_sr_in_orthanc(stack):
    from load_tests.pacs import cstore_to_sr

    result = cstore_to_sr(stack.urls["dicom"], stack.config.orthanc_ports.dicomweb_url, studies=2, rows=256,
                          columns=208, gap_s=0)
    assert result["failures"] == [] and result["n"] == 2 and len(result["samples_s"]) == 2
    assert 0 < result["cstore_p50_s"] <= result["p50_s"] <= result["p95_s"] <= result["max_s"]
    assert result["bytes"] > 256 * 208 * 2


def test_orthanc_down_the_broker_retries_and_it_is_stored_once(stack, tmp_path):
    ports = stack.config.orthanc_ports
    stack.kill("orthanc")
    sent = storescu(stack, generated_dx(seed=22), tmp_path)
    log = stack.config.run_dir / "logs" / "export.log"
    deadline = time.monotonic() + 60
    while "failed after 1 attempts" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "failed after 1 attempts: pacs_unavailable" in log.read_text()
    stack.restart("orthanc")
    instances = wait_for_instances(ports, str(sent.StudyInstanceUID), 2)
    time.sleep(2)  # a later redelivery, if any, would add a third
    assert len(qido(ports, str(sent.StudyInstanceUID))) == len(instances) == 2


def test_no_identifier_in_results_state_logs_or_metrics(stack):
    s3 = stack.s3()
    texts = []
    for bucket in BUCKETS:
        if bucket == "inference-inputs":  # the hospital's own copy of what it sent
            continue
        for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            texts.append(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode("latin-1"))
    logs = stack.config.run_dir / "logs"
    texts += [path.read_text(errors="replace") for path in logs.glob("*.log") if path.name != "orthanc.log"]
    texts += [httpx.get(f"{url}/metrics", timeout=5).text for url in stack.function_urls.values()]
    assert any('triage_export_total{method="stow",outcome="exported"}' in text for text in texts)
    joined = "\n".join(texts)
    for identifier in IDENTIFIERS:
        assert identifier not in joined, identifier


def test_the_demo_step_sends_a_study_and_says_where_the_results_are(stack, capsys):
    from triage.stack.pacs_demo import pacs_step

    failures: list[str] = []
    image = np.random.default_rng(5).random((96, 80))
    shown = pacs_step(stack, image, failures.append)
    assert failures == [] and shown is not None and shown["sr"] and shown["sc"]
    printed = capsys.readouterr().out
    assert "/app/explorer.html#study?uuid=" in printed and f"/studies/{shown['study']}/series" in printed
    assert len(qido(stack.config.orthanc_ports, shown["study"])) == 2


def test_the_generated_orthanc_configuration(tmp_path):
    from triage.stack.orthanc import write_config

    config = json.loads(write_config(tmp_path, OrthancPorts(http=18042, dicom=14242, receiver=11112)).read_text())
    assert (config["HttpPort"], config["DicomPort"]) == (18042, 14242)
    assert config["RemoteAccessAllowed"] is False and config["AuthenticationEnabled"] is False
    assert config["DicomModalities"] == {"xraytriage": ["XRAYTRIAGE", "127.0.0.1", 11112]}
    assert config["DicomAlwaysAllowStore"] is False and config["DicomCheckModalityHost"] is True
    assert config["StorageDirectory"].startswith(str(tmp_path)) and config["OverwriteInstances"] is True
