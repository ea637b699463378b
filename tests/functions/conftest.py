"""Fixtures of the serving tests: a tiny exported model and functions-framework test clients for each function."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from shared.config import PROJECT_ROOT
from tests.functions.event_sink import EventSink
from tests.functions.image_server import image_server
from tests.functions.tiny_model import build_tiny_model_dir
from tests.local_http import LocalServer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight 28x28 ViT exported by training_jobs.export (model.onnx, model.int8.onnx, card)."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture
def client_for(
    tiny_model_dir: Path, s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Any]:
    """client_for("predict", **env) → a Flask test client of functions/<name>/main.py serving the tiny model.

    The client's `.module` is the function's loaded main module (to set its explicit URL allow-list).
    """

    def make(name: str, **env: str) -> Any:
        monkeypatch.setenv("MODEL_URI", str(tiny_model_dir))
        monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "model-cache"))
        monkeypatch.setenv("S3_ENDPOINT_URL", s3_server)  # the request index goes to the local S3 server
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        source = PROJECT_ROOT / "functions" / name / "main.py"
        app = functions_framework.create_app(target=name, source=str(source))
        client = app.test_client()
        client.module = sys.modules["main"]  # create_app registers the function file as module "main"
        return client

    return make


@pytest.fixture
def sink() -> Iterator[EventSink]:
    """A real local HTTP CloudEvents sink (K_SINK) that records what it is sent."""
    server = EventSink()
    yield server
    server.close()


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    """A local HTTP server of test images (with redirects) for the {"url": ...} input form."""
    with image_server() as running:
        yield running
