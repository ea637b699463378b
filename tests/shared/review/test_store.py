"""Cases, images and heatmaps read from the local S3 server the way the review function reads them."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.errors import ImageError, InvalidField, NotFound, TriageError
from shared.names import FEEDBACK_BUCKET, INPUT_BUCKET, RESULT_BUCKET, feedback_key, result_key
from tests.shared.review.cases import png, put_case


def test_every_result_is_a_case_with_its_label_and_nothing_else_is(store, storage):
    first = put_case(storage, "ward-a/one.png", urgent=True, label="pneumonia")
    put_case(storage, "two.png")
    put_case(storage, "bad.png", status="error")
    storage.put_json(RESULT_BUCKET, "not-a-result.json", {"hello": 1})
    storage.put_json(RESULT_BUCKET, "other.png.json", {**first, "key": "elsewhere.png"})  # claims another key
    storage.put_json(FEEDBACK_BUCKET, feedback_key(first["request_id"]),
                     {"request_id": first["request_id"], "label": "pneumonia", "reviewer": "ann", "time": "t"})

    cases = {c.key: c for c in store.cases()}
    assert set(cases) == {"ward-a/one.png", "two.png", "bad.png"}
    assert cases["ward-a/one.png"].review.reviewer == "ann" and cases["two.png"].review is None
    assert cases["bad.png"].status == "failed"


def test_a_changed_result_or_a_new_label_shows_on_the_next_listing(store, storage):
    body = put_case(storage, "one.png")
    assert store.cases()[0].urgent is False
    storage.put_json(RESULT_BUCKET, result_key("one.png"), {**body, "urgent": True})
    storage.put_json(FEEDBACK_BUCKET, feedback_key(body["request_id"]),
                     {"request_id": body["request_id"], "label": "normal", "reviewer": "bob"})
    [case] = store.cases()
    assert case.urgent is True and case.review.reviewer == "bob"
    storage.delete(RESULT_BUCKET, result_key("one.png"))
    assert store.cases() == []


def test_one_case_and_unknown_or_bad_keys(store, storage):
    put_case(storage, "one.png")
    assert store.case("one.png").key == "one.png"
    with pytest.raises(NotFound):
        store.case("missing.png")
    for bad in ("", "a\nb", "x" * 1025, None):
        with pytest.raises(InvalidField):
            store.case(bad)


def test_the_image_leaves_as_a_fresh_png_of_its_pixels_only(store, storage):
    put_case(storage, "one.png", image=png(40, 32, text={"PatientName": "DOE^JANE"}))
    data = store.image_png("one.png", max_pixels=10_000)
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size, image.mode) == ("PNG", (40, 32), "L")
    assert b"DOE^JANE" not in data and not image.info.get("PatientName")
    assert Image.open(io.BytesIO(store.heatmap_png("one.png"))).format == "PNG"


def test_a_replaced_input_is_a_409_and_a_failed_case_has_no_heatmap(store, storage):
    put_case(storage, "one.png")
    storage.put_bytes(INPUT_BUCKET, "one.png", png(seed=4), "image/png")  # a new version, not yet triaged
    with pytest.raises(TriageError) as raised:
        store.image_png("one.png", max_pixels=10_000)
    assert raised.value.status == 409
    put_case(storage, "bad.png", image=b"not an image", status="error")
    with pytest.raises(NotFound):
        store.heatmap_png("bad.png")
    with pytest.raises(ImageError):
        store.image_png("bad.png", max_pixels=10_000)
