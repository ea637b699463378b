"""The local S3 server's request log names objects by `key_ref`, never by key (real moto server, real boto3)."""

from __future__ import annotations

import logging

import boto3
import pytest

from shared.names import key_ref
from triage.stack.access_log import KeyRedactingFilter, redact_access_log, redact_request_target

PATIENT_KEY = "ward3/Doe^John_1970-01-01 (1).png"


def s3_requests(endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="access-log")
    s3.put_object(Bucket="access-log", Key=PATIENT_KEY, Body=b"x")
    s3.get_object(Bucket="access-log", Key=PATIENT_KEY)
    s3.list_objects_v2(Bucket="access-log", Prefix="ward3/Doe")


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "werkzeug"]


def test_request_lines_keep_the_bucket_and_name_the_key_by_its_reference(s3_server: str, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        s3_requests(s3_server)
    assert any("Doe" in line for line in logged(caplog))  # what the server logs by itself

    caplog.clear()
    installed = redact_access_log()
    try:
        assert redact_access_log() is installed  # once only
        with caplog.at_level(logging.INFO, logger="werkzeug"):
            s3_requests(s3_server)
    finally:
        logging.getLogger("werkzeug").removeFilter(installed)
    lines = logged(caplog)
    assert len(lines) >= 4 and not [line for line in lines if "Doe" in line]
    assert any(f"PUT /access-log/{key_ref('access-log', PATIENT_KEY)} HTTP/1.1" in line for line in lines)
    assert any("GET /access-log?encoding-type&list-type&prefix HTTP/1.1" in line for line in lines)


@pytest.mark.parametrize(("target", "expected"), [
    ("/inference-inputs/a%2Fb.png", f"/inference-inputs/{key_ref('inference-inputs', 'a/b.png')}"),
    ("/inference-inputs", "/inference-inputs"),
    ("/", "/"),
    ("/Doe^John/x", f"/{key_ref('', 'Doe^John')}/{key_ref('Doe^John', 'x')}"),
    ("/b-1?uploads=&Doe^John=1", "/b-1??&uploads"),
])
def test_a_request_target_keeps_only_the_bucket_and_the_parameter_names(target: str, expected: str) -> None:
    assert redact_request_target(target) == expected


def test_an_error_line_loses_what_it_quotes_of_the_request() -> None:
    record = logging.LogRecord("werkzeug", logging.ERROR, __file__, 1, "code %d, message %s", (400,
                               "Bad request syntax ('GET /b/Doe^John.png HTTP/1.1 junk')"), None)
    assert KeyRedactingFilter().filter(record)
    assert record.getMessage() == "code 400, message Bad request syntax (…)"
