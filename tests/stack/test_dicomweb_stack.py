"""STOW-RS through the local stack's gateway (`/dicomweb`) with `dicomweb-client`: the stored instance takes the
upload path (S3 notification → minio-source → broker → ingest) to a result in inference-results."""

from __future__ import annotations

import io
import json
import time

import pydicom
import pytest

from shared.names import INPUT_BUCKET, RESULT_BUCKET, dicom_instance_key, result_key
from tests.functions.tiny_model import build_tiny_model_dir
from tests.shared.pacs.generated_dx import IDENTIFIERS, generated_dx
from tests.shared.pacs.stow_body import uids
from triage.stack import Stack, StackConfig, StackPorts


def test_an_instance_stored_over_stow_rs_at_the_gateway_is_triaged(tmp_path) -> None:
    import requests
    from dicomweb_client.api import DICOMwebClient

    model = build_tiny_model_dir(tmp_path / "model")
    config = StackConfig(run_dir=tmp_path / "run", model_uri=str(model),
                         functions=("dicomweb", "minio_source", "ingest"), ports=StackPorts.free(), mlflow=False,
                         prometheus=False)
    dx = generated_dx(rows=128, columns=128, seed=41)
    _, sop_instance, study = uids(dx)
    key = dicom_instance_key(study, sop_instance)
    with Stack(config, echo=None) as stack:
        url = f"{stack.urls['gateway']}/dicomweb"
        with pytest.raises(requests.HTTPError) as raised:
            DICOMwebClient(url=url).store_instances([pydicom.dcmread(io.BytesIO(dx))])
        assert raised.value.response.status_code == 401
        response = DICOMwebClient(url=url, headers=stack.api_headers).store_instances(
            [pydicom.dcmread(io.BytesIO(dx))])
        assert [item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence] == [sop_instance]
        s3 = stack.s3()
        assert s3.get_object(Bucket=INPUT_BUCKET, Key=key)["Body"].read() == dx
        deadline = time.monotonic() + 90
        while True:
            listed = s3.list_objects_v2(Bucket=RESULT_BUCKET, Prefix=result_key(key)).get("Contents", [])
            if any(item["Key"] == result_key(key) for item in listed):
                break
            assert time.monotonic() < deadline, "ingest never wrote the result of the STOW-RS instance"
            time.sleep(0.5)
        result = s3.get_object(Bucket=RESULT_BUCKET, Key=result_key(key))["Body"].read().decode()
        stored = s3.head_object(Bucket=INPUT_BUCKET, Key=key)["ETag"].strip('"')
        assert json.loads(result)["etag"] == stored and "urgent" in json.loads(result)
        for identifier in IDENTIFIERS:
            assert identifier not in result
