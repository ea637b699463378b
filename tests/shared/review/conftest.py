"""The review package's fixture: a CaseStore on the local S3 server (the suite's `storage`)."""

from __future__ import annotations

import pytest

from shared.review.store import CaseStore


@pytest.fixture
def store(storage):
    cases = CaseStore(storage, readers=2)
    yield cases
    cases.close()
