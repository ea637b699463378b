"""The DICOM receiver in the local stack: DCMTK's storescu sends a DX, ingest triages it like any upload.

Real processes (S3, relay, broker, minio_source, ingest, gateway, the receiver as `python -m shared.pacs.receiver`),
a tiny random-weight model; DCMTK is the modality. The result and the receiver's log carry no identifier.
"""

from __future__ import annotations

import io
import json
import time

import pydicom
import pytest

from shared.names import INPUT_BUCKET, RESULT_BUCKET, dicom_instance_key, result_key
from tests.functions.tiny_model import build_tiny_model_dir
from tests.shared.pacs.dcmtk import dcmtk_send
from tests.shared.pacs.generated_dx import IDENTIFIERS, generated_dx
from triage.stack import Stack, StackConfig, StackPorts
from triage.stack.processes import unused_port_block


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom-stack")
    model = build_tiny_model_dir(root / "model")
    (dicom_port,) = unused_port_block(1)
    config = StackConfig(run_dir=root / "run", model_uri=str(model), functions=("minio_source", "ingest"),
                         ports=StackPorts.free(), mlflow=False, prometheus=False, dicom_port=dicom_port,
                         extra_env={"THREADS": "2", "DICOM_ALLOWED_AES": "CHESTROOM1"})
    with Stack(config, echo=None) as running:
        yield running


def dicom_port(stack: Stack) -> str:
    return stack.urls["dicom"].rsplit(":", 1)[1]


def wait_for(s3, bucket: str, key: str, timeout_s: float = 60.0) -> bytes | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            time.sleep(0.2)
    return None


def test_echoscu_is_answered_on_the_stack_s_dicom_port(stack):
    assert stack.urls["dicom"].startswith("dicom://XRAYTRIAGE@127.0.0.1:")
    done = dcmtk_send("echoscu", dicom_port(stack), calling="CHESTROOM1")
    assert done.returncode == 0, done.stderr


def test_a_dx_sent_by_storescu_is_triaged_and_nothing_names_the_patient(stack, tmp_path):
    original = generated_dx(rows=128, columns=112, seed=3)
    sent = pydicom.dcmread(io.BytesIO(original))
    path = tmp_path / "chest.dcm"
    path.write_bytes(original)
    done = dcmtk_send("storescu", dicom_port(stack), path, calling="CHESTROOM1")
    assert done.returncode == 0, done.stderr

    s3 = stack.s3()
    key = dicom_instance_key(sent.StudyInstanceUID, sent.SOPInstanceUID)
    assert s3.head_object(Bucket=INPUT_BUCKET, Key=key)["ContentType"] == "application/dicom"
    body = wait_for(s3, RESULT_BUCKET, result_key(key))
    assert body is not None, "ingest wrote no result for the received instance"
    result = json.loads(body)
    assert result["status"] == "ok" and result["label"] in ("normal", "pneumonia")
    log = (stack.config.run_dir / "logs" / "dicom-receiver.log").read_text()
    assert "stored obj:" in log
    for identifier in (*IDENTIFIERS, sent.StudyInstanceUID, sent.SOPInstanceUID):
        assert identifier not in body.decode(), identifier
        assert identifier not in log, identifier


def test_an_unknown_calling_ae_is_turned_away_by_the_stack_s_receiver(stack, tmp_path):
    path = tmp_path / "chest.dcm"
    path.write_bytes(generated_dx(seed=4))
    done = dcmtk_send("storescu", dicom_port(stack), path, calling="INTRUDER")
    assert done.returncode != 0 and "Calling AE Title Not Recognized" in done.stderr
    # The receiver's own /metrics (the Deployment's port 9102) counts what it turned away, and its text names no AE.
    import httpx

    exposition = httpx.get(stack.urls["dicom-metrics"], timeout=10).text
    rejected = [line for line in exposition.splitlines() if line.startswith("triage_dicom_associations_rejected_total")]
    assert rejected and float(rejected[0].split()[-1]) >= 1 and "INTRUDER" not in exposition


def test_triage_up_starts_the_receiver_on_dicom_port():
    import argparse

    from triage.config import TriageEnv
    from triage.stack.up import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert config_from_args(args, TriageEnv.from_env({})).dicom_port == 11112
    assert config_from_args(args, TriageEnv.from_env({"DICOM_PORT": "4104"})).dicom_port == 4104
    assert StackConfig().dicom_port is None  # tests' stacks start none unless they ask
