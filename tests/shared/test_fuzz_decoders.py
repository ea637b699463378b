"""Property-based: no bytes, no DICOM attribute value and no event body makes a decoder or parser raise anything but
the project's 4xx errors (a 5xx would be our fault; the HTTP edge turns any other exception into one)."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.dicom import deidentify_bytes
from shared.errors import TriageError
from shared.events import event_data, event_from_http
from shared.imaging import decode_image
from shared.ingest import object_from_event
from shared.names import FEEDBACK_RECEIVED, MODEL_REGISTERED, OBJECT_CREATED, PREDICTION_CREATED
from shared.s3_events import parse_notification
from tests.functions.tiny_model import dicom_bytes, jpeg_bytes, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on the values it is fed
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECRET = "fuzz-secret"
SEEDS = {"png": png_bytes(16), "png16": png_bytes(16, bits=16), "jpeg": jpeg_bytes(16), "dicom": dicom_bytes(16)}
CONTENT_TYPES = st.sampled_from([None, "image/png", "image/jpeg", "application/dicom", "application/octet-stream",
                                 "image/gif", "text/plain; charset=utf-8", ""])


def assert_4xx(call, *args, **kwargs) -> None:
    """`call` returns, or raises a TriageError whose status is a 4xx."""
    try:
        call(*args, **kwargs)
    except TriageError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc.message)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid PNG / JPEG / DICOM with bytes overwritten, cut short or spliced: what a broken upload looks like."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


@FUZZ
@given(data=st.binary(max_size=512), content_type=CONTENT_TYPES)
def test_any_bytes_decode_or_give_a_4xx(data: bytes, content_type: str | None) -> None:
    assert_4xx(decode_image, data, content_type, max_pixels=1_000_000)


@FUZZ
@given(data=mutated(), content_type=CONTENT_TYPES)
def test_broken_images_decode_or_give_a_4xx(data: bytes, content_type: str | None) -> None:
    assert_4xx(decode_image, data, content_type, max_pixels=1_000_000)
    assert_4xx(decode_image, data, "application/dicom", max_pixels=1_000_000)


@FUZZ
@given(data=mutated())
def test_broken_dicom_deidentifies_or_gives_a_4xx(data: bytes) -> None:
    assert_4xx(deidentify_bytes, data, secret=SECRET)


_TEXT = st.text(st.characters(codec="ascii", exclude_characters="\\\0"), max_size=12)
_ATTRIBUTES = {
    "WindowCenter": st.one_of(_TEXT, st.floats(allow_nan=True), st.integers(-70000, 70000)),
    "WindowWidth": st.one_of(_TEXT, st.floats(allow_nan=True), st.integers(-70000, 70000)),
    "VOILUTFunction": st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID", "WEIRD", "", "linear"]),
    "RescaleSlope": st.one_of(_TEXT, st.floats(allow_nan=True, allow_infinity=True)),
    "RescaleIntercept": st.one_of(_TEXT, st.floats(allow_nan=True, allow_infinity=True)),
    "BitsStored": st.integers(0, 40),
    "HighBit": st.integers(0, 40),
    "PixelRepresentation": st.integers(0, 3),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR",
                                                  "HSV", ""]),
    "SamplesPerPixel": st.integers(0, 4),
    "NumberOfFrames": st.one_of(_TEXT, st.integers(-2, 5)),
    "Rows": st.integers(0, 40),
    "Columns": st.integers(0, 40),
    "BurnedInAnnotation": st.one_of(_TEXT, st.sampled_from(["YES", "NO"])),
}


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(sorted(_ATTRIBUTES)), st.none(), max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({key: _ATTRIBUTES[key] for key in keys})))
def test_any_attribute_values_decode_or_give_a_4xx(changes: dict[str, object]) -> None:
    ds = pydicom.dcmread(io.BytesIO(SEEDS["dicom"]))
    for keyword, value in changes.items():
        try:
            setattr(ds, keyword, value)
        except (ValueError, TypeError, OverflowError):
            assume(False)  # pydicom itself refuses to hold the value: nothing to send
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=True)
    except (ValueError, TypeError, OverflowError, AttributeError, KeyError):
        assume(False)
    assert_4xx(decode_image, buffer.getvalue(), "application/dicom", max_pixels=1_000_000)
    assert_4xx(deidentify_bytes, buffer.getvalue(), secret=SECRET)


@settings(max_examples=20, deadline=None)
@given(depth=st.integers(1, 120), undefined_length=st.booleans())
def test_any_nesting_depth_decodes_or_gives_a_4xx(depth: int, undefined_length: bool) -> None:
    ds = pydicom.dcmread(io.BytesIO(SEEDS["dicom"]))
    item = Dataset()
    item.CodeValue = "X"
    for _ in range(depth):
        outer = Dataset()
        outer.ConceptCodeSequence = Sequence([item])
        outer["ConceptCodeSequence"].is_undefined_length = undefined_length
        item = outer
    ds.ProcedureCodeSequence = Sequence([item])
    ds["ProcedureCodeSequence"].is_undefined_length = undefined_length
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert_4xx(decode_image, buffer.getvalue(), max_pixels=1_000_000)
    assert_4xx(deidentify_bytes, buffer.getvalue(), secret=SECRET)


# --- events: CloudEvents (binary and structured) and S3 notifications -------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
EVENT_TYPES = st.sampled_from([OBJECT_CREATED, PREDICTION_CREATED, FEEDBACK_RECEIVED, MODEL_REGISTERED, "other"])
FIELDS = ["bucket", "key", "etag", "size", "event_time", "request_id", "label", "probability", "version", "run_id"]


@st.composite
def event_bodies(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    data = draw(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6) | JSON)
    attributes = {"specversion": "1.0", "id": draw(JSON | st.just("1")), "source": "minio:inference-inputs",
                  "type": draw(EVENT_TYPES | JSON), "time": draw(JSON | st.just("2026-01-01T00:00:00Z"))}
    if draw(st.booleans()):
        body = {**attributes, "data": data}
        return {"content-type": "application/cloudevents+json"}, json.dumps(body).encode()
    headers = {f"ce-{name}": str(value) for name, value in attributes.items()}
    return {**headers, "content-type": "application/json"}, json.dumps(data).encode()


@FUZZ
@given(request=event_bodies())
def test_any_cloudevent_parses_or_gives_a_4xx(request: tuple[dict[str, str], bytes]) -> None:
    headers, body = request

    def parse() -> None:
        event = event_from_http(headers, body)
        event_data(event)
        if event["type"] == OBJECT_CREATED:
            obj = object_from_event(event)
            assert isinstance(obj.key, str) and isinstance(obj.bucket, str) and isinstance(obj.etag, str)

    assert_4xx(parse)


@FUZZ
@given(raw=st.binary(max_size=128))
def test_any_bytes_as_a_cloudevent_give_a_4xx(raw: bytes) -> None:
    assert_4xx(event_from_http, {"content-type": "application/cloudevents+json"}, raw)
    assert_4xx(event_from_http, {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"}, raw)


S3_OBJECT = JSON | st.dictionaries(st.sampled_from(["key", "eTag", "etag", "size"]), JSON)
S3_PART = JSON | st.fixed_dictionaries({"bucket": JSON | st.fixed_dictionaries({"name": JSON}), "object": S3_OBJECT})
RECORD = st.fixed_dictionaries({"eventName": JSON | st.just("s3:ObjectCreated:Put"), "s3": S3_PART})


@FUZZ
@given(record=RECORD, wrap=st.booleans())
def test_any_s3_notification_parses_or_gives_a_4xx(record: dict, wrap: bool) -> None:
    document = {"EventName": "s3:ObjectCreated:Put", "Records": [record]}
    if wrap:
        document = {"Type": "Notification", "Message": json.dumps(document)}

    def parse() -> None:
        for created in parse_notification(json.dumps(document)).records:
            assert all(isinstance(value, str) for value in (created.bucket, created.key, created.etag))

    assert_4xx(parse)


@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_the_seeds_are_valid(kind: str) -> None:
    """The mutations start from images that decode, so a 4xx above is caused by the mutation."""
    assert np.isfinite(decode_image(SEEDS[kind])).all()
