"""Fixtures of the serving library's tests: the tiny exported model, loaded once per module."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.model import TriageModel
from tests.functions.tiny_model import build_tiny_model_dir


@pytest.fixture(scope="module")
def loaded_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TriageModel:
    """A random-weight 28x28 ViT exported by training_jobs.export, loaded (ingest and the model run it directly)."""
    model_dir = build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model") / "model")
    loaded = TriageModel(Settings(model_uri=str(model_dir), model_cache_dir=tmp_path_factory.mktemp("cache")))
    loaded.load()
    return loaded
