"""Train or load a model, start the stack, triage a few uploads: the whole product in about two minutes.

Steps: a model (MODEL_URI, the registry's champion, or one trained first on phantoms or DATA) → the local
stack → a handful of images uploaded to `inference-inputs`, each result printed as it appears with its time
from upload → predict and explain over HTTP through the gateway → a radiologist's feedback → heatmaps saved
locally → everything stopped. Exits non-zero when any step failed.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from shared.errors import UserError
from shared.imaging import decode_image, encode_png
from shared.names import INPUT_BUCKET, RESULT_BUCKET, result_key
from triage.config import TriageEnv
from triage.stack.pacs_demo import pacs_step
from triage.stack.ports import ALL_FUNCTIONS, StackPorts
from triage.stack.stack import Stack, StackConfig

__all__ = ["DemoReport", "add_arguments", "demo_images", "run", "run_demo"]


@dataclass
class DemoReport:
    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    heatmap_dir: str = ""
    model: str = ""

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"  FAILED: {message}", flush=True)


def demo_images(count: int, data: Path | None, run_dir: Path) -> list[tuple[str, bytes, str]]:
    """(name, bytes, true label) from the test split of DATA, of the phantom set, or fresh phantoms; the last one
    as DICOM with patient identifiers (the demo checks they are stripped)."""
    source = data if data is not None else run_dir / "phantom.npz"
    if source.is_file():
        with np.load(source) as arrays:
            split = next((s for s in ("test", "val", "train") if f"{s}_images" in arrays), None)
            if split is not None:
                images, labels = arrays[f"{split}_images"][:count], arrays[f"{split}_labels"][:count].ravel()
                return _with_dicom([(f"demo-{i}.png", img, ("normal", "pneumonia")[int(lab)])
                                    for i, (img, lab) in enumerate(zip(images, labels, strict=True))])
    from training_jobs.phantom import make_phantoms

    images, labels = make_phantoms(count, 28, 12345, 0.5)
    return _with_dicom([(f"demo-{i}.png", img, ("normal", "pneumonia")[int(lab)])
                        for i, (img, lab) in enumerate(zip(images, labels, strict=True))])


def _with_dicom(images: list[tuple[str, np.ndarray, str]]) -> list[tuple[str, bytes, str]]:
    """PNG bytes for all but the last image, which goes as DICOM with made-up patient identifiers."""
    encoded = [(name, encode_png(np.asarray(image, np.uint8)), truth) for name, image, truth in images[:-1]]
    name, image, truth = images[-1]
    return encoded + [(name.replace(".png", ".dcm"), dicom(image), truth)]


def _content_type(name: str) -> str:
    return "application/dicom" if name.endswith(".dcm") else "image/png"


DEMO_PATIENT = "DEMO^PATIENT"  # a made-up name: the demo checks it never reaches the results


def dicom(image: np.ndarray, patient_name: str = DEMO_PATIENT) -> bytes:
    """A 16-bit MONOCHROME2 DICOM file carrying (made-up) patient identifiers, as a modality would send it."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate = patient_name, "DEMO-0001", "19700101"
    dataset.Modality = "CR"
    dataset.Rows, dataset.Columns = image.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = (np.asarray(image, np.uint16) * 16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _wait_for_result(s3: Any, key: str, uploaded: float, timeout_s: float, *,
                     heatmap: bool = False) -> tuple[dict[str, Any] | None, float]:
    """The result of `key` once written (the flag), or with `heatmap` once its heatmap is no longer pending."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = json.loads(s3.get_object(Bucket=RESULT_BUCKET, Key=result_key(key))["Body"].read())
        except s3.exceptions.NoSuchKey:
            result = None
        if result is not None and not (heatmap and (result.get("heatmap") or {}).get("status") == "pending"):
            return result, time.monotonic() - uploaded
        time.sleep(0.05)
    return None, time.monotonic() - uploaded


def run_demo(stack: Stack, images: list[tuple[str, bytes, str]], out_dir: Path,
             timeout_s: float = 60.0) -> DemoReport:
    """The demo's steps against a running stack (the tests call this too)."""
    report = DemoReport(heatmap_dir=str(out_dir), model=stack.model_uri or "")
    out_dir.mkdir(parents=True, exist_ok=True)
    s3 = stack.s3()
    prefix = time.strftime("demo-%Y%m%d-%H%M%S")
    print(f"\nuploading {len(images)} images to s3://{INPUT_BUCKET}/{prefix}/ ...", flush=True)
    uploads = []
    for name, data, truth in images:
        key = f"{prefix}/{name}"
        uploaded = time.monotonic()
        s3.put_object(Bucket=INPUT_BUCKET, Key=key, Body=data, ContentType=_content_type(name))
        uploads.append((key, uploaded, truth))
    for key, uploaded, truth in uploads:
        result, seconds = _wait_for_result(s3, key, uploaded, timeout_s)
        if result is None:
            report.fail(f"no result for {key} within {timeout_s:.0f} s")
            continue
        if "error" in result:
            report.fail(f"{key}: {result['error']}")
            continue
        report.results.append({**result, "seconds_to_result": round(seconds, 3)})
        flag = "URGENT " if result.get("urgent") else ""
        print(f"  {key}: {flag}{result['label']} p={result['probability']:.3f} (truth {truth}) "
              f"model v{result['model']['version']} in {seconds:.2f} s", flush=True)
        with_heatmap, _ = _wait_for_result(s3, key, uploaded, timeout_s, heatmap=True)
        heatmap = (with_heatmap or {}).get("heatmap") or {}
        heatmap_png = b""
        if heatmap.get("key"):
            stored = s3.get_object(Bucket=heatmap.get("bucket", RESULT_BUCKET), Key=heatmap["key"])
            heatmap_png = stored["Body"].read()
            (out_dir / Path(heatmap["key"]).name).write_bytes(heatmap_png)
        if key.endswith(".dcm"):
            leaked = DEMO_PATIENT.encode() in json.dumps(result).encode() + heatmap_png
            if leaked:
                report.fail(f"{key}: the patient name reached the results")
            else:
                print(f"    DICOM de-identified: no patient name in its result or heatmap "
                      f"(de-identification took {result['timings_ms'].get('deidentify', '?')} ms)", flush=True)

    # PACS in, PACS out: a modality's DX study to the receiver, the SR and heatmap back in Orthanc.
    pacs_step(stack, decode_image(images[0][1], _content_type(images[0][0])), report.fail)
    gateway = stack.urls["gateway"]
    name, data, _ = images[0]
    with httpx.Client(base_url=gateway, timeout=60, headers=stack.api_headers) as client:  # the stack's API token
        print(f"\nPOST {gateway}/predict ({name})", flush=True)
        response = client.post("/predict", content=data, headers={"Content-Type": _content_type(name)})
        prediction = response.json()
        if response.status_code != 200:
            report.fail(f"predict answered {response.status_code}: {prediction}")
            return report
        print(f"  {prediction['label']} p={prediction['probability']:.3f} urgent={prediction['urgent']} "
              f"revision={response.headers.get('X-Triage-Revision')} in {prediction['timings_ms']['total']:.1f} ms",
              flush=True)
        print(f"POST {gateway}/explain (Accept: image/png)", flush=True)
        response = client.post("/explain", content=data, headers={"Content-Type": _content_type(name),
                                                                  "Accept": "image/png"})
        if response.status_code != 200 or not response.content.startswith(b"\x89PNG"):
            report.fail(f"explain answered {response.status_code} {response.headers.get('content-type')}")
        else:
            path = out_dir / "explain-http.png"
            path.write_bytes(response.content)
            print(f"  heatmap overlay saved to {path}", flush=True)
        if not report.results:
            report.fail("no ingested result to give feedback on")
            return report
        # Feedback names a stored prediction: the first upload's result (its truth is known here).
        reviewed = report.results[0]
        label = uploads[0][2]
        print(f"POST {gateway}/feedback (request {reviewed['request_id']}: reviewer says {label})", flush=True)
        response = client.post("/feedback", json={"request_id": reviewed["request_id"], "label": label,
                                                  "reviewer": "demo-radiologist"},
                               headers={"Authorization": f"Bearer {stack.reviewer_token}"})
        if response.status_code != 200:
            report.fail(f"feedback answered {response.status_code}: {response.text[:200]}")
        else:
            print(f"  {response.json().get('status', 'stored')}", flush=True)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="train on this .npz (e.g. ../shared/data/pneumoniamnist_28.npz) "
                        "instead of phantoms (default $DATA)")
    parser.add_argument("--model", help="serve this model instead of training (default $MODEL_URI)")
    parser.add_argument("--run-dir", type=Path, help="state, logs and the MLflow store (default $RUN_DIR, else "
                        ".triage; a second demo reuses its model)")
    parser.add_argument("--images", type=int, default=6, help="how many images to upload (default 6)")
    parser.add_argument("--out", type=Path, help="where to save the heatmaps (default <run dir>/demo-heatmaps)")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")


def run(args: argparse.Namespace) -> int:
    env = TriageEnv.from_env()
    data, model = args.data or env.data, args.model or env.model_uri
    if args.images < 1 or args.images > 100:
        raise UserError(f"--images {args.images}: between 1 and 100")
    if data is not None and not Path(data).is_file():
        raise UserError(f"--data {data}: no such file")
    started = time.monotonic()
    config = StackConfig(run_dir=args.run_dir or env.run_dir, model_uri=model, functions=ALL_FUNCTIONS,
                         ports=StackPorts.from_env(env), prometheus=False, train_data=data,
                         force_train=data is not None and not model, orthanc=True, dicom_port=env.dicom_port)
    stack = Stack(config, env=env)
    stack.supervisor.install_signal_handlers()
    out_dir = args.out or stack.config.run_dir / "demo-heatmaps"
    try:
        with stack:
            print(f"stack ready in {time.monotonic() - started:.0f} s: gateway {stack.urls['gateway']}, "
                  f"review page {stack.urls['gateway']}/review, MLflow {stack.urls.get('mlflow', '(off)')}",
                  flush=True)
            images = demo_images(args.images, data, stack.config.run_dir)
            report = run_demo(stack, images, out_dir)
            print("\nstopping the stack...", flush=True)
    except KeyboardInterrupt:
        print("interrupted; stopped the stack", file=sys.stderr)
        return 130
    times = [r["seconds_to_result"] for r in report.results]
    print(f"\n{len(report.results)}/{len(images)} uploads triaged"
          + (f", time to result median {np.median(times):.2f} s, max {max(times):.2f} s" if times else ""))
    print(f"heatmaps: s3://{RESULT_BUCKET}/ (in the stack) and {out_dir}")
    print(f"logs: {stack.config.run_dir / 'logs'}; demo took {time.monotonic() - started:.0f} s")
    print(f"worklist: {stack.urls['gateway']}/review, reviewer token {stack.reviewer_token} (`triage up` serves it)")
    if report.failures:
        print(f"demo FAILED: {len(report.failures)} problem(s): " + "; ".join(report.failures), file=sys.stderr)
    if args.json:
        print(json.dumps({"ok": not report.failures, "triaged": len(report.results), "uploaded": len(images),
                          "seconds_to_result": times, "heatmaps": str(out_dir), "failures": report.failures,
                          "model": report.model}))
    return 1 if report.failures else 0

