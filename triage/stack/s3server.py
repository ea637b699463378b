"""Local S3: moto's server with the project's buckets, every acknowledged write on disk, uploads notified durably.

moto answers the S3 API (conditional writes included, which `Storage.update_json` relies on, made atomic per object
by `atomic_writes`); `write_through`
puts each change on disk before its answer and restores it all at start, so objects survive a SIGKILL of this
process and any restart. An upload into a notifying bucket (`shared.names.NOTIFYING_BUCKETS`) also writes its
MinIO webhook event to the outbox before the answer; the relay (`triage.stack.relay`, its own process) delivers
it to the minio-source adapter — what MinIO's webhook target does with a `queue_dir`.

    python -m triage.stack.s3server --port 9000 --data-dir .triage/s3
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import boto3

from shared.names import BUCKETS, MLFLOW_BUCKET, NOTIFYING_BUCKETS
from triage.stack.access_log import redact_access_log
from triage.stack.atomic_writes import AtomicObjectWrites
from triage.stack.object_store import ObjectStore
from triage.stack.outbox import Outbox
from triage.stack.write_through import HEALTH_PATH, WriteThrough, install_hooks, restore

log = logging.getLogger("triage.s3server")

__all__ = ["EXTRA_BUCKETS", "HEALTH_PATH", "NOTIFIED_BUCKETS", "S3Server", "outbox_dir", "s3_client"]

EXTRA_BUCKETS = (MLFLOW_BUCKET,)  # MLflow's artifact store
NOTIFIED_BUCKETS = NOTIFYING_BUCKETS  # uploads that start work (design §4)


def s3_client(endpoint_url: str, service: str = "s3", access_key: str = "minioadmin",
              secret_key: str = "minioadmin", region: str = "us-east-1") -> Any:
    return boto3.client(service, endpoint_url=endpoint_url, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name=region)


def outbox_dir(data_dir: Path) -> Path:
    """Where the S3 process leaves notification events for the relay."""
    return Path(data_dir) / "outbox"


class S3Server:
    """moto's S3 on 127.0.0.1:`port` (0 = any free port), persisted under `data_dir`, restored on start."""

    def __init__(self, data_dir: Path, port: int = 0, notifying: tuple[str, ...] = NOTIFIED_BUCKETS) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        install_hooks()
        self.store = ObjectStore(Path(data_dir) / "store")
        self.outbox = Outbox(outbox_dir(data_dir))
        self.restored = restore(self.store)  # before listening: nobody sees a half-loaded store
        moto = AtomicObjectWrites(DomainDispatcherApplication(create_backend_app))  # conditional writes atomic
        self.app = WriteThrough(moto, self.store, self.outbox, notifying)
        self._server = make_server("127.0.0.1", port, self.app, threaded=True, request_handler=MotoRequestHandler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def ensure_buckets(self, names: tuple[str, ...] = (*BUCKETS, *EXTRA_BUCKETS)) -> None:
        """Create the project's buckets that are missing, then answer ready on the health path."""
        s3 = s3_client(self.url)
        existing = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
        for name in names:
            if name not in existing:
                s3.create_bucket(Bucket=name)
        self.app.ready.set()

    def start(self) -> S3Server:
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m triage.stack.s3server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--data-dir", type=Path, required=True, help="the objects on disk and the relay's outbox")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # request lines would name object keys
    redact_access_log()  # and what its warnings and errors quote of a request names keys by hash only
    args.data_dir.mkdir(parents=True, exist_ok=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    server = S3Server(args.data_dir, args.port).start()
    server.ensure_buckets()
    buckets, objects = server.restored
    log.info("S3 on %s (restored %d buckets, %d objects from %s); uploads to %s are notified through %s",
             server.url, buckets, objects, args.data_dir, ", ".join(NOTIFIED_BUCKETS), server.outbox.directory)
    stopped.wait()
    server.stop()  # nothing to save: every write is on disk already
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
