"""Sending DICOM instances to the hospital's PACS: DICOMweb STOW-RS (`dicomweb-client`) or C-STORE (`pynetdicom`).

A sender's `send(datasets)` stores every instance or raises: `PacsUnavailable` (503: the PACS did not answer,
or timed out) or `PacsRejected` (502: it answered with a failure). Both are our side's faults as the broker sees
them, so the event is delivered again with backoff and dead-lettered after the last try. Messages name the
failure's kind and status only, never an instance's attributes (they carry patient identifiers); the two libraries'
own records come without the values they quote (`shared.log_redaction`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from shared.config import ExportSettings
from shared.errors import TriageError
from shared.log_redaction import redact_library_logs

__all__ = ["CStoreSender", "PacsRejected", "PacsUnavailable", "Sender", "StowSender", "sender_from_settings"]


class PacsUnavailable(TriageError):
    """The PACS could not be reached (refused, timed out, association rejected or aborted)."""

    status = 503
    code = "pacs_unavailable"


class PacsRejected(TriageError):
    """The PACS answered but did not store an instance (an HTTP error or a failure status)."""

    status = 502
    code = "pacs_rejected"


class Sender(Protocol):
    method: str

    def send(self, datasets: Sequence[Any]) -> None: ...


class StowSender:
    """STOW-RS to `url` (the DICOMweb base, e.g. Orthanc's http://127.0.0.1:8042/dicom-web)."""

    method = "stow"

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def send(self, datasets: Sequence[Any]) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        redact_library_logs("dicomweb_client")  # it logs a refused instance's UID and the PACS's Warning text
        client = DICOMwebClient(url=self.url, timeout=self.timeout_s)
        client.set_http_retry_params(retry=False)  # the broker retries, with its backoff and dead letters
        try:
            response = client.store_instances(datasets=list(datasets))
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            if isinstance(status, int) and status >= 500:
                raise PacsUnavailable(f"STOW-RS answered {status}") from exc
            raise PacsRejected(f"STOW-RS answered {status}") from exc
        except requests.RequestException as exc:
            raise PacsUnavailable(f"STOW-RS failed ({type(exc).__name__})") from exc
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            raise PacsRejected(f"STOW-RS stored {len(datasets) - len(failed)} of {len(datasets)} instances")


class CStoreSender:
    """C-STORE SCU: one association per export, the instances' SOP classes in Explicit VR Little Endian."""

    method = "cstore"

    def __init__(self, host: str, port: int, *, called_ae: str, calling_ae: str, timeout_s: float = 10.0) -> None:
        self.host, self.port, self.called_ae, self.calling_ae = host, port, called_ae, calling_ae
        self.timeout_s = timeout_s

    def send(self, datasets: Sequence[Any]) -> None:
        from pydicom.uid import ExplicitVRLittleEndian
        from pynetdicom import AE

        redact_library_logs("pynetdicom")  # its errors quote the bytes it could not decode

        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae)
        if not assoc.is_established:
            raise PacsUnavailable("C-STORE association was not established")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None:
                    raise PacsUnavailable("C-STORE got no answer (timeout or abort)")
                if code not in (0x0000, 0xB000, 0xB006, 0xB007):  # success and the warnings
                    raise PacsRejected(f"C-STORE answered status 0x{code:04X}")
        finally:
            assoc.release()


def sender_from_settings(settings: ExportSettings) -> Sender | None:
    """The sender EXPORT_METHOD names, None when its destination is not configured."""
    if not settings.configured:
        return None
    if settings.method == "stow":
        return StowSender(str(settings.stow_url), timeout_s=settings.timeout_s)
    return CStoreSender(str(settings.pacs_host), settings.pacs_port, called_ae=settings.pacs_ae_title,
                        calling_ae=settings.calling_ae_title, timeout_s=settings.timeout_s)
