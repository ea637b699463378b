"""The radiologist's worklist: ingest results joined with their labels, in the order a reader should take them.

Order (issue 9): urgent and unreviewed, oldest first; then unreviewed cases that have waited longer than the cap
(`REVIEW_MAX_WAIT_MIN`: a false negative waits in the normal queue, and urgent cases must not starve it), oldest
first; then the other unreviewed, oldest first; then results that failed (nothing to label); reviewed last, the
most recently uploaded first. A case the gate found not assessable (no label, never urgent) waits with the other
unreviewed ones, shows its reason, and is counted in `not_assessable` as well. Pure functions of the cases and the
clock: no storage, no HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from shared.errors import InvalidField
from shared.names import CLASS_NAMES
from shared.timestamps import parse_utc, utc_iso

__all__ = ["GROUPS", "STATUSES", "Case", "Review", "WorklistFilter", "case_from_result", "counts", "worklist"]

STATUSES = ("unreviewed", "reviewed", "failed", "all")
GROUPS = ("urgent", "overdue", "waiting", "failed", "reviewed")  # display order
_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class Review:
    """The label of a case: who, what, when, and the other reviewers' differing labels."""

    label: str
    reviewer: str
    time: str | None
    second_opinions: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Review | None:
        if record.get("label") not in CLASS_NAMES:
            return None
        opinions = tuple({k: o.get(k) for k in ("label", "reviewer", "time")}
                         for o in record.get("second_opinions") or [] if isinstance(o, dict))
        return cls(str(record["label"]), str(record.get("reviewer") or ""), record.get("time"), opinions)


@dataclass(frozen=True)
class Case:
    """One ingest result (`inference-results/<key>.json`) and its label, if any."""

    key: str
    request_id: str | None
    result_status: str  # ok | error
    label: str | None
    probability: float | None
    threshold: float | None
    urgent: bool
    assessable: bool
    reason: str | None  # the gate's human text (`reason.message`), shown beside "not assessable"
    model: dict[str, Any]
    uploaded_at: datetime | None
    completed_at: datetime | None
    upload_to_result_s: float | None
    error: str | None = None
    has_heatmap: bool = False
    review: Review | None = field(default=None, compare=False)
    reason_code: str | None = None  # the gate's machine code (`reason.code`: not_grayscale, flat_image, ...)

    @property
    def arrived(self) -> datetime | None:
        return self.uploaded_at or self.completed_at

    @property
    def status(self) -> str:
        if self.review is not None:
            return "reviewed"
        return "failed" if self.result_status != "ok" else "unreviewed"

    def waited_s(self, now: datetime) -> float | None:
        """Seconds since upload: until now while unreviewed, until the label once reviewed."""
        if self.arrived is None:
            return None
        end = parse_utc(self.review.time) if self.review and self.review.time else None
        return round(max(0.0, ((end or now) - self.arrived).total_seconds()), 1)

    def group(self, now: datetime, max_wait_s: float) -> str:
        if self.status != "unreviewed":
            return self.status
        if self.urgent:
            return "urgent"
        waited = self.waited_s(now)
        return "overdue" if waited is not None and waited > max_wait_s else "waiting"

    def to_json(self, now: datetime, max_wait_s: float) -> dict[str, Any]:
        review = self.review
        return {
            "key": self.key,
            "request_id": self.request_id,
            "label": self.label,
            "probability": self.probability,
            "threshold": self.threshold,
            "urgent": self.urgent,
            "assessable": self.assessable,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "status": self.status,
            "group": self.group(now, max_wait_s),
            "result_status": self.result_status,
            "error": self.error,
            "uploaded_at": utc_iso(self.uploaded_at) if self.uploaded_at else None,
            "completed_at": utc_iso(self.completed_at) if self.completed_at else None,
            "waited_s": self.waited_s(now),
            "upload_to_result_s": self.upload_to_result_s,
            "model": self.model,
            "has_heatmap": self.has_heatmap,
            "reviewed_by": review.reviewer if review else None,
            "review": None if review is None else {
                "label": review.label, "reviewer": review.reviewer, "time": review.time,
                "second_opinions": list(review.second_opinions)},
        }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _reason(value: Any) -> tuple[str | None, str | None]:
    """(human text, code) of a result's `reason`: `{"code", "message"}` (the gate's) or a bare string."""
    if isinstance(value, dict):
        code, message = value.get("code"), value.get("message")
        return (str(message) if message else (str(code) if code else None)), (str(code) if code else None)
    return (str(value), None) if value else (None, None)


def case_from_result(result: Mapping[str, Any], review: Review | None = None) -> Case:
    """A Case from a stored result JSON (ok or error result of `shared.ingest`)."""
    model = result.get("model") if isinstance(result.get("model"), dict) else {}
    error = result.get("error") if isinstance(result.get("error"), dict) else None
    ok = result.get("status") == "ok"
    label = result.get("label") if result.get("label") in CLASS_NAMES else None
    reason, reason_code = _reason(result.get("reason"))
    heatmap = result.get("heatmap")
    return Case(
        key=str(result["key"]),
        request_id=str(result["request_id"]) if result.get("request_id") else None,
        result_status="ok" if ok else "error",
        label=label,
        probability=_number(result.get("probability")),
        threshold=_number(result.get("threshold")),
        urgent=ok and result.get("urgent") is True,
        assessable=ok and result.get("assessable", True) is not False and label is not None,
        reason=reason,
        model={"name": model.get("name"), "version": None if model.get("version") is None else str(model["version"])},
        uploaded_at=parse_utc(result.get("uploaded_at")) if isinstance(result.get("uploaded_at"), str) else None,
        completed_at=parse_utc(result.get("completed_at")) if isinstance(result.get("completed_at"), str) else None,
        upload_to_result_s=_number(result.get("upload_to_result_s")),
        error=str(error.get("message")) if error else None,
        has_heatmap=ok and isinstance(heatmap, dict) and heatmap.get("status") not in ("pending", "none"),
        review=review,
        reason_code=reason_code,
    )


@dataclass(frozen=True)
class WorklistFilter:
    """`?status=unreviewed|reviewed|failed|all&label=pneumonia|normal&assessable=false&model=<version>&date=YYYY-MM-DD`."""

    status: str = "all"
    label: str | None = None
    not_assessable: bool = False
    model_version: str | None = None
    day: date | None = None

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> WorklistFilter:
        """From query arguments; 422 naming the argument for any value it cannot use."""
        unknown = sorted(set(args) - {"status", "label", "assessable", "model", "date"})
        if unknown:
            raise InvalidField(f"{unknown[0]}: not a worklist filter (have status, label, assessable, model, date)")
        status = args.get("status") or "all"
        if status not in STATUSES:
            raise InvalidField(f"status: expected one of {', '.join(STATUSES)}")
        label = args.get("label") or None
        if label is not None and label not in CLASS_NAMES:
            raise InvalidField(f"label: expected one of {', '.join(CLASS_NAMES)}")
        assessable = (args.get("assessable") or "").lower()
        if assessable not in ("", "false", "any"):
            raise InvalidField("assessable: expected false (only the cases the model could not judge) or any")
        version = args.get("model") or None
        if version is not None and not _VERSION.match(version):
            raise InvalidField("model: expected a model version (letters, digits, . _ -)")
        day = None
        if args.get("date"):
            try:
                day = date.fromisoformat(args["date"])
            except ValueError as exc:
                raise InvalidField("date: expected a day as YYYY-MM-DD") from exc
        return cls(status, label, assessable == "false", version, day)

    def keeps(self, case: Case) -> bool:
        if self.status != "all" and case.status != self.status:
            return False
        if self.label is not None and case.label != self.label:
            return False
        if self.not_assessable and case.assessable:
            return False
        if self.model_version is not None and case.model.get("version") != self.model_version:
            return False
        return self.day is None or (case.arrived is not None and case.arrived.date() == self.day)


def _sort_key(case: Case, now: datetime, max_wait_s: float) -> tuple[int, float]:
    group = GROUPS.index(case.group(now, max_wait_s))
    arrived = case.arrived.timestamp() if case.arrived else float("inf")
    return group, (-arrived if group == GROUPS.index("reviewed") else arrived)


def worklist(cases: Iterable[Case], *, now: datetime, max_wait_s: float,
             keep: WorklistFilter = WorklistFilter()) -> list[Case]:
    """The cases `keep` lets through, in display order (module docstring); ties broken by key."""
    kept = sorted((c for c in cases if keep.keeps(c)), key=lambda c: c.key)
    return sorted(kept, key=lambda c: _sort_key(c, now, max_wait_s))


def counts(cases: Iterable[Case], *, now: datetime, max_wait_s: float) -> dict[str, int]:
    """How many cases in each group, and in all (the numbers at the top of the worklist); `not_assessable` counts
    the triaged cases the gate refused, across the groups."""
    tally = dict.fromkeys(GROUPS, 0)
    total = not_assessable = 0
    for case in cases:
        tally[case.group(now, max_wait_s)] += 1
        total += 1
        not_assessable += int(case.result_status == "ok" and not case.assessable)
    return {"total": total, "unreviewed": tally["urgent"] + tally["overdue"] + tally["waiting"], **tally,
            "not_assessable": not_assessable}
