"""Peak memory per request: a fresh child process per (request type, image) pair, its peak RSS reported.

Design §5's bound: no accepted input may take a function past MEMORY_LIMIT_MB. The worst accepted inputs are
large images that compress well (a 47 KB PNG of 7000 x 7000 pixels, under the pixel limit), so each request type
(predict, explain with occlusion, ingest: de-identify + predict + occlusion + overlay) is run on a 7000 x 7000 PNG,
JPEG and DICOM (deflated, so it is as small on the wire). The child loads the model, answers one small warm-up
request, then the measured one, and prints its peak RSS (`ru_maxrss`) before and after as one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["KINDS", "MEMORY_LIMIT_MB", "REQUESTS", "large_image", "peak_memory"]

MEMORY_LIMIT_MB = 512.0
KINDS = ("png", "jpeg", "dicom")
REQUESTS = ("predict", "explain", "ingest")
SIDE = 7000
_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "dicom": "application/dicom"}


def large_image(kind: str, side: int = SIDE) -> tuple[bytes, str]:
    """A smooth `side` x `side` chest-like gradient that compresses to a few KB-MB: (bytes, content type)."""
    from PIL import Image

    y, x = np.mgrid[0:side:64, 0:side:64] / side
    small = (255 * (0.2 + 0.6 * np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) / 0.1))).astype(np.uint8)
    pixels = np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.NEAREST))
    if kind == "dicom":
        return _deflated_dicom(pixels), "application/dicom"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG" if kind == "png" else "JPEG", quality=90)
    return buffer.getvalue(), f"image/{kind}"


def _deflated_dicom(pixels: np.ndarray) -> bytes:
    """A 12-bit DX image in Deflated Explicit VR Little Endian: small on the wire, 98 MB of pixels once read."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, DigitalXRayImageStorageForPresentation, generate_uid

    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = DigitalXRayImageStorageForPresentation, uid
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    attributes = {
        "SOPClassUID": DigitalXRayImageStorageForPresentation, "SOPInstanceUID": uid, "Modality": "DX",
        "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(), "PatientName": "MEMORY^TEST",
        "Rows": pixels.shape[0], "Columns": pixels.shape[1], "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 16, "BitsStored": 12, "HighBit": 11,
        "PixelRepresentation": 0, "PixelData": (pixels.astype(np.uint16) * 16).tobytes(),
    }
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _peak_mb() -> float:
    """This process's peak RSS in MB: VmHWM (ru_maxrss would keep the forking parent's peak across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _measure(model_uri: str, cache_dir: Path, request: str, image: Path) -> dict[str, Any]:
    """In the child: load, warm up, then one `request` on the image file; peak RSS before and after."""
    from shared.config import Settings
    from shared.dicom import deidentify_bytes
    from shared.imaging import encode_png
    from shared.model import TriageModel

    kind = image.suffix.lstrip(".")
    data, content_type = image.read_bytes(), _CONTENT_TYPES[kind]
    model = TriageModel(Settings(model_uri=model_uri, model_cache_dir=cache_dir, deid_secret="memory-bench"))
    model.load()
    model(encode_png(np.full((64, 64), 0.5, np.float32)), "image/png", explain="occlusion")
    before = _peak_mb()
    if request == "predict":
        model(data, content_type)
    elif request == "explain":
        model(data, content_type, explain="occlusion")
    else:  # ingest's work on one object: de-identify (DICOM), predict + occlusion + the overlay PNG
        if kind == "dicom":
            data = deidentify_bytes(data, secret="memory-bench")
        model(data, content_type, explain="occlusion")
    after = _peak_mb()
    return {"request": request, "kind": kind, "bytes": len(data), "baseline_mb": round(before, 1),
            "peak_mb": round(after, 1)}


def peak_memory(model_uri: str, cache_dir: Path, *, python: str = sys.executable, timeout_s: float = 300.0
                ) -> dict[str, Any]:
    """Peak RSS of a fresh process per request type and image kind, and whether each is within the limit."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    images = {}
    for kind in KINDS:  # made here, so the image's own pixels never count in a child's peak
        images[kind] = cache_dir / f"large-{SIDE}.{kind}"
        if not images[kind].exists():
            images[kind].write_bytes(large_image(kind)[0])
    rows = []
    for request in REQUESTS:
        for kind in KINDS:
            argv = [python, "-m", "load_tests.memory", "--model-uri", model_uri, "--cache-dir", str(cache_dir),
                    "--request", request, "--image", str(images[kind])]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
            if done.returncode != 0:
                rows.append({"request": request, "kind": kind, "error": done.stderr.strip().splitlines()[-1:]})
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    peaks = [row["peak_mb"] for row in rows if "peak_mb" in row]
    return {"side": SIDE, "limit_mb": MEMORY_LIMIT_MB, "rows": rows, "max_peak_mb": max(peaks, default=None),
            "within_limit": bool(peaks) and len(peaks) == len(rows) and max(peaks) <= MEMORY_LIMIT_MB}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one measured request in this process (used by peak_memory)")
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--request", choices=REQUESTS, required=True)
    parser.add_argument("--image", type=Path, required=True, help="an image file named *.png, *.jpeg or *.dicom")
    args = parser.parse_args(argv)
    print(json.dumps(_measure(args.model_uri, args.cache_dir, args.request, args.image)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
