"""The PACS benchmark: C-STORE of a full-size DX study to the receiver → the SR that export stores in the PACS.

Each study is a generated 16-bit DX (2,500 x 2,048 by default, made-up patient attributes, fresh UIDs) sent by a
"modality" (pynetdicom SCU, `triage.stack.modality`) to the receiver at `dicom_url` (`dicom://AE@host:port`); the
time runs from the start of the C-STORE until the SR (in the original study) answers the PACS's QIDO-RS at
`dicomweb_url`. One study at a time, so each time is one hospital study's path through receiver, bucket,
ingest and export. Nothing here starts processes: `triage bench` (triage/bench.py) gives a stack's URLs.
"""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import numpy as np

from triage.stack.modality import dx_file, send_by_cstore

__all__ = ["PACS_TARGET_P95_S", "SR_CLASS", "cstore_to_sr", "parse_dicom_url"]

PACS_TARGET_P95_S = 3.0  # issue 10: inside the "urgent within 60 s" budget
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR, what export's TID 1500 report is stored as


def parse_dicom_url(dicom_url: str) -> tuple[str, str, int]:
    """(AE title, host, port) of `dicom://AE@host:port` (the stack's `urls["dicom"]`)."""
    ae, address = dicom_url.removeprefix("dicom://").split("@", 1)
    host, port = address.rsplit(":", 1)
    return ae, host, int(port)


def _sr_stored(client: httpx.Client, dicomweb_url: str, study: str) -> bool:
    response = client.get(f"{dicomweb_url}/studies/{study}/instances", params={"SOPClassUID": SR_CLASS},
                          headers={"Accept": "application/dicom+json"})
    return response.status_code == 200 and bool(response.content) and bool(response.json())


def _study(rows: int, columns: int, seed: int, image: np.ndarray | None = None) -> tuple[bytes, str]:
    """A DX study of `image` (uint8 [H, W], a real radiograph: the benchmark's own images) enlarged to rows x columns
    in 12 bits, with a little per-study noise; without `image` random pixels (which the not-assessable gate refuses)."""
    import pydicom
    from PIL import Image

    rng = np.random.default_rng(seed)
    if image is None:
        pixels = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    else:
        large = Image.fromarray(np.asarray(image, np.uint8)).resize((columns, rows), Image.Resampling.BILINEAR)
        values = np.asarray(large, np.float32) * (4095.0 / 255.0) + rng.normal(0.0, 4.0, size=(rows, columns))
        pixels = np.clip(values, 0, 4095).astype(np.uint16)
    data = dx_file(pixels, patient_name="BENCH^PACS", patient_id="BENCH-0001", birth_date="19700101",
                   accession="BENCH-ACC-0001")
    return data, str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


def cstore_to_sr(dicom_url: str, dicomweb_url: str, *, studies: int = 20, rows: int = 2500, columns: int = 2048,
                 timeout_s: float = 60.0, gap_s: float = 0.2, poll_s: float = 0.05,
                 images: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Send `studies` generated DX studies (of `images` in turn, uint8 [H, W] radiographs) one at a time; time
    C-STORE start → SR in the PACS (QIDO-RS).

    Returns {"n", "rows", "columns", "bytes", "p50_s", "p95_s", "max_s", "cstore_p50_s", "samples_s",
    "failures", "target_p95_s", "met"}; a study refused by the receiver or without an SR within `timeout_s`
    counts in `failures` (and fails the target), not in the times."""
    ae, host, port = parse_dicom_url(dicom_url)
    seconds: list[float] = []
    cstore: list[float] = []
    failures: list[str] = []
    size = 0
    with httpx.Client(timeout=10) as client:
        for index in range(studies):
            image = images[index % len(images)] if images else None
            data, study = _study(rows, columns, seed=1000 + index, image=image)
            size = len(data)
            started = time.perf_counter()
            status = send_by_cstore(data, host, port, called_ae=ae, calling_ae="BENCHMODALITY")
            cstore.append(time.perf_counter() - started)
            if status != 0:
                failures.append(f"study {index}: C-STORE status {status}")
                continue
            while not _sr_stored(client, dicomweb_url, study):
                if time.perf_counter() - started > timeout_s:
                    failures.append(f"study {index}: no SR in the PACS within {timeout_s:.0f} s")
                    break
                time.sleep(poll_s)
            else:
                seconds.append(time.perf_counter() - started)
            time.sleep(gap_s)
    values = np.asarray(seconds) if seconds else None
    p95 = round(float(np.percentile(values, 95)), 3) if values is not None else None
    return {
        "n": len(seconds), "rows": rows, "columns": columns, "bytes": size,
        "p50_s": round(float(np.percentile(values, 50)), 3) if values is not None else None,
        "p95_s": p95, "max_s": round(float(values.max()), 3) if values is not None else None,
        "cstore_p50_s": round(float(np.percentile(cstore, 50)), 3) if cstore else None,
        "samples_s": [round(value, 3) for value in seconds], "failures": failures,
        "target_p95_s": PACS_TARGET_P95_S,
        "met": not failures and p95 is not None and p95 <= PACS_TARGET_P95_S,
    }
