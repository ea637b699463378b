"""Write a SYNTHETIC chest-phantom data set (.npz) for tests and demos.

Every phantom is drawn from geometry (body, two lung fields, ribs, spine, heart); the pneumonia class adds
blurry consolidation opacities inside one lung. Nothing here is a real patient: files carry SYNTHETIC in their
names, the npz has a `synthetic` key, and reports built from them say so.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shared.errors import UserError

__all__ = [
    "PhantomDicomSpec",
    "add_arguments",
    "make_phantom",
    "make_phantoms",
    "run",
    "write_phantom_dicom",
    "write_phantom_folder",
    "write_phantom_npz",
]

SPLITS = ("train", "val", "test")


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, ax: float, ay: float, soft: float) -> np.ndarray:
    """Soft-edged ellipse mask in [0, 1]; `soft` is the edge width in normalized radius."""
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    return np.clip((1.0 - r) / soft + 0.5, 0.0, 1.0)


def make_phantom(rng: np.random.Generator, size: int, pneumonia: bool) -> np.ndarray:
    """One SYNTHETIC frontal chest image, float32 [size, size] in [0, 1], 0 = black (air)."""
    # Render at >= 64 px and downsample with antialiasing, so small sizes look like downscaled radiographs.
    render = max(size, 64)
    lin = np.linspace(-1.0, 1.0, render, dtype=np.float32)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    # Patient position and build vary per image.
    dx, dy = rng.normal(0.0, 0.05, 2)
    scale = rng.uniform(0.85, 1.05)
    xs, ys = (xx - dx) / scale, (yy - dy) / scale
    tilt = rng.normal(0.0, 0.04)
    xs, ys = xs + tilt * ys, ys - tilt * xs

    body = _ellipse(xs, ys, 0.0, 0.1, rng.uniform(0.8, 0.95), rng.uniform(1.0, 1.2), 0.15)
    lung_ax, lung_ay = rng.uniform(0.24, 0.32), rng.uniform(0.48, 0.6)
    right_lung = _ellipse(xs, ys, -0.38, -0.05, lung_ax, lung_ay, 0.25)
    left_lung = _ellipse(xs, ys, 0.38, -0.05, lung_ax * rng.uniform(0.9, 1.0), lung_ay, 0.25)
    lungs = np.maximum(right_lung, left_lung)
    heart = _ellipse(xs, ys, rng.uniform(0.08, 0.18), rng.uniform(0.25, 0.35), rng.uniform(0.2, 0.3), 0.22, 0.4)
    spine = np.clip(1.0 - np.abs(xs) / 0.07, 0.0, 1.0) * body
    ribs = np.zeros_like(xs)
    rib_gap = rng.uniform(0.13, 0.17)
    for k in range(7):
        y0 = -0.6 + k * rib_gap + 0.22 * xs**2
        ribs += np.exp(-(((ys - y0) / 0.025) ** 2))
    ribs = np.clip(ribs, 0.0, 1.0) * body

    tissue = rng.uniform(0.45, 0.6)
    img = 0.04 + tissue * body
    img -= rng.uniform(0.25, 0.35) * lungs * (1.0 - 0.8 * heart)  # air in the lungs is dark
    img += 0.25 * heart * body + 0.3 * spine + rng.uniform(0.08, 0.16) * ribs
    # Vessel markings in every lung: the normal class has small bright spots too, so spots alone do not decide.
    for _ in range(rng.integers(3, 9)):
        side = rng.choice([-0.38, 0.38])
        cx, cy = side + rng.normal(0, 0.12), rng.uniform(-0.5, 0.4)
        sigma = rng.uniform(0.02, 0.05)
        img += rng.uniform(0.03, 0.1) * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)) * lungs
    if pneumonia:
        lung = right_lung if rng.random() < 0.5 else left_lung
        side = -0.38 if lung is right_lung else 0.38
        for _ in range(rng.integers(1, 4)):
            cx, cy = side + rng.normal(0, 0.1), rng.uniform(-0.4, 0.4)
            sx, sy = rng.uniform(0.06, 0.16), rng.uniform(0.06, 0.2)
            # Faint opacities keep the task from being trivial.
            amp = rng.uniform(0.1, 0.35)
            img += amp * np.exp(-((xs - cx) ** 2 / (2 * sx**2) + (ys - cy) ** 2 / (2 * sy**2))) * lung

    # Exposure / contrast differences between machines, then quantum noise.
    img = (img - 0.3) * rng.uniform(0.8, 1.2) + 0.3 + rng.normal(0.0, 0.04)
    img += rng.normal(0.0, rng.uniform(0.01, 0.04), img.shape)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    if render != size:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(img, 0.0, 1.0)


def make_phantoms(n: int, size: int, seed: int, pneumonia_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """n SYNTHETIC images as uint8 [n, size, size] and labels uint8 [n] (both classes present when n >= 2)."""
    rng = np.random.default_rng(seed)
    n_pos = int(round(n * pneumonia_fraction))
    if n >= 2:
        n_pos = min(max(n_pos, 1), n - 1)
    labels = np.zeros(n, dtype=np.uint8)
    labels[:n_pos] = 1
    rng.shuffle(labels)
    images = np.empty((n, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i] = np.round(make_phantom(rng, size, bool(label)) * 255.0).astype(np.uint8)
    return images, labels


def write_phantom_npz(
    path: str | Path,
    n_train: int = 400,
    n_val: int = 100,
    n_test: int = 100,
    size: int = 28,
    seed: int = 0,
    pneumonia_fraction: float = 0.5,
) -> Path:
    """Write a MedMNIST-style SYNTHETIC .npz (labels shape (N, 1) uint8, key `synthetic` = True)."""
    path = Path(path)
    if size < 8:
        raise UserError(f"--size {size} is too small (at least 8 pixels)")
    counts = dict(zip(SPLITS, (n_train, n_val, n_test), strict=True))
    for split, n in counts.items():
        if n == 1:
            raise UserError(f"{split} split needs at least 2 images (one per class), got {n}")
    arrays: dict[str, np.ndarray] = {}
    for offset, (split, n) in enumerate(counts.items()):
        if n <= 0:
            continue
        images, labels = make_phantoms(n, size, seed * 1000 + offset, pneumonia_fraction)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels[:, None]
    arrays["synthetic"] = np.array(True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # a file handle keeps numpy from appending ".npz" to other suffixes
        np.savez_compressed(fh, **arrays)
    return path


def _jpeg_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255.0).astype(np.uint8)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def write_phantom_folder(
    root: str | Path,
    patients: dict[str, int] | None = None,
    images_per_patient: tuple[int, int] = (1, 3),
    size: int = 64,
    seed: int = 0,
    file_format: str = "jpeg",
) -> Path:
    """Write a Kaggle-style SYNTHETIC folder: root/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg (or *.dcm).

    Pneumonia files are named `personNNN_bacteria_M.jpeg` / `personNNN_virus_M.jpeg` with several images per
    person; normal files `IM-NNNN-000M.jpeg`. `patients` maps split → patients per class (default
    train 8, val 2, test 3). With file_format "dicom" the files are DICOMs cycling through DICOM_VARIANTS and
    carrying fake patient identifiers. The root gets a SYNTHETIC marker file.
    """
    if file_format not in ("jpeg", "dicom"):
        raise UserError(f"unknown phantom file format {file_format!r} (jpeg or dicom)")
    root = Path(root)
    patients = patients or {"train": 8, "val": 2, "test": 3}
    rng = np.random.default_rng(seed)
    person = 1
    study = 1
    written = 0

    def write(path: Path, pneumonia: bool, patient: str) -> None:
        nonlocal written
        image = make_phantom(rng, size, pneumonia)
        if file_format == "jpeg":
            path.write_bytes(_jpeg_bytes(image))
        else:
            spec = DICOM_VARIANTS[written % len(DICOM_VARIANTS)]
            write_phantom_dicom(path.with_suffix(".dcm"), image, spec, patient_id=f"SYN-{patient}")
        written += 1

    for split, n_patients in patients.items():
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        for _ in range(n_patients):
            kind = "bacteria" if rng.random() < 0.6 else "virus"
            for m in range(int(rng.integers(images_per_patient[0], images_per_patient[1] + 1))):
                write(root / split / "PNEUMONIA" / f"person{person}_{kind}_{m + 1}.jpeg", True, f"person{person}")
            person += 1
            for m in range(int(rng.integers(images_per_patient[0], images_per_patient[1] + 1))):
                write(root / split / "NORMAL" / f"IM-{study:04d}-{m + 1:04d}.jpeg", False, f"IM-{study:04d}")
            study += 1
    (root / "SYNTHETIC_PHANTOM_DATA.txt").write_text("SYNTHETIC chest phantoms made by training_jobs.phantom\n")
    return root


@dataclass(frozen=True)
class PhantomDicomSpec:
    """How one SYNTHETIC DICOM file stores its pixels."""

    bits: int = 16  # BitsStored: 8, 12 or 16
    photometric: str = "MONOCHROME2"  # or MONOCHROME1 (inverted: high value = black)
    rescale: tuple[float, float] | None = None  # (slope, intercept)
    window: tuple[float, float] | None = None  # (center, width) in rescaled units
    voi_lut: bool = False  # a VOI LUT Sequence (gamma-like curve over the stored range)
    signed: bool = False
    preamble: bool = True  # False: no 128-byte preamble and "DICM" magic


# The pixel encodings a folder of SYNTHETIC DICOMs cycles through.
DICOM_VARIANTS = (
    PhantomDicomSpec(bits=8),
    PhantomDicomSpec(bits=12, photometric="MONOCHROME1"),
    PhantomDicomSpec(bits=16),
    PhantomDicomSpec(bits=12, rescale=(1.0, -1024.0), window=(500.0, 1000.0)),
    PhantomDicomSpec(bits=12, voi_lut=True),
    PhantomDicomSpec(bits=16, signed=True, rescale=(1.0, -1000.0)),
)

# Fake identifiers: the de-identification tests check that none of them survives.
FAKE_PATIENT = {
    "PatientName": "SYNTHETIC^PHANTOM",
    "PatientID": "SYN-0001",
    "PatientBirthDate": "19700101",
    "PatientSex": "O",
    "PatientAddress": "1 Synthetic Street, Nowhere",
    "OtherPatientIDs": "SYN-ALT-0001",
    "AccessionNumber": "ACC-SYN-42",
    "InstitutionName": "Synthetic General Hospital",
    "InstitutionAddress": "2 Phantom Road",
    "ReferringPhysicianName": "DOCTOR^SYNTHETIC",
    "StudyDate": "20240102",
    "StudyTime": "101112",
    "SeriesDate": "20240102",
    "ContentDate": "20240102",
    "AcquisitionDateTime": "20240102101112",
    "StudyID": "STUDY-SYN-7",
    "StationName": "SYN-STATION",
    "OperatorsName": "OPERATOR^SYNTHETIC",
    "PerformingPhysicianName": "PERFORMER^SYNTHETIC",
}


def write_phantom_dicom(
    path: str | Path,
    image: np.ndarray,
    spec: PhantomDicomSpec = PhantomDicomSpec(),
    with_patient: bool = True,
    patient_id: str | None = None,
) -> Path:
    """Write `image` (float [0, 1], 0 = black) as a SYNTHETIC DICOM that decodes back to about the same image.

    Stored values are chosen so that modality LUT, then VOI (window or LUT), then the photometric
    interpretation give `image` again (up to quantization) through shared.dicom.decode_dicom.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    path = Path(path)
    img = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    if spec.photometric == "MONOCHROME1":
        img = 1.0 - img
    bits = spec.bits
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if spec.signed else (0, 2**bits - 1)
    slope, intercept = spec.rescale or (1.0, 0.0)
    voi_lut_data = None
    if spec.window is not None:
        # Window over the rescaled range: values inside the window map linearly to [0, 1].
        center, width = spec.window
        wanted = center - 0.5 - (width - 1) / 2 + img * (width - 1)  # inverse of the LINEAR window (PS3.3 C.11.2.1.2)
        stored = np.round((wanted - intercept) / slope)
    elif spec.voi_lut:
        # LUT: stored 0..hi → output = ((v - lo) / (hi - lo)) ** 0.5 * 65535; invert the curve for the image.
        entries = hi - lo + 1
        grid = np.arange(entries, dtype=np.float64) / (entries - 1)
        voi_lut_data = np.round(np.sqrt(grid) * 65535).astype(np.uint16)
        stored = np.round(lo + img**2 * (hi - lo))
    else:
        stored = np.round(lo + img * (hi - lo))
    stored = np.clip(stored, lo, hi)
    alloc = 8 if bits <= 8 else 16
    dtypes = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}
    dtype = dtypes[(alloc, spec.signed)]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.SeriesDescription = "SYNTHETIC chest phantom"
    if with_patient:
        for keyword, value in FAKE_PATIENT.items():
            setattr(ds, keyword, value)
        if patient_id is not None:
            ds.PatientID = patient_id
        ds.add_new(0x00091010, "LO", "SYNTHETIC private vendor tag")
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.BitsAllocated = alloc
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if spec.signed else 0
    if spec.rescale is not None:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    if spec.window is not None:
        ds.WindowCenter = f"{spec.window[0]:g}"
        ds.WindowWidth = f"{spec.window[1]:g}"
    if voi_lut_data is not None:
        item = pydicom.Dataset()
        # Explicit VRs: both are ambiguous (US/SS, US/OW); OW because a 16-bit LUT outgrows US's length field.
        item.add_new(0x00283002, "US", [len(voi_lut_data) if len(voi_lut_data) < 65536 else 0, lo, 16])
        item.LUTExplanation = "SYNTHETIC square-root curve"
        item.add_new(0x00283006, "OW", voi_lut_data.astype("<u2").tobytes())
        ds.VOILUTSequence = Sequence([item])
    ds.PixelData = stored.astype(dtype).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=spec.preamble)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output .npz file, or folder for --format jpeg|dicom")
    parser.add_argument(
        "--format",
        choices=("npz", "jpeg", "dicom"),
        default="npz",
        help="npz: MedMNIST-style file (default); jpeg / dicom: Kaggle-style folder split|CLASS/personN_..., "
        "DICOMs in 8/12/16-bit, MONOCHROME1/2, rescale, window and VOI LUT variants with fake patient data",
    )
    parser.add_argument("--n-train", type=int, default=400, help="train images (folders: patients per class)")
    parser.add_argument("--n-val", type=int, default=100, help="val images (folders: patients per class)")
    parser.add_argument("--n-test", type=int, default=100, help="test images (folders: patients per class)")
    parser.add_argument("--size", type=int, default=28, help="image side in pixels (default 28)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--pneumonia-fraction", type=float, default=0.5, help="share of pneumonia, npz (default 0.5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def run(args: argparse.Namespace) -> int:
    if not 0.0 < args.pneumonia_fraction < 1.0:
        raise UserError(f"--pneumonia-fraction {args.pneumonia_fraction} must be between 0 and 1")
    for name in ("n_train", "n_val", "n_test"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative")
    counts = {"train": args.n_train, "val": args.n_val, "test": args.n_test}
    if args.format == "npz":
        path = write_phantom_npz(
            args.out, args.n_train, args.n_val, args.n_test, args.size, args.seed, args.pneumonia_fraction
        )
    else:
        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out}: folder exists and is not empty")
        patients = {split: n for split, n in counts.items() if n > 0}
        path = write_phantom_folder(out, patients, size=args.size, seed=args.seed, file_format=args.format)
    summary = {"path": str(path), "synthetic": True, "format": args.format, "size": args.size, "counts": counts}
    size = f"{args.size}x{args.size}"
    print(f"wrote SYNTHETIC phantom data set {path} ({args.format}, {counts}, {size})", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    return 0
