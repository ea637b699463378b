from __future__ import annotations

import pytest

from infra_pulumi import manifests
from tests.infra.manifests.example import SETTINGS


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return manifests.all_objects(SETTINGS)
