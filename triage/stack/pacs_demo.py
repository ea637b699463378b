"""The demo's PACS step: a "modality" C-STOREs one generated DX study to the receiver; the SR and the heatmap
(Secondary Capture) that export sends back appear in Orthanc, in that study. Prints where to see them."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import numpy as np

from triage.stack.modality import dx_file, send_by_cstore

__all__ = ["DEMO_DX_PATIENT", "pacs_step"]

DEMO_DX_PATIENT = "DEMO^PACS^PATIENT"  # made up: the SR in Orthanc names it, results never do
SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


def _study_instances(dicomweb: str, study: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{dicomweb}/studies/{study}/instances", headers={"Accept": "application/dicom+json"},
                         timeout=10)
    return response.json() if response.status_code == 200 and response.content else []


def pacs_step(stack: Any, image: np.ndarray, fail: Any, timeout_s: float = 60.0) -> dict[str, Any] | None:
    """Send `image` (2-D, [0, 255] or [0, 1]) as a DX study; wait for the SR and the SC in Orthanc. `fail(msg)`
    records a failure; returns {"study", "orthanc", "sr", "sc"} or None when skipped or failed."""
    if "dicom" not in stack.urls or "orthanc" not in stack.urls:
        print("\nPACS step skipped: needs the DICOM receiver and Orthanc (apt-get install orthanc orthanc-dicomweb)",
              flush=True)
        return None
    import pydicom

    pixels = np.asarray(image, np.float32)
    pixels = np.clip(pixels / (pixels.max() or 1.0) * 4095.0, 0, 4095).astype(np.uint16)
    data = dx_file(pixels, patient_name=DEMO_DX_PATIENT, patient_id="DEMO-PACS-0001", birth_date="19700101",
                   accession="DEMO-ACC-0001")
    study = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)
    ae, address = stack.urls["dicom"].removeprefix("dicom://").split("@", 1)
    host, port = address.rsplit(":", 1)
    print(f"\nC-STORE of one DX study from a modality to the receiver {ae}@{address} ...", flush=True)
    status = send_by_cstore(data, host, int(port), called_ae=ae)
    if status != 0:
        fail(f"the receiver answered C-STORE with status {status}")
        return None
    started, orthanc = time.monotonic(), stack.urls["orthanc"]
    dicomweb = f"{orthanc}/dicom-web"
    classes: set[str] = set()
    while time.monotonic() - started < timeout_s and not {SR_CLASS, SC_CLASS} <= classes:
        classes = {i["00080016"]["Value"][0] for i in _study_instances(dicomweb, study)}
        time.sleep(0.3)
    if not {SR_CLASS, SC_CLASS} <= classes:
        fail(f"no SR and heatmap in Orthanc for the study within {timeout_s:.0f} s")
        return None
    found = httpx.post(f"{orthanc}/tools/lookup", content=study, timeout=10).json()
    explorer = f"{orthanc}/app/explorer.html#study?uuid={found[0]['ID']}" if found else f"{orthanc}/app/explorer.html"
    print(f"  SR (AI result, UNVERIFIED) and heatmap (Secondary Capture) in Orthanc after "
          f"{time.monotonic() - started:.1f} s, in the original study:\n"
          f"    Orthanc Explorer: {explorer}\n"
          f"    QIDO-RS:          {dicomweb}/studies/{study}/series", flush=True)
    return {"study": study, "orthanc": explorer, "sr": SR_CLASS in classes, "sc": SC_CLASS in classes}
