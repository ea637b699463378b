"""Orthanc, the hospital's PACS stand-in in the local stack (Debian `orthanc` + `orthanc-dicomweb`), run when installed.

A generated JSON configuration: storage under the run dir, the DICOMweb plugin, REST / DICOMweb on
`http_port` (127.0.0.1 only: remote access off, no password, local stack only), DICOM on `dicom_port` with
the called AE title checked, and the receiver (AE `XRAYTRIAGE` on 127.0.0.1) known as its one modality: only it
may store (Orthanc 1.10 cannot bind DICOM to one address, so the modality list and its host check are the
guard). A stored instance with an existing SOP Instance UID replaces the old one (`OverwriteInstances`), so a
redelivered export never leaves two copies.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from triage.stack.processes import ProcessSpec

__all__ = ["DICOMWEB_PLUGIN", "INSTALL_HINT", "OrthancPorts", "orthanc_spec", "write_config"]

INSTALL_HINT = ("Orthanc is not installed; skipped (install it with "
                "`sudo apt-get install orthanc orthanc-dicomweb`)")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian 12's orthanc-dicomweb
AE_TITLE = "ORTHANC"


@dataclass(frozen=True)
class OrthancPorts:
    """Orthanc's ports (ORTHANC_HTTP_PORT, ORTHANC_DICOM_PORT) and the receiver it knows as a modality."""

    http: int = 8042
    dicom: int = 4242
    receiver: int = 11112  # DICOM_PORT of the receiver
    receiver_ae: str = "XRAYTRIAGE"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb base: STOW-RS at /studies, QIDO-RS at /studies?..., WADO-RS below it."""
        return f"{self.http_url}/dicom-web"


def write_config(run_dir: Path, ports: OrthancPorts, plugin: Path = DICOMWEB_PLUGIN) -> Path:
    """`run_dir/orthanc/orthanc.json` (storage and index in `run_dir/orthanc/db`); returns its path."""
    root = Path(run_dir) / "orthanc"
    (root / "db").mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "xray-triage local PACS",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": ports.http,
        "RemoteAccessAllowed": False,  # REST and DICOMweb answer 127.0.0.1 only
        "AuthenticationEnabled": False,  # no password: the local stack only
        "DicomServerEnabled": True,
        "DicomAet": AE_TITLE,
        "DicomPort": ports.dicom,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": False,  # only the known modality below, from its own host
        "DicomCheckModalityHost": True,
        "DicomModalities": {"xraytriage": [ports.receiver_ae, "127.0.0.1", ports.receiver]},
        "OverwriteInstances": True,
        "Plugins": [str(plugin)] if plugin.is_file() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
        "StableAge": 2,
    }
    path = root / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def orthanc_spec(run_dir: Path, ports: OrthancPorts) -> ProcessSpec | None:
    """The `orthanc` process with the generated configuration, or None when Orthanc or its DICOMweb plugin is
    not installed (export needs STOW-RS / QIDO-RS, so Orthanc without the plugin is no use here)."""
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    if binary is None or not DICOMWEB_PLUGIN.is_file():
        return None
    config = write_config(run_dir, ports)
    return ProcessSpec("orthanc", [binary, str(config)], port=ports.http, port_env="ORTHANC_HTTP_PORT",
                       health_url=f"{ports.http_url}/system", ready_timeout_s=30)
