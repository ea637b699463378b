"""The DICOM receiver: a Storage SCP (C-STORE) with Verification (C-ECHO) that puts what the hospital sends into
inference-inputs, where the upload path starts ingest as for any other upload.

One handler per event, as pynetdicom's examples: `on_store` answers each C-STORE with a status. Accepted are the
chest radiograph SOP classes in the transfer syntaxes the decoder reads (`shared.pacs.sop_classes`); a calling AE
title outside `DICOM_ALLOWED_AES` (when set) or a called AE title other than ours is rejected at association, as are
associations over `DICOM_MAX_ASSOCIATIONS` (a connection that ends before its request frees its slot at once;
`shared.pacs.pdu_limits` bounds what a peer can make it hold). Statuses: 0x0000 stored; 0xA900 the data set
contradicts its SOP class (or lacks its UIDs); 0xC000 it cannot be parsed or its pixels cannot be decoded (nothing
is stored for either); 0xA700 (out of resources) when storage fails, so the modality sends it again. Logs name an
instance only as `shared.names.key_ref` and never carry a UID, a patient attribute or pynetdicom's message dumps.

Run it with `python -m shared.pacs.receiver [--host 0.0.0.0] [--port N] [--metrics-port M]` (settings from
`shared.config.Settings`); with `--metrics-port`, Prometheus metrics at `/metrics` there (instances by outcome, store
time, rejected associations).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import socketserver
import threading
import time
from typing import Any

from shared import metrics
from shared.config import Settings
from shared.dicom import quiet_pydicom
from shared.log_redaction import redact_library_logs
from shared.names import INPUT_BUCKET, key_ref
from shared.pacs.instances import RefusedInstance, check_instance, store_instance
from shared.pacs.pdu_limits import BoundedRequestHandler, OverLimit
from shared.pacs.sop_classes import CHEST_RADIOGRAPH_SOP_CLASSES, DECODABLE_TRANSFER_SYNTAXES
from shared.storage import Storage

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_MISMATCH",
    "OUT_OF_RESOURCES",
    "METRICS_PORT",
    "SUCCESS",
    "Receiver",
    "application_entity",
    "main",
    "on_store",
]

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # storage failed: the modality retries
DATASET_MISMATCH = 0xA900  # "data set does not match SOP class"
CANNOT_UNDERSTAND = 0xC000  # "cannot understand": unparseable, or pixels that do not decode
METRICS_PORT = 9102  # the Deployment's Prometheus port (`--metrics-port`)
# Waits on a silent peer: an association request, a DIMSE message, any network read.
ACSE_TIMEOUT_S = 30
DIMSE_TIMEOUT_S = 60
NETWORK_TIMEOUT_S = 60
PYNETDICOM_RECORDS_PER_THREAD = 5  # a stream out of step logged every following byte as an unknown PDU type


_OUTCOMES = {SUCCESS: "stored", DATASET_MISMATCH: "mismatch", CANNOT_UNDERSTAND: "unreadable",
             OUT_OF_RESOURCES: "storage_failed"}


def on_store(event: Any, storage: Storage, settings: Settings) -> int:
    """EVT_C_STORE: check the instance, store it as received, answer the status (never raises); counted by outcome
    (`triage_dicom_instances_total`) and timed (`triage_dicom_store_seconds`).

    `storage` and `settings` are the handler's bound arguments (pynetdicom passes them after the event).
    """
    started = time.perf_counter()
    status = _store(event, storage, settings)
    metrics.DICOM_STORE_SECONDS.observe(time.perf_counter() - started)
    metrics.DICOM_INSTANCES.labels(outcome=_OUTCOMES[status]).inc()
    return status


def _store(event: Any, storage: Storage, settings: Settings) -> int:
    try:
        data = event.encoded_dataset()  # preamble + file meta of the context + the data set as it came
        request = event.request
        declared_class, declared_instance = request.AffectedSOPClassUID, request.AffectedSOPInstanceUID
    except Exception:  # pynetdicom could not even frame it: nothing to store
        log.warning("refused an instance from %s: the data set cannot be read", _peer(event))
        return CANNOT_UNDERSTAND
    try:
        instance = check_instance(data, declared_sop_class=declared_class, declared_sop_instance=declared_instance,
                                  max_pixels=settings.max_pixels)
    except RefusedInstance as exc:
        log.warning("refused an instance from %s: %s", _peer(event), exc.message)
        return DATASET_MISMATCH if exc.mismatch else CANNOT_UNDERSTAND
    except Exception as exc:  # ours (the pixel decoder killed, or not starting): the modality sends it again
        log.error("could not check an instance from %s: %s", _peer(event), type(exc).__name__)
        return OUT_OF_RESOURCES
    ref = key_ref(INPUT_BUCKET, instance.key)
    try:
        store_instance(storage, instance)
    except Exception as exc:  # S3 down or refusing: ours, so the sender keeps it and retries
        log.error("could not store %s from %s: %s", ref, _peer(event), type(exc).__name__)
        return OUT_OF_RESOURCES
    log.info("stored %s from %s (%d bytes)", ref, _peer(event), len(data))
    return SUCCESS


def _peer(event: Any) -> str:
    """The sender as its calling AE title (configured at the modality: not a patient attribute)."""
    return _peer_of(getattr(event, "assoc", None))


def _peer_of(assoc: Any) -> str:
    try:
        return str(assoc.requestor.ae_title).strip() or "?"
    except Exception:
        return "?"


def _on_over_limit(assoc: Any, error: OverLimit) -> None:
    """The peer sent past a bound (`shared.pacs.pdu_limits`): the association is aborted, nothing was stored."""
    if error.dataset:
        metrics.DICOM_INSTANCES.labels(outcome="too_large").inc()
    log.warning("aborted the association of %s: %s", _peer_of(assoc), error)


def _on_transition(event: Any) -> None:
    """EVT_FSM_TRANSITION: a connection that ends before its association request (garbage bytes, a port scan, a PDU
    over its length) takes the DUL back to Sta1 with the association's thread still waiting for the request, and
    holding one of DICOM_MAX_ASSOCIATIONS, for ACSE_TIMEOUT_S; ten such connections every 30 s kept every modality
    out. Wake it as its timeout would (pynetdicom's timeout path reads an empty item as no request)."""
    assoc = event.assoc
    if event.next_state == "Sta1" and assoc.is_acceptor and assoc.requestor.primitive is None:
        assoc.dul.to_user_queue.put(None)


def _on_rejected(event: Any) -> None:
    metrics.DICOM_ASSOCIATIONS_REJECTED.inc()
    log.warning("rejected an association from %s", _peer(event))


def application_entity(settings: Settings) -> Any:
    """The AE with our title, the accepted contexts, the allow-list and the limits (not yet listening)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=settings.dicom_ae_title)
    ae.maximum_associations = settings.dicom_max_associations
    ae.maximum_pdu_size = settings.dicom_max_pdu_bytes
    ae.require_calling_aet = list(settings.dicom_allowed_aes)  # empty: any
    ae.require_called_aet = True  # a modality configured for another AE is told so, not silently served
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = ACSE_TIMEOUT_S, DIMSE_TIMEOUT_S, NETWORK_TIMEOUT_S
    ae.add_supported_context(Verification)
    for sop_class in CHEST_RADIOGRAPH_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(DECODABLE_TRANSFER_SYNTAXES))
    return ae


class Receiver:
    """The listening SCP: `start()` binds and serves in the background, `stop()` closes it (a context manager)."""

    def __init__(self, settings: Settings, storage: Storage, *, host: str = "0.0.0.0", port: int | None = None) -> None:
        self.settings = settings
        self.storage = storage
        self.address = (host, settings.dicom_port if port is None else port)
        self._server: Any = None

    def start(self) -> Receiver:
        from pynetdicom import evt
        from pynetdicom.transport import ThreadedAssociationServer

        # pynetdicom logs message dumps (UIDs, identifiers) at INFO / DEBUG: only its warnings and errors, without
        # the values they quote, at most a few per association thread (shared.log_redaction).
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        redact_library_logs("pynetdicom", max_per_thread=PYNETDICOM_RECORDS_PER_THREAD)
        quiet_pydicom()  # pynetdicom decodes its command sets and the negotiated UIDs with pydicom
        handlers = [(evt.EVT_C_STORE, on_store, [self.storage, self.settings]), (evt.EVT_REJECTED, _on_rejected),
                    (evt.EVT_FSM_TRANSITION, _on_transition)]
        bounded = functools.partial(BoundedRequestHandler, max_dataset_bytes=self.settings.max_input_bytes,
                                    on_over_limit=_on_over_limit)
        self._server = application_entity(self.settings).make_server(
            self.address, evt_handlers=handlers, server_class=ThreadedAssociationServer, request_handler=bounded)
        threading.Thread(target=self._server.serve_forever, name="dicom-receiver", daemon=True).start()
        log.info("DICOM receiver %s listening on %s:%d", self.settings.dicom_ae_title, self.address[0], self.port)
        return self

    @property
    def port(self) -> int:
        """The bound port (the asked one, or the kernel's choice for port 0)."""
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            # socketserver's own shutdown: pynetdicom's would also drop the server from the AE's list of the servers
            # start_server made, and make_server's is not in it.
            socketserver.BaseServer.shutdown(self._server)
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.pacs.receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: DICOM_PORT, 11112)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help=f"serve Prometheus metrics at http://HOST:PORT/metrics (default: none; the "
                             f"Deployment uses {METRICS_PORT})")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    receiver = Receiver(settings, Storage.from_settings(settings), host=args.host, port=args.port)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.host)
    with receiver, contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()  # until SIGINT / SIGTERM
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
