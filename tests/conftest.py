"""Fixtures shared by the whole suite: a local S3 server (moto) and a tiny SYNTHETIC phantom data set."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "minioadmin",
    "AWS_SECRET_ACCESS_KEY": "minioadmin",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Endpoint URL of moto's S3 server on 127.0.0.1 (a free port), with MinIO's default credentials in the env.

    One server per session: tests use their own bucket names or prefixes, or reset it via /moto-api/reset.
    """
    import logging

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    from triage.stack.atomic_writes import AtomicObjectWrites

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    saved = {name: os.environ.get(name) for name in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    # moto's own server (ThreadedMotoServer), with conditional writes atomic per object as in the stack's S3.
    app = AtomicObjectWrites(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def phantom_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MedMNIST-style SYNTHETIC .npz: 28x28, train 60 / val 20 / test 20, both classes in every split."""
    from training_jobs.phantom import write_phantom_npz

    return write_phantom_npz(tmp_path_factory.mktemp("phantom") / "phantom.npz", n_train=60, n_val=20, n_test=20)


@pytest.fixture
def storage(s3_server: str):
    """A `shared.storage.Storage` on the shared local S3 server, emptied, with the design's buckets."""
    import httpx

    from shared.config import Settings
    from shared.storage import Storage

    httpx.post(f"{s3_server}/moto-api/reset")
    store = Storage.from_settings(Settings(s3_endpoint_url=s3_server))
    store.ensure_buckets()
    return store
