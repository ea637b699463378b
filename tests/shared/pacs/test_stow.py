"""STOW-RS without HTTP: the media type, the multipart split, each part checked and stored or refused with its
PS3.18 failure reason, and the Store Instances Response as DICOM JSON."""

from __future__ import annotations

import base64
import logging
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import PayloadTooLarge, UnsupportedMediaType, UserError
from shared.names import INPUT_BUCKET, dicom_instance_key
from shared.pacs import stow
from shared.pacs.stow import Part, multipart_boundary, split_parts, store_parts, study_uid
from tests.shared.pacs.generated_dx import IDENTIFIERS, generated_dx
from tests.shared.pacs.stow_body import BOUNDARY, CONTENT_TYPE, ct_image, related_body, uids, with_study

REFERENCED, FAILED, RETRIEVE_URL = "00081199", "00081198", "00081190"
SOP_CLASS, SOP_INSTANCE, FAILURE_REASON = "00081150", "00081155", "00081197"


@pytest.mark.parametrize("content_type", [
    CONTENT_TYPE,
    f"multipart/related; type=application/dicom; boundary={BOUNDARY}",
    f'Multipart/Related; boundary="{BOUNDARY}"; Type="application/dicom"',
    f'multipart/related; type="\\"application/dicom\\""; boundary={BOUNDARY}',
    f"multipart/related; boundary={BOUNDARY}",  # no type: its parts are application/dicom
])
def test_the_stow_media_type_is_accepted_in_its_quoted_and_unquoted_forms(content_type: str) -> None:
    assert multipart_boundary(content_type) == BOUNDARY


@pytest.mark.parametrize("content_type", [
    None, "application/dicom", "image/png", f"multipart/form-data; boundary={BOUNDARY}",
    f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
    f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}',
])
def test_another_media_type_is_415(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        multipart_boundary(content_type)


@pytest.mark.parametrize("content_type", [
    'multipart/related; type="application/dicom"',
    'multipart/related; type="application/dicom"; boundary=""',
    'multipart/related; type="application/dicom"; boundary="' + "x" * 71 + '"',
    'multipart/related; type="application/dicom"; boundary="bad{boundary}"',
])
def test_a_missing_or_invalid_boundary_is_400(content_type: str) -> None:
    with pytest.raises(UserError) as raised:
        multipart_boundary(content_type)
    assert raised.value.status == 400


def test_parts_come_back_byte_for_byte_with_their_media_types() -> None:
    dx = generated_dx(seed=1)
    binary = (bytes(range(256)) * 8 + b"\r\n\r\n--" + b"\r" + b"\n"  # line endings and near-boundaries inside
              + b"\r\n--" + BOUNDARY.encode() + b"X\r\n" + b"\n--" + BOUNDARY.encode() + b"-\r\n")
    body = related_body(dx, binary) + b""
    parts = split_parts(body, BOUNDARY)
    assert [part.data for part in parts] == [dx, binary]
    assert {part.media_type for part in parts} == {"application/dicom"}
    assert split_parts(related_body(dx, media_type=None), BOUNDARY) == [Part(dx, None)]


@settings(max_examples=200, deadline=None)
@given(contents=st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\n--", b"\n-")), min_size=1, max_size=5),
       media=st.sampled_from(["application/dicom", None]))
def test_any_parts_come_back_as_sent(contents: list[bytes], media: str | None) -> None:
    assert split_parts(related_body(*contents, media_type=media), BOUNDARY) == [Part(c, media) for c in contents]


def test_bare_line_feeds_and_transfer_encodings_a_client_may_use_are_read() -> None:
    dx = generated_dx(seed=2)
    lf = related_body(dx).replace(b"\r\n--", b"\n--").replace(b"application/dicom\r\n\r\n", b"application/dicom\n\n")
    assert split_parts(lf, BOUNDARY) == [Part(dx, "application/dicom")]
    b64 = (b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\nContent-Transfer-Encoding: base64\r\n"
           b"\r\n" + base64.encodebytes(dx) + b"\r\n--" + BOUNDARY.encode() + b"--\r\n")
    assert split_parts(b64, BOUNDARY) == [Part(dx, "application/dicom")]
    uu = b64.replace(b"base64", b"x-uuencode")
    assert split_parts(uu, BOUNDARY) == [Part(None, "application/dicom")]  # refused by the store, not guessed at
    preamble = b"a preamble, ignored\r\n" + related_body(dx) + b"an epilogue, ignored"
    assert split_parts(preamble, BOUNDARY) == [Part(dx, "application/dicom")]


def test_a_large_body_is_split_without_copies_of_it_beyond_its_parts() -> None:
    """The standard library's parser held ~10x the body (540 MB at peak for one 36 MB instance)."""
    import tracemalloc

    big = os.urandom(8 << 20)
    body = related_body(big)
    tracemalloc.start()
    try:
        parts = split_parts(body, BOUNDARY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert parts[0].data == big
    assert peak < 1.5 * len(big)  # the part itself, and little else


@pytest.mark.parametrize("body", [
    b"",
    b"not multipart at all",
    b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\ncut short, no closing boundary",
    b"--" + BOUNDARY.encode() + b"--\r\n",  # only the closing delimiter: no parts
    related_body(b"x", boundary="another-boundary"),
])
def test_a_malformed_multipart_body_is_400(body: bytes) -> None:
    with pytest.raises(UserError) as raised:
        split_parts(body, BOUNDARY)
    assert raised.value.status == 400


def test_too_many_parts_are_refused_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge):
        split_parts(related_body(*([b"x"] * (stow.MAX_PARTS + 1))), BOUNDARY)


def test_study_uid_of_the_path_must_be_a_uid() -> None:
    assert study_uid("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    for bad in ("abc", "1..2", "01.2", "1." + "2" * 70, "1.2/3"):
        with pytest.raises(UserError):
            study_uid(bad)


def test_a_dx_is_stored_as_received_under_the_receivers_key(storage) -> None:
    dx = generated_dx(seed=2)
    sop_class, sop_instance, study = uids(dx)
    result = store_parts(storage, split_parts(related_body(dx), BOUNDARY))
    assert result.status == 200 and not result.failed
    key = dicom_instance_key(study, sop_instance)
    assert [(s.sop_class_uid, s.sop_instance_uid, s.key) for s in result.stored] == [(sop_class, sop_instance, key)]
    assert storage.get_bytes(INPUT_BUCKET, key) == dx
    response = result.to_dicom_json("http://pacs.example")
    (item,) = response[REFERENCED]["Value"]
    assert response[REFERENCED]["vr"] == "SQ" and FAILED not in response
    assert item[SOP_CLASS] == {"vr": "UI", "Value": [sop_class]}
    assert item[SOP_INSTANCE] == {"vr": "UI", "Value": [sop_instance]}
    series = item[RETRIEVE_URL]["Value"][0].split("/series/")[1].split("/")[0]
    assert item[RETRIEVE_URL] == {
        "vr": "UR", "Value": [f"http://pacs.example/studies/{study}/series/{series}/instances/{sop_instance}"]}


def test_a_part_that_is_not_dicom_fails_and_the_others_are_stored(storage) -> None:
    first, second = generated_dx(seed=3), generated_dx(seed=4)
    result = store_parts(storage, split_parts(related_body(first, b"%PDF-1.7 not an image", second), BOUNDARY))
    assert result.status == 202
    assert [s.sop_instance_uid for s in result.stored] == [uids(first)[1], uids(second)[1]]
    response = result.to_dicom_json("http://h")
    (failure,) = response[FAILED]["Value"]
    assert failure[FAILURE_REASON] == {"vr": "US", "Value": [0xC000]}
    assert "Value" not in failure[SOP_INSTANCE]  # nothing to reference: empty, not invented
    assert sorted(storage.list_keys(INPUT_BUCKET)) == sorted(s.key for s in result.stored)


def test_refused_parts_store_nothing_and_each_names_its_reason(storage) -> None:
    ct = ct_image(generated_dx(seed=6))
    cut = generated_dx(seed=7)[:-2000]  # the pixel data cut short
    png_part = Part(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")
    no_uid = generated_dx(seed=5).replace(b"\x08\x00\x18\x00UI", b"\x08\x00\x18\x10UI")  # SOPInstanceUID gone
    parts = [*split_parts(related_body(ct, cut, no_uid), BOUNDARY), png_part, Part(None, "multipart/mixed")]
    result = store_parts(storage, parts)
    assert result.status == 409 and not result.stored
    assert [f.reason for f in result.failed] == [stow.SOP_CLASS_NOT_SUPPORTED, stow.CANNOT_UNDERSTAND,
                                                 stow.DATASET_MISMATCH, stow.CANNOT_UNDERSTAND, stow.CANNOT_UNDERSTAND]
    assert (result.failed[0].sop_class_uid, result.failed[0].sop_instance_uid) == uids(ct)[:2]
    assert storage.list_keys(INPUT_BUCKET) == []


def test_the_study_of_the_path_accepts_its_own_instances_only(storage) -> None:
    study = "1.2.826.0.1.3680043.8.498.77"
    mine, other = with_study(generated_dx(seed=8), study), generated_dx(seed=9)
    result = store_parts(storage, split_parts(related_body(mine, other), BOUNDARY), study=study)
    assert result.status == 202
    assert [s.key for s in result.stored] == [dicom_instance_key(study, uids(mine)[1])]
    assert [f.reason for f in result.failed] == [stow.DATASET_MISMATCH]
    assert storage.list_keys(INPUT_BUCKET) == [dicom_instance_key(study, uids(mine)[1])]
    assert result.to_dicom_json("http://h", study)[RETRIEVE_URL] == {"vr": "UR", "Value": [f"http://h/studies/{study}"]}


class _BrokenStorage:
    """S3 refusing every write (what a full or unreachable MinIO looks like to the store)."""

    def __init__(self) -> None:
        self.writes = 0

    def put_bytes(self, *args: object, **kwargs: object) -> str:
        self.writes += 1
        raise ConnectionError("S3 unreachable")


def test_storage_down_is_out_of_resources_and_a_503_not_the_senders_fault() -> None:
    storage = _BrokenStorage()
    result = store_parts(storage, [Part(generated_dx(seed=10)), Part(generated_dx(seed=11))])  # type: ignore[arg-type]
    assert [f.reason for f in result.failed] == [stow.OUT_OF_RESOURCES, stow.OUT_OF_RESOURCES]
    assert result.status == 503 and storage.writes == 1  # the second is not tried against a storage that is down


def test_logs_name_no_uid_and_no_patient_attribute(storage, caplog: pytest.LogCaptureFixture) -> None:
    dx = generated_dx(seed=12)
    with caplog.at_level(logging.INFO, logger="shared.pacs.stow"):
        result = store_parts(storage, [Part(dx), Part(ct_image(dx))])
    text = caplog.text
    assert "stored 1 instance(s)" in text and "obj:" in text
    for value in (*uids(dx), *IDENTIFIERS, result.stored[0].key):
        assert value not in text


class _MemoryStorage:
    """Writes kept in a dict: enough for the fuzz test, which checks only that nothing but a 4xx is raised."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str | None = None) -> str:
        self.objects[key] = data
        return "etag"


_SEED_DX = generated_dx(rows=16, columns=16, seed=50)
_PART_HEADERS = st.sampled_from([b"", b"Content-Type: application/dicom\r\n", b"Content-Transfer-Encoding: base64\r\n",
                                 b"Content-Transfer-Encoding: quoted-printable\r\n",
                                 b"Content-Transfer-Encoding: x-uuencode\r\n", b"Content-Type: multipart/mixed\r\n",
                                 b"Content-Type: application/dicom; charset=\xff\r\n", b"broken header\r\n"])


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on the values it is fed
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.tuples(_PART_HEADERS, st.one_of(st.binary(max_size=300), st.builds(
    lambda at, value: _SEED_DX[:at] + value + _SEED_DX[at + len(value):],
    st.integers(0, len(_SEED_DX)), st.binary(min_size=1, max_size=8)))), max_size=4),
    tail=st.sampled_from([b"--" + BOUNDARY.encode() + b"--\r\n", b"", b"--" + BOUNDARY.encode() + b"\r\n"]))
def test_no_body_makes_the_store_raise_anything_but_a_4xx(parts: list[tuple[bytes, bytes]], tail: bytes) -> None:
    body = b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + head + b"\r\n" + data + b"\r\n" for head, data in parts)
    try:
        result = store_parts(_MemoryStorage(), split_parts(body + tail, BOUNDARY))  # type: ignore[arg-type]
    except UserError as exc:
        assert 400 <= exc.status < 500
        return
    assert result.status in (200, 202, 409)
    assert result.to_dicom_json("http://h")
