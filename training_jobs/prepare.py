"""Upload raw data to raw-data/, write normalized splits to processed/ with a manifest and a data report.

Order matters: everything is validated and built locally first (bad input writes nothing), then the raw data,
the splits and the report are uploaded, and the manifest goes last, so a reader that finds a manifest finds a
whole data set.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shared.dicom import EPHEMERAL_SECRET, deidentify_bytes
from shared.errors import ImageError, UserError
from shared.imaging import sniff_format
from shared.names import CLASS_NAMES, PROCESSED_BUCKET, RAW_BUCKET
from training_jobs.data import (
    PROCESSED_FORMAT,
    SPLIT_NAMES,
    SplitArrays,
    Splits,
    carve_split,
    check_both_classes,
    load_splits,
    make_splits,
    write_processed_npz,
)

__all__ = ["add_arguments", "build_splits", "prepare", "run", "write_data_report"]

# Share of train carved out for each missing split (whole patients, stratified).
CARVE_FRACTIONS = {"val": 0.1, "test": 0.1, "final_eval": 0.1}


def dataset_name(data: str, name: str | None) -> str:
    """The data set's name in keys: --name, else the file or folder name; only [A-Za-z0-9._-]."""
    raw = name if name is not None else Path(data.rstrip("/")).name.removesuffix(".npz")
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-.")
    if not clean:
        raise UserError(f"--name {raw!r}: needs at least one letter or digit")
    return clean


def build_splits(data: str | Path, image_size: int | None = None, seed: int = 0) -> Splits:
    """Load and validate `data`, then carve val / test / final_eval out of train where missing."""
    splits = load_splits(data, image_size=image_size, seed=seed)
    arrays: dict[str, SplitArrays] = dict(splits.present())
    if "train" not in arrays:
        raise UserError(f"{splits.source}: no train split")
    notes = list(splits.notes)
    for offset, name in enumerate(("val", "test", "final_eval")):
        if name in arrays:
            continue
        rest, carved = carve_split(arrays["train"], CARVE_FRACTIONS[name], seed + 101 * (offset + 1))
        arrays["train"], arrays[name] = rest, carved
        notes.append(f"{name} carved out of train ({len(carved)} images, by patient, stratified)")
    check_both_classes(splits.source, arrays)
    return make_splits(arrays, splits.image_size, splits.synthetic, splits.source, notes)


def _counts(splits: Splits) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, split in splits.present().items():
        counts = split.counts()
        counts["total"] = len(split)
        if split.patients is not None:
            counts["patients"] = len(set(split.patients.tolist()))
        out[name] = counts
    return out


def _title(text: str, synthetic: bool) -> str:
    return f"SYNTHETIC data — {text}" if synthetic else text


def write_data_report(splits: Splits, out_dir: str | Path, name: str) -> list[Path]:
    """counts.json, counts.png (bar chart), samples.png (grid per class), histograms.png (intensity per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    present = splits.present()
    counts = _counts(splits)
    paths = [out / "counts.json", out / "counts.png", out / "samples.png", out / "histograms.png"]
    report = {"name": name, "synthetic": splits.synthetic, "image_size": splits.image_size, "counts": counts}
    paths[0].write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = np.arange(len(present))
    for offset, cls in enumerate(CLASS_NAMES):
        values = [counts[s][cls] for s in present]
        bars = ax.bar(xs + (offset - 0.5) * 0.4, values, width=0.4, label=cls)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(xs, list(present))
    ax.set_ylabel("images")
    ax.set_title(_title(f"{name}: images per class and split", splits.synthetic), fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)

    # Images as the model sees them, mapped back to [0, 1] for display.
    train = present["train"]
    per_class = 8
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(2, per_class, figsize=(per_class * 1.2, 3.3))
    for row, cls in enumerate(CLASS_NAMES):
        idx = np.flatnonzero(train.y == row)
        chosen = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for col in range(per_class):
            axis = axes[row, col]
            axis.axis("off")
            if col < len(chosen):
                axis.imshow(train.x[chosen[col], 0] * 0.5 + 0.5, cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(cls, fontsize=9, loc="left")
    fig.suptitle(_title(f"{name}: train samples", splits.synthetic), fontsize=10)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0.0, 1.0, 51)
    for row, cls in enumerate(CLASS_NAMES):
        pixels = train.x[train.y == row, 0] * 0.5 + 0.5
        ax.hist(pixels.ravel(), bins=bins, density=True, histtype="step", linewidth=1.5, label=cls)
    ax.set_xlabel("pixel intensity (0 = black)")
    ax.set_ylabel("density")
    ax.set_title(_title(f"{name}: train intensity histograms", splits.synthetic), fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[3], dpi=100)
    plt.close(fig)
    return paths


def _raw_files(data: Path) -> list[tuple[Path, str]]:
    """(local file, key below raw-data/<name>/) for a file or every file of a folder."""
    if data.is_file():
        return [(data, data.name)]
    return [(f, f.relative_to(data).as_posix()) for f in sorted(data.rglob("*")) if f.is_file()]


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as fh:
        return sniff_format(fh.read(132)) == "dicom"


def _content_type(path: Path) -> str:
    return {
        ".npz": "application/octet-stream",
        ".png": "image/png",
        ".jpeg": "image/jpeg",
        ".jpg": "image/jpeg",
        ".dcm": "application/dicom",
        ".json": "application/json",
    }.get(path.suffix.lower(), "application/octet-stream")


def prepare(
    data: str | Path,
    storage: Any,
    name: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
    report_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Validate and split `data`, upload raw + processed + report to S3 (manifest last); return the manifest."""
    log = log or (lambda message: print(message, file=sys.stderr))
    text = str(data)
    if text.startswith("s3://"):
        raise UserError(f"{text}: prepare takes a local file or folder (it uploads the raw data itself)")
    local = Path(data)
    if not local.exists():
        raise UserError(f"{local}: no such file or folder")
    name = dataset_name(text, name)
    log(f"loading {local} ...")
    splits = build_splits(local, image_size, seed)
    payload = write_processed_npz(splits)
    digest = hashlib.sha256(payload).hexdigest()
    report_dir = Path(report_dir) if report_dir is not None else Path("reports") / "data" / name
    report = write_data_report(splits, report_dir, name)
    raw = _raw_files(local)

    manifest = {
        "name": name,
        "format": PROCESSED_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": local.name,
        "raw": {"bucket": RAW_BUCKET, "prefix": f"{name}/", "files": len(raw)},
        "splits_key": f"{name}/splits.npz",
        "sha256": digest,
        "data_hash": splits.data_hash,
        "image_size": splits.image_size,
        "synthetic": splits.synthetic,
        "class_names": list(CLASS_NAMES),
        "counts": _counts(splits),
        "splits": [s for s in SPLIT_NAMES if s in splits.present()],
        "seed": seed,
        "notes": list(splits.notes),
        "raw_dicom_deidentified": "DICOM PS3.15 basic profile, private tags removed",
        "report": [f"{name}/report/{path.name}" for path in report],
    }
    _upload(storage, name, raw, payload, report, manifest)
    return {**manifest, "report_dir": str(report_dir)}


def _upload(
    storage: Any, name: str, raw: list[tuple[Path, str]], payload: bytes, report: list[Path], manifest: dict
) -> None:
    """Raw files, splits and report, then the manifest. On failure, remove what this run wrote and re-raise."""
    from tqdm import tqdm

    storage.ensure_buckets((RAW_BUCKET, PROCESSED_BUCKET))
    manifest_key = f"{name}/manifest.json"
    # A reader must never pair an old manifest with new splits: take the old manifest away first.
    if storage.exists(PROCESSED_BUCKET, manifest_key):
        storage.delete(PROCESSED_BUCKET, manifest_key)
    stale = set(storage.list_keys(RAW_BUCKET, f"{name}/")) - {f"{name}/{key}" for _, key in raw}
    written: list[tuple[str, str]] = []

    def upload(item: tuple[Path, str]) -> None:
        path, key = item
        if _is_dicom(path):
            # Patient identifiers never reach the buckets, raw-data included (pixels are unchanged).
            try:
                data = deidentify_bytes(path.read_bytes(), secret=EPHEMERAL_SECRET)  # UIDs: this run's own
            except ImageError as exc:
                raise UserError(f"{path}: {exc.message}") from exc
            storage.put_bytes(RAW_BUCKET, f"{name}/{key}", data, "application/dicom")
        else:
            storage.put_file(RAW_BUCKET, f"{name}/{key}", path, _content_type(path))
        written.append((RAW_BUCKET, f"{name}/{key}"))

    try:
        with ThreadPoolExecutor(max_workers=8) as pool, tqdm(total=len(raw), desc="raw-data", unit="file") as bar:
            for _ in pool.map(upload, raw):
                bar.update(1)
        storage.put_bytes(PROCESSED_BUCKET, manifest["splits_key"], payload, "application/octet-stream")
        written.append((PROCESSED_BUCKET, manifest["splits_key"]))
        for path, key in zip(report, manifest["report"], strict=True):
            storage.put_file(PROCESSED_BUCKET, key, path, _content_type(path))
            written.append((PROCESSED_BUCKET, key))
        for key in sorted(stale):  # files of an earlier upload under this name that this data set does not have
            storage.delete(RAW_BUCKET, key)
        storage.put_json(PROCESSED_BUCKET, manifest_key, manifest)
    except BaseException:
        for bucket, key in written:
            with contextlib.suppress(Exception):
                storage.delete(bucket, key)
        raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, help="MedMNIST-style .npz, or a folder of [train|val|test/]NORMAL|PNEUMONIA images"
    )
    parser.add_argument("--name", help="data set name under raw-data/ and processed/ (default: the file/folder name)")
    parser.add_argument("--image-size", type=int, help="model input size (default: native for .npz, 64 for folders)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient-level splits (default 0)")
    parser.add_argument("--out-report", help="local folder for the data report (default reports/data/NAME)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def run(args: argparse.Namespace) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from shared.config import Settings
    from shared.storage import Storage

    if args.image_size is not None and not 8 <= args.image_size <= 1024:
        raise UserError(f"--image-size {args.image_size}: expected 8 to 1024 pixels")
    settings = Settings.from_env()
    storage = Storage.from_settings(settings)
    try:
        manifest = prepare(args.data, storage, args.name, args.image_size, args.seed, args.out_report)
    except (BotoCoreError, ClientError) as exc:
        where = settings.s3_endpoint_url or "the default AWS endpoint"
        raise UserError(f"S3 at {where} failed: {exc} (nothing was published)") from exc
    name = manifest["name"]
    tag = "SYNTHETIC " if manifest["synthetic"] else ""
    print(f"prepared {tag}data set {name!r}: s3://{PROCESSED_BUCKET}/{name}/manifest.json")
    for split, counts in manifest["counts"].items():
        print(f"  {split:<10} normal {counts['normal']:>6}  pneumonia {counts['pneumonia']:>6}")
    for note in manifest["notes"]:
        print(f"  note: {note}")
    print(f"  data hash {manifest['data_hash'][:16]}, report in {manifest['report_dir']}")
    if args.json:
        summary = {key: manifest[key] for key in ("name", "sha256", "data_hash", "image_size", "synthetic", "counts")}
        summary["manifest"] = f"s3://{PROCESSED_BUCKET}/{name}/manifest.json"
        summary["uri"] = f"s3://{PROCESSED_BUCKET}/{name}"
        summary["report_dir"] = manifest["report_dir"]
        print(json.dumps(summary, sort_keys=True))
    return 0
