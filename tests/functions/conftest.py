"""Fixtures of the serving tests: a tiny exported model and functions-framework test clients for each function."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from shared.api_tokens import API_FUNCTIONS
from shared.config import PROJECT_ROOT
from shared.token_store import FileTokenStore
from tests.functions.event_sink import EventSink
from tests.functions.image_server import image_server
from tests.functions.tiny_model import build_tiny_model_dir
from tests.local_http import LocalServer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight 28x28 ViT exported by training_jobs.export (model.onnx, model.int8.onnx, card)."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model") / "model")


def api_token_table(path: Path) -> tuple[FileTokenStore, str]:
    """A token table file with one active token (client "tests"), or the one already there; → (store, token)."""
    store = FileTokenStore(path)
    token_file = path.with_name(path.name + ".tests-token")  # the plaintext, for this test only
    if not token_file.exists():
        token_file.write_text(store.update(lambda table: table.add("tests", now="test")[::-1]))  # → (token, table)
    return store, token_file.read_text()


@pytest.fixture
def api_tokens(tmp_path: Path) -> tuple[FileTokenStore, str]:
    """The token table of this test (the one `client_for` uses) and its token for client "tests"."""
    return api_token_table(tmp_path / "api-tokens.json")


@pytest.fixture
def client_for(
    tiny_model_dir: Path, s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Any]:
    """client_for("predict", **env) → a Flask test client of functions/<name>/main.py serving the tiny model.

    The client's `.module` is the function's loaded main module (to set its explicit URL allow-list). For predict
    and explain, `.api_tokens` is the token table file (API_TOKENS_URI) and `.api_token` a token of client "tests",
    which every request presents unless `authorized=False` (then no Authorization header is sent by default).
    """

    def make(name: str, *, authorized: bool = True, **env: str) -> Any:
        monkeypatch.setenv("MODEL_URI", str(tiny_model_dir))
        monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "model-cache"))
        monkeypatch.setenv("S3_ENDPOINT_URL", s3_server)  # the request index goes to the local S3 server
        # Each test imports the function anew: its records from a thread, not a writer child per import (the child
        # is tested in tests/shared/test_record_writer.py and by every stack test, where functions run as served).
        monkeypatch.setenv("REQUEST_RECORD_WRITER", "thread")
        tokens, token = api_token_table(tmp_path / "api-tokens.json") if name in API_FUNCTIONS else (None, None)
        if tokens is not None:  # generous defaults: only the rate-limit tests meet the limit
            for key, value in {"API_TOKENS_URI": str(tokens.path), "API_TOKENS_REFRESH_S": "0.2",
                               "API_RATE_PER_S": "1000", "API_RATE_BURST": "1000"}.items():
                monkeypatch.setenv(key, value)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        source = PROJECT_ROOT / "functions" / name / "main.py"
        app = functions_framework.create_app(target=name, source=str(source))
        client = app.test_client()
        client.module = sys.modules["main"]  # create_app registers the function file as module "main"
        client.api_tokens, client.api_token = tokens, token
        if token is not None and authorized:
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
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
