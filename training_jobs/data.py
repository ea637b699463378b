"""Data loaders: MedMNIST .npz, Kaggle-style folders (JPEG / PNG / DICOM), processed splits (file or s3://).

Everything ends as `Splits`: per split the model input made by `shared.imaging` (the same function serving
uses) and int64 labels (0 = normal, 1 = pneumonia). Folder data is split by patient, so that no patient is in
two splits.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from shared.errors import ImageError, UserError
from shared.imaging import batch_to_model_input, decode_image, sniff_format, to_model_input

__all__ = [
    "CLASS_DIRS",
    "SPLIT_NAMES",
    "SplitArrays",
    "Splits",
    "carve_split",
    "check_both_classes",
    "compute_data_hash",
    "load_eval_split",
    "load_folder",
    "load_folder_images",
    "load_medmnist_npz",
    "load_processed_npz",
    "load_splits",
    "make_splits",
    "patient_id",
    "read_processed_bytes",
    "write_processed_npz",
]

SPLIT_NAMES = ("train", "val", "test", "final_eval")
CLASS_DIRS = {"NORMAL": 0, "PNEUMONIA": 1}
FOLDER_IMAGE_SIZE = 64
PROCESSED_FORMAT = "xray-triage-splits/1"
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".dicom"}
_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
# Kaggle's normal files: IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg; images of one study share IM-NNNN.
_STUDY = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+$", re.IGNORECASE)


@dataclass(frozen=True)
class SplitArrays:
    """One split: x float32 [N, 1, S, S] model input, y int64 [N], patients (str [N]) when known."""

    x: np.ndarray
    y: np.ndarray
    patients: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def counts(self) -> dict[str, int]:
        """Images per class name."""
        return {"normal": int((self.y == 0).sum()), "pneumonia": int((self.y == 1).sum())}


@dataclass(frozen=True)
class Splits:
    """A data set ready for training: the splits present, their image size, a stable hash, where it came from."""

    train: SplitArrays | None
    val: SplitArrays | None
    test: SplitArrays | None
    final_eval: SplitArrays | None
    image_size: int
    data_hash: str
    synthetic: bool
    source: str
    notes: tuple[str, ...] = field(default=())

    def present(self) -> dict[str, SplitArrays]:
        """The splits that exist, in the order train, val, test, final_eval."""
        return {name: s for name in SPLIT_NAMES if (s := getattr(self, name)) is not None}

    def __getitem__(self, name: str) -> SplitArrays:
        split = getattr(self, name, None) if name in SPLIT_NAMES else None
        if split is None:
            present = ", ".join(self.present())
            raise UserError(f"{self.source}: no split {name!r} (present: {present})")
        return split


def compute_data_hash(splits: dict[str, SplitArrays], image_size: int) -> str:
    """sha256 over the normalized arrays and labels of every split, in a fixed order and byte layout."""
    digest = hashlib.sha256(f"image_size={image_size};".encode())
    for name in SPLIT_NAMES:
        if name not in splits:
            continue
        split = splits[name]
        digest.update(f"{name}:{len(split)};".encode())
        digest.update(np.ascontiguousarray(split.x, dtype="<f4").tobytes())
        digest.update(np.ascontiguousarray(split.y, dtype="<i8").tobytes())
    return digest.hexdigest()


def make_splits(
    arrays: dict[str, SplitArrays], image_size: int, synthetic: bool, source: str, notes: Iterable[str] = ()
) -> Splits:
    """Splits from arrays per split name, with the data hash computed over them."""
    return Splits(
        train=arrays.get("train"),
        val=arrays.get("val"),
        test=arrays.get("test"),
        final_eval=arrays.get("final_eval"),
        image_size=image_size,
        data_hash=compute_data_hash(arrays, image_size),
        synthetic=synthetic,
        source=source,
        notes=tuple(notes),
    )


def check_both_classes(source: str, arrays: dict[str, SplitArrays]) -> None:
    """UserError naming `source` and the split when a split is empty or holds one class only."""
    for name, split in arrays.items():
        if len(split) == 0:
            raise UserError(f"{source}: split {name!r} is empty")
        classes = set(np.unique(split.y).tolist())
        if classes != {0, 1}:
            only = "normal (0)" if classes == {0} else "pneumonia (1)"
            raise UserError(f"{source}: split {name!r} has one class only ({only}); both 0 and 1 are needed")


# --- MedMNIST .npz ----------------------------------------------------------------------------------------------


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable .npz file ({exc})") from exc


def _gray_images(path: Path, key: str, images: np.ndarray) -> np.ndarray:
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        if images.shape[-1] == 1:
            images = images[..., 0]
        else:  # RGB MedMNIST variants: ITU-R 601 luminance (like PIL's convert("L")), as floats in [0, 1]
            scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(images.dtype, 1.0)
            weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
            images = np.clip((images.astype(np.float32) @ weights) / np.float32(scale), 0.0, 1.0)
    if images.ndim != 3:
        raise UserError(f"{path}: {key} has shape {images.shape}; expected [N, H, W] images")
    if images.dtype.kind == "f":
        if images.size and (np.nanmin(images) < 0.0 or np.nanmax(images) > 1.0 or np.isnan(images).any()):
            raise UserError(f"{path}: {key} holds floats outside [0, 1]")
    elif images.dtype not in (np.uint8, np.uint16):
        raise UserError(f"{path}: {key} has dtype {images.dtype}; expected uint8, uint16 or float in [0, 1]")
    return images


def _labels(path: Path, key: str, labels: np.ndarray, n: int) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise UserError(f"{path}: {key} has shape {labels.shape}; expected (N, 1) or (N,)")
    if labels.shape[0] != n:
        raise UserError(f"{path}: {key} has {labels.shape[0]} labels for {n} images")
    if labels.dtype.kind not in "iub":
        raise UserError(f"{path}: {key} has dtype {labels.dtype}; expected integer labels 0/1")
    bad = sorted(set(np.unique(labels).tolist()) - {0, 1})
    if bad:
        raise UserError(f"{path}: {key} holds labels {bad[:5]}; only 0 (normal) and 1 (pneumonia) are allowed")
    return labels.astype(np.int64)


def load_medmnist_npz(path: str | Path, image_size: int | None = None, *, need_train: bool = True) -> Splits:
    """A MedMNIST-style .npz (train_images/train_labels, val_..., test_...) of any resolution.

    `need_train` False (evaluation) accepts a file with any one split, e.g. only test_images / test_labels.
    """
    path = Path(path)
    data = _open_npz(path)
    if data.get("format") is not None and str(data["format"]) == PROCESSED_FORMAT:
        return load_processed_npz(path, data)
    present = [s for s in SPLIT_NAMES if f"{s}_images" in data or f"{s}_labels" in data]
    keys = ", ".join(sorted(data)) or "none"
    if need_train and "train" not in present:
        raise UserError(f"{path}: missing keys train_images/train_labels (found: {keys})")
    if not present:
        raise UserError(f"{path}: no <split>_images / <split>_labels keys (found: {keys})")
    for split in present:
        for part in ("images", "labels"):
            if f"{split}_{part}" not in data:
                raise UserError(f"{path}: missing key {split}_{part} (found: {', '.join(sorted(data))})")
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in present:
        images = _gray_images(path, f"{split}_images", data[f"{split}_images"])
        raw[split] = (images, _labels(path, f"{split}_labels", data[f"{split}_labels"], images.shape[0]))
    shapes = {images.shape[1:] for images, _ in raw.values()}
    if len(shapes) != 1:
        raise UserError(f"{path}: splits have different image shapes {sorted(shapes)}")
    height, width = shapes.pop()
    size = image_size or max(height, width)
    arrays = {split: SplitArrays(batch_to_model_input(images, size), labels) for split, (images, labels) in raw.items()}
    if need_train:
        check_both_classes(str(path), arrays)
    synthetic = bool(data["synthetic"]) if "synthetic" in data else False
    return make_splits(arrays, size, synthetic, str(path))


# --- Kaggle-style folders ---------------------------------------------------------------------------------------


def patient_id(file_name: str) -> str:
    """`person123_bacteria_4.jpeg` → `person123`; `IM-0115-0002.jpeg` → `IM-0115` (one study, kept together);
    any other name is its own patient."""
    name = Path(file_name).name
    if match := _PERSON.match(name):
        return match.group(1).lower()
    stem = Path(name).stem
    if match := _STUDY.match(stem):
        return match.group(1).upper()
    return stem


def _check_magic(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if sniff_format(head) is None and path.suffix.lower() not in (".dcm", ".dicom"):
        raise UserError(f"{path}: the bytes are not a PNG, JPEG or DICOM image")


def _decode_file(path: Path) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    content_type = "application/dicom" if path.suffix.lower() in (".dcm", ".dicom") else None
    try:
        return decode_image(data, content_type)
    except ImageError as exc:
        raise UserError(f"{path}: {exc.message}") from exc


def _folder_records(root: Path) -> list[tuple[str | None, Path, int]]:
    """(split dir or None, file, label) for every file under root/[split/]CLASS/."""
    split_dirs = [root / s for s in SPLIT_NAMES if (root / s).is_dir()]
    groups = [(d.name, d) for d in split_dirs] if split_dirs else [(None, root)]
    records: list[tuple[str | None, Path, int]] = []
    for split, base in groups:
        class_dirs = {d.name.upper(): d for d in base.iterdir() if d.is_dir()} if base.is_dir() else {}
        missing = [c for c in CLASS_DIRS if c not in class_dirs]
        if missing:
            raise UserError(f"{base}: missing class folder(s) {', '.join(missing)} (expected NORMAL and PNEUMONIA)")
        for cls, label in CLASS_DIRS.items():
            for file in sorted(class_dirs[cls].rglob("*")):
                if file.is_file() and not file.name.startswith("."):
                    records.append((split, file, label))
    if not records:
        raise UserError(f"{root}: no image files under NORMAL/ and PNEUMONIA/")
    return records


def _decode_records(
    root: Path, records: list[tuple[str | None, Path, int]], size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model inputs, labels, patient ids) of the records' files, with a progress bar."""
    from tqdm import tqdm

    for _, file, _ in records:
        _check_magic(file)  # fail fast on a stray file before minutes of decoding
    inputs = np.empty((len(records), 1, size, size), dtype=np.float32)
    for i, (_, file, _) in enumerate(tqdm(records, desc=f"decoding {root.name}", unit="img", disable=None)):
        inputs[i] = to_model_input(_decode_file(file), size)
    labels = np.array([label for _, _, label in records], dtype=np.int64)
    return inputs, labels, np.array([patient_id(file.name) for _, file, _ in records])


def _group_split(
    labels: np.ndarray, patients: np.ndarray, fractions: dict[str, float], seed: int
) -> dict[str, np.ndarray]:
    """Indices per split: whole patients per split, stratified by label, seeded. The first split takes the rest."""
    rng = np.random.default_rng(seed)
    names = list(fractions)
    by_patient: dict[str, list[int]] = {}
    patient_label: dict[str, int] = {}
    for idx, patient in enumerate(patients.tolist()):
        by_patient.setdefault(patient, []).append(idx)
        # A patient counts as pneumonia when any of their images is.
        patient_label[patient] = max(patient_label.get(patient, 0), int(labels[idx]))
    assigned: dict[str, str] = {}
    for label in (0, 1):
        group = sorted(p for p, lab in patient_label.items() if lab == label)
        rng.shuffle(group)
        total = sum(len(by_patient[p]) for p in group)
        filled = dict.fromkeys(names, 0)
        for patient in group:
            n = len(by_patient[patient])
            target = next((name for name in names[1:] if filled[name] + n / 2 <= fractions[name] * total), names[0])
            assigned[patient] = target
            filled[target] += n
        for name in names[1:]:
            # Every carved split gets at least one patient of each class when the class has enough patients.
            if filled[name] == 0 and fractions[name] > 0 and len(group) > len(names):
                donor = next(p for p in reversed(group) if assigned[p] == names[0])
                assigned[donor] = name
                filled[name] += len(by_patient[donor])
    out: dict[str, list[int]] = {name: [] for name in names}
    for patient, name in assigned.items():
        out[name].extend(by_patient[patient])
    return {name: np.array(sorted(idx), dtype=np.int64) for name, idx in out.items()}


def load_folder(path: str | Path, image_size: int | None = None, seed: int = 0) -> Splits:
    """A Kaggle-style folder `[train|val|test/]NORMAL|PNEUMONIA/*.{jpeg,png,dcm}`, split by patient.

    The given test split is kept. Train and val are kept when val is at least 5 % of them and no patient is in
    both; otherwise they are pooled and re-split 85/15 by patient. Images of a patient who is also in the test
    split are dropped from train/val (noted). Without split folders everything is split 70/15/15 by patient.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    size = image_size or FOLDER_IMAGE_SIZE
    records = _folder_records(root)
    inputs, labels, patients = _decode_records(root, records, size)
    given = np.array([split or "" for split, _, _ in records])
    notes: list[str] = []
    index: dict[str, np.ndarray] = {}
    if not given.any():
        index = _group_split(labels, patients, {"train": 0.7, "val": 0.15, "test": 0.15}, seed)
        notes.append("no split folders: split 70/15/15 by patient")
    else:
        pool = np.flatnonzero((given == "train") | (given == "val"))
        held_out: set[str] = set()
        for fixed in ("test", "final_eval"):
            if fixed in given:
                index[fixed] = np.flatnonzero(given == fixed)
                fixed_patients = set(patients[index[fixed]].tolist())
                if both := sorted(fixed_patients & held_out):
                    raise UserError(f"{root}: test and final_eval share patients (e.g. {', '.join(both[:3])})")
                held_out |= fixed_patients
        leaked = np.array([patients[i] in held_out for i in pool], dtype=bool)
        if leaked.any():
            notes.append(f"dropped {int(leaked.sum())} train/val images of patients who are in a held-out split")
            pool = pool[~leaked]
        train_idx, val_idx = pool[given[pool] == "train"], pool[given[pool] == "val"]
        shared_patients = set(patients[train_idx].tolist()) & set(patients[val_idx].tolist())
        if len(val_idx) >= 0.05 * len(pool) and not shared_patients:
            index["train"], index["val"] = train_idx, val_idx
        else:
            why = "shares patients with train" if shared_patients else "is missing or under 5 % of train+val"
            notes.append(f"val {why}: train+val re-split 85/15 by patient")
            sub = _group_split(labels[pool], patients[pool], {"train": 0.85, "val": 0.15}, seed)
            index["train"], index["val"] = pool[sub["train"]], pool[sub["val"]]
    arrays = {
        name: SplitArrays(inputs[idx], labels[idx], patients[idx])
        for name in SPLIT_NAMES
        if (idx := index.get(name)) is not None and len(idx)
    }
    check_both_classes(str(root), arrays)
    synthetic = any(p.name.upper().startswith("SYNTHETIC") for p in root.iterdir())
    return make_splits(arrays, size, synthetic, str(root), notes)


# --- carving and processed files ---------------------------------------------------------------------------------


def carve_split(split: SplitArrays, fraction: float, seed: int) -> tuple[SplitArrays, SplitArrays]:
    """Take about `fraction` of `split` out as a new split: whole patients, stratified by label, seeded."""
    patients = split.patients if split.patients is not None else np.array([f"#{i}" for i in range(len(split))])
    idx = _group_split(split.y, patients, {"rest": 1.0 - fraction, "carved": fraction}, seed)

    def take(rows: np.ndarray) -> SplitArrays:
        return SplitArrays(split.x[rows], split.y[rows], None if split.patients is None else split.patients[rows])

    return take(idx["rest"]), take(idx["carved"])


def write_processed_npz(splits: Splits, path: str | Path | None = None) -> bytes:
    """Serialize `splits` as the processed-splits .npz (model inputs, labels, patients, metadata); return bytes."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(PROCESSED_FORMAT),
        "image_size": np.array(splits.image_size, dtype=np.int64),
        "synthetic": np.array(splits.synthetic),
        "source": np.array(splits.source),
        "data_hash": np.array(splits.data_hash),
    }
    for name, split in splits.present().items():
        arrays[f"{name}_x"] = np.ascontiguousarray(split.x, dtype=np.float32)
        arrays[f"{name}_y"] = np.ascontiguousarray(split.y, dtype=np.int64)
        if split.patients is not None:
            arrays[f"{name}_patients"] = split.patients.astype(str)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def load_processed_npz(path: str | Path, data: dict[str, np.ndarray] | None = None) -> Splits:
    """The splits file written by `triage prepare` (processed/<name>/splits.npz)."""
    path = Path(path)
    data = data if data is not None else _open_npz(path)
    return _processed_from_arrays(str(path), data)


def read_processed_bytes(raw: bytes, source: str) -> Splits:
    """Processed splits from bytes (e.g. fetched from S3); `source` names them in errors."""
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{source}: not a readable splits .npz ({exc})") from exc
    return _processed_from_arrays(source, data)


def _processed_from_arrays(source: str, data: dict[str, np.ndarray]) -> Splits:
    if "format" not in data or str(data["format"]) != PROCESSED_FORMAT:
        raise UserError(f"{source}: not a processed splits file (no format={PROCESSED_FORMAT!r})")
    size = int(data["image_size"])
    arrays: dict[str, SplitArrays] = {}
    for name in SPLIT_NAMES:
        if f"{name}_x" not in data:
            continue
        x, y = data[f"{name}_x"], data[f"{name}_y"]
        if x.ndim != 4 or x.shape[1:] != (1, size, size) or y.shape != (x.shape[0],):
            raise UserError(f"{source}: {name}_x {x.shape} / {name}_y {y.shape} do not match image_size {size}")
        arrays[name] = SplitArrays(x.astype(np.float32), y.astype(np.int64), data.get(f"{name}_patients"))
    if "train" not in arrays:
        raise UserError(f"{source}: processed file has no train split")
    splits = make_splits(arrays, size, bool(data["synthetic"]), str(data.get("source", source)))
    stored = str(data.get("data_hash", ""))
    if stored and stored != splits.data_hash:
        raise UserError(f"{source}: data hash mismatch (file says {stored[:12]}, content is {splits.data_hash[:12]})")
    return splits


def _load_s3(uri: str) -> Splits:
    from shared.config import Settings
    from shared.storage import Storage

    bucket, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    if not bucket or not prefix:
        raise UserError(f"{uri}: expected s3://bucket/prefix of a prepared data set")
    storage = Storage.from_settings(Settings.from_env())
    manifest_key, splits_key = f"{prefix}/manifest.json", f"{prefix}/splits.npz"
    if not storage.exists(bucket, manifest_key):
        raise UserError(f"{uri}: no manifest.json (not a data set written by `triage prepare`)")
    manifest = storage.get_json(bucket, manifest_key)
    raw = storage.get_bytes(bucket, splits_key)
    digest = hashlib.sha256(raw).hexdigest()
    if manifest.get("sha256") and manifest["sha256"] != digest:
        raise UserError(f"{uri}/splits.npz: sha256 {digest[:12]} differs from the manifest's {manifest['sha256'][:12]}")
    return replace(read_processed_bytes(raw, f"{uri}/splits.npz"), source=uri)


def load_eval_split(path: str | Path, split: str, image_size: int | None = None, seed: int = 0) -> SplitArrays:
    """The images and labels of one split to evaluate on, from any file or folder that holds it.

    An .npz needs only that split's keys (e.g. a test-only file); a folder `[split/]NORMAL|PNEUMONIA/*` of PNG,
    JPEG or DICOM files gives its `split/` subfolder as is (no re-splitting), or, without split folders, the split
    training would carve from it (by patient, seeded). `split` "all" takes every image of the data set.
    """
    local = Path(path)
    if not str(path).startswith("s3://") and local.is_dir():
        if split == "all":
            return load_folder_images(local, image_size)
        if (local / split).is_dir():
            return load_folder_images(local / split, image_size)
        return load_folder(local, image_size, seed)[split]
    if not str(path).startswith("s3://") and local.is_file() and local.suffix == ".npz":
        splits = load_medmnist_npz(local, image_size, need_train=False)
    else:
        splits = load_splits(path, image_size, seed)
    if split == "all":
        present = list(splits.present().values())
        return SplitArrays(np.concatenate([s.x for s in present]), np.concatenate([s.y for s in present]))
    return splits[split]


def load_folder_images(root: Path, image_size: int | None = None) -> SplitArrays:
    """Every image under root/[split/]NORMAL|PNEUMONIA (recursively), labelled by its class folder."""
    return SplitArrays(*_decode_records(root, _folder_records(root), image_size or FOLDER_IMAGE_SIZE))


def load_splits(path: str | Path, image_size: int | None = None, seed: int = 0) -> Splits:
    """Load any supported data set: MedMNIST or processed .npz, a Kaggle-style folder, or s3://bucket/prefix.

    `image_size` None keeps the native size of .npz data (28 for PneumoniaMNIST) and uses 64 for folders.
    """
    text = str(path)
    if text.startswith("s3://"):
        splits = _load_s3(text)
    else:
        local = Path(path)
        if local.is_dir():
            return load_folder(local, image_size, seed)
        if not local.exists():
            raise UserError(f"{local}: no such file or folder")
        splits = load_medmnist_npz(local, image_size)
    if image_size is not None and image_size != splits.image_size:
        # Only processed splits have a fixed size; resizing resized data would differ from serving's path.
        raise UserError(f"{splits.source}: prepared at image size {splits.image_size}, not {image_size}; prepare again")
    return splits
