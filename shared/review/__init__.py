"""The radiologist's worklist (the `review` function): sign-in, the ordered worklist, case views and labels.

`worklist` orders and filters cases (pure); `store` reads them, their images and heatmaps from S3; `sessions`
holds the reviewers' hashed tokens, session cookies, CSRF tokens and the sign-in rate limit; `labels` sends a
label through the feedback path; `web` serves all of it over HTTP.
"""

from shared.review.labels import LabelRequest, parse_label, submit_label
from shared.review.sessions import FailureLimiter, ReviewerKeys, SessionCodec, TooManyAttempts
from shared.review.store import CaseStore, check_case_key
from shared.review.web import MOUNT, Page, ReviewApp
from shared.review.worklist import Case, Review, WorklistFilter, case_from_result, counts, worklist

__all__ = [
    "MOUNT",
    "Case",
    "CaseStore",
    "FailureLimiter",
    "LabelRequest",
    "Page",
    "Review",
    "ReviewApp",
    "ReviewerKeys",
    "SessionCodec",
    "TooManyAttempts",
    "WorklistFilter",
    "case_from_result",
    "check_case_key",
    "counts",
    "parse_label",
    "submit_label",
    "worklist",
]
