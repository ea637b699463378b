"""The worklist's order, filters and counts (pure: cases in, cases out)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.errors import InvalidField
from shared.review.worklist import Review, WorklistFilter, case_from_result, counts, worklist
from tests.shared.review.cases import NOW, result

MAX_WAIT_S = 3600.0


def case(key: str, *, minutes_ago: float, reviewed_by: str | None = None, **fields):
    review = Review("normal", reviewed_by, "2026-11-26T11:59:00Z") if reviewed_by else None
    return case_from_result(result(key, request_id=f"id-{key}", uploaded_at=NOW - timedelta(minutes=minutes_ago),
                                   **fields), review)


def keys(cases) -> list[str]:
    return [c.key for c in cases]


def test_urgent_unreviewed_first_then_those_past_the_cap_then_the_rest_oldest_first_reviewed_last():
    cases = [
        case("fresh-normal", minutes_ago=5),
        case("old-reviewed", minutes_ago=300, reviewed_by="ann"),
        case("urgent-new", minutes_ago=1, urgent=True, label="pneumonia", probability=0.97),
        case("overdue-normal", minutes_ago=90),
        case("urgent-old", minutes_ago=10, urgent=True, label="pneumonia", probability=0.95),
        case("older-normal", minutes_ago=30),
        case("failed", minutes_ago=2, status="error"),
        case("new-reviewed", minutes_ago=20, reviewed_by="bob"),
        case("overdue-older", minutes_ago=200),
    ]
    ordered = worklist(cases, now=NOW, max_wait_s=MAX_WAIT_S)
    assert keys(ordered) == ["urgent-old", "urgent-new", "overdue-older", "overdue-normal", "older-normal",
                             "fresh-normal", "failed", "new-reviewed", "old-reviewed"]
    assert [c.group(NOW, MAX_WAIT_S) for c in ordered][:3] == ["urgent", "urgent", "overdue"]


def test_a_normal_case_past_the_cap_goes_ahead_of_fresher_ones_but_not_ahead_of_urgent():
    cases = [case("fresh", minutes_ago=1), case("waited", minutes_ago=61), case("urgent", minutes_ago=0, urgent=True)]
    assert keys(worklist(cases, now=NOW, max_wait_s=MAX_WAIT_S)) == ["urgent", "waited", "fresh"]
    # Under the cap it is simply the older of two unreviewed cases: still ahead, by age.
    assert keys(worklist(cases, now=NOW, max_wait_s=7200)) == ["urgent", "waited", "fresh"]
    assert case("waited", minutes_ago=61).group(NOW, 7200) == "waiting"


def test_items_carry_what_the_page_and_scripts_read():
    item = case("a.png", minutes_ago=2, urgent=True, label="pneumonia", probability=0.93).to_json(NOW, MAX_WAIT_S)
    assert {"key", "label", "probability", "urgent", "status", "uploaded_at", "waited_s", "model",
            "reviewed_by"} <= set(item)
    assert (item["status"], item["waited_s"], item["model"], item["reviewed_by"]) == (
        "unreviewed", 120.0, {"name": "xray-vit", "version": "7"}, None)
    reviewed = case("b.png", minutes_ago=2, reviewed_by="ann").to_json(NOW, MAX_WAIT_S)
    assert (reviewed["status"], reviewed["reviewed_by"], reviewed["waited_s"]) == ("reviewed", "ann", 60.0)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"status": "unreviewed"}, ["urgent", "fresh", "unassessable"]),
        ({"status": "reviewed"}, ["done"]),
        ({"status": "failed"}, ["failed"]),
        ({"label": "pneumonia"}, ["urgent"]),
        ({"assessable": "false"}, ["unassessable", "failed"]),
        ({"model": "8"}, ["fresh"]),
        ({"date": "2026-11-25"}, ["done"]),
        ({}, ["urgent", "fresh", "unassessable", "failed", "done"]),
    ],
)
def test_filters(args, expected):
    cases = [
        case("urgent", minutes_ago=3, urgent=True, label="pneumonia"),
        case("fresh", minutes_ago=2, version="8"),
        case("unassessable", minutes_ago=1, assessable=False),
        case("failed", minutes_ago=1, status="error"),
        case("done", minutes_ago=60 * 24, reviewed_by="ann"),
    ]
    kept = worklist(cases, now=NOW, max_wait_s=MAX_WAIT_S, keep=WorklistFilter.parse(args))
    assert keys(kept) == expected


@pytest.mark.parametrize(
    ("args", "field"),
    [({"status": "open"}, "status"), ({"label": "cancer"}, "label"), ({"assessable": "yes"}, "assessable"),
     ({"model": "<b>"}, "model"), ({"date": "26/11/2026"}, "date"), ({"sort": "key"}, "sort")],
)
def test_a_bad_filter_is_a_422_naming_it(args, field):
    with pytest.raises(InvalidField, match=f"^{field}:"):
        WorklistFilter.parse(args)


def test_counts_cover_every_case_whatever_the_filter():
    cases = [case("u", minutes_ago=1, urgent=True), case("o", minutes_ago=61), case("w", minutes_ago=1),
             case("r", minutes_ago=1, reviewed_by="ann"), case("f", minutes_ago=1, status="error"),
             case("n", minutes_ago=2, assessable=False)]
    assert counts(cases, now=NOW, max_wait_s=MAX_WAIT_S) == {
        "total": 6, "unreviewed": 4, "urgent": 1, "overdue": 1, "waiting": 2, "failed": 1, "reviewed": 1,
        "not_assessable": 1}


def test_a_not_assessable_case_shows_the_gates_reason_and_no_heatmap():
    item = case("n", minutes_ago=2, assessable=False).to_json(NOW, MAX_WAIT_S)
    assert (item["assessable"], item["label"], item["probability"], item["urgent"]) == (False, None, None, False)
    assert (item["reason"], item["reason_code"]) == ("not a chest film", "out_of_distribution")
    assert item["has_heatmap"] is False and item["group"] == "waiting"
    assessable = case("a", minutes_ago=2).to_json(NOW, MAX_WAIT_S)
    assert assessable["assessable"] is True and assessable["reason"] is None and assessable["has_heatmap"] is True
