"""Loaders: MedMNIST .npz, Kaggle-style folders with JPEG / PNG / DICOM, patient-level splits, bad input."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.errors import UserError
from shared.imaging import decode_image, to_model_input
from training_jobs.data import (
    SplitArrays,
    carve_split,
    load_splits,
    patient_id,
    write_processed_npz,
)
from training_jobs.phantom import PhantomDicomSpec, make_phantom, write_phantom_dicom, write_phantom_folder
from triage.cli import main


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _medmnist(path: Path, n: int = 12, size: int = 28, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.uint8)[:, None]
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    return _npz(path, train_images=images, train_labels=labels, val_images=images[:6], val_labels=labels[:6])


@pytest.fixture(scope="module")
def kaggle_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kaggle") / "chest_xray"
    return write_phantom_folder(root, {"train": 10, "test": 3}, images_per_patient=(1, 3), size=32, seed=2)


# --- .npz ---------------------------------------------------------------------------------------------------------


def test_phantom_npz_loads_at_native_size(phantom_npz: Path) -> None:
    splits = load_splits(phantom_npz)
    assert splits.image_size == 28 and splits.synthetic is True
    assert set(splits.present()) == {"train", "val", "test"} and splits.final_eval is None
    train = splits.train
    assert train.x.shape == (60, 1, 28, 28) and train.x.dtype == np.float32
    assert train.y.dtype == np.int64 and set(np.unique(train.y).tolist()) == {0, 1}
    assert train.x.min() >= -1.0 and train.x.max() <= 1.0


def test_npz_of_another_resolution_and_a_requested_size(tmp_path: Path) -> None:
    path = _medmnist(tmp_path / "pneumoniamnist_64.npz", size=64)
    native = load_splits(path)
    assert native.image_size == 64 and native.synthetic is False and native.test is None
    small = load_splits(path, image_size=28)
    assert small.train.x.shape == (12, 1, 28, 28)
    assert small.data_hash != native.data_hash


def test_npz_rows_equal_what_serving_computes_from_a_png(tmp_path: Path) -> None:
    path = _medmnist(tmp_path / "m.npz")
    splits = load_splits(path, image_size=20)
    with np.load(path) as data:
        image = data["train_images"][3]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    np.testing.assert_array_equal(to_model_input(decode_image(buf.getvalue()), 20), splits.train.x[3])


def test_data_hash_is_stable_and_sees_a_changed_label(tmp_path: Path) -> None:
    path = _medmnist(tmp_path / "m.npz")
    assert load_splits(path).data_hash == load_splits(path).data_hash
    with np.load(path) as data:
        arrays = dict(data)
    arrays["train_labels"] = arrays["train_labels"].copy()
    arrays["train_labels"][0] = 1 - arrays["train_labels"][0]
    assert load_splits(_npz(tmp_path / "m2.npz", **arrays)).data_hash != load_splits(path).data_hash


def _bad_npz(tmp_path: Path, case: str) -> tuple[Path, str]:
    images = np.zeros((4, 28, 28), np.uint8)
    labels = np.array([[0], [1], [0], [1]], np.uint8)
    if case == "missing-file":
        return tmp_path / "nope.npz", "no such file"
    if case == "corrupt":
        path = tmp_path / "corrupt.npz"
        path.write_bytes(b"PK\x03\x04 definitely not a zip archive")
        return path, "not a readable .npz"
    if case == "wrong-keys":
        return _npz(tmp_path / "wrong.npz", x=images, y=labels), "missing keys train_images/train_labels"
    if case == "missing-labels":
        return _npz(tmp_path / "nolabels.npz", train_images=images, train_labels=labels, val_images=images), (
            "missing key val_labels"
        )
    if case == "one-class":
        return _npz(tmp_path / "one.npz", train_images=images, train_labels=np.zeros((4, 1), np.uint8)), (
            "one class only"
        )
    if case == "bad-labels":
        return _npz(tmp_path / "three.npz", train_images=images, train_labels=labels + 1), "labels [2]"
    if case == "length-mismatch":
        return _npz(tmp_path / "len.npz", train_images=images, train_labels=labels[:3]), "3 labels for 4 images"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["missing-file", "corrupt", "wrong-keys", "missing-labels", "one-class", "bad-labels", "length-mismatch"]
)
def test_bad_npz_gives_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    path, expected = _bad_npz(tmp_path, case)
    with pytest.raises(UserError) as info:
        load_splits(path)
    message = info.value.message
    assert str(path) in message and expected in message and "\n" not in message


# --- folders --------------------------------------------------------------------------------------------------------


def test_patient_id_from_kaggle_names() -> None:
    assert patient_id("person123_bacteria_4.jpeg") == "person123"
    assert patient_id("PERSON7_virus_1.jpeg") == "person7"
    assert patient_id("IM-0115-0001.jpeg") == patient_id("IM-0115-0002.jpeg") == "IM-0115"
    assert patient_id("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"
    assert patient_id("scan_42.png") == "scan_42"


def _patients(split: SplitArrays) -> set[str]:
    return set(split.patients.tolist())


def test_folder_keeps_test_and_carves_a_missing_val_by_patient(kaggle_folder: Path) -> None:
    splits = load_splits(kaggle_folder, seed=0)
    assert splits.image_size == 64 and splits.synthetic is True
    present = splits.present()
    assert set(present) == {"train", "val", "test"}
    n_files = sum(1 for f in kaggle_folder.rglob("*.jpeg"))
    assert sum(len(s) for s in present.values()) == n_files
    assert len(splits.test) == sum(1 for _ in (kaggle_folder / "test").rglob("*.jpeg"))  # test kept as given
    assert any("re-split" in note for note in splits.notes)
    assert not _patients(splits.train) & _patients(splits.val)
    assert not (_patients(splits.train) | _patients(splits.val)) & _patients(splits.test)
    for split in present.values():
        assert set(np.unique(split.y).tolist()) == {0, 1}


def test_folder_keeps_a_given_val_split(tmp_path: Path) -> None:
    root = write_phantom_folder(tmp_path / "given", {"train": 4, "val": 2, "test": 2}, size=32, seed=4)
    splits = load_splits(root, 32)
    assert len(splits.val) == sum(1 for _ in (root / "val").rglob("*.jpeg"))
    assert not splits.notes


def test_folder_split_is_seeded(kaggle_folder: Path) -> None:
    a, b = load_splits(kaggle_folder, 32, seed=1), load_splits(kaggle_folder, 32, seed=1)
    assert a.data_hash == b.data_hash
    assert load_splits(kaggle_folder, 32, seed=2).data_hash != a.data_hash


def test_folder_without_split_dirs_is_split_70_15_15_by_patient(tmp_path: Path, kaggle_folder: Path) -> None:
    root = tmp_path / "flat"
    for cls in ("NORMAL", "PNEUMONIA"):
        shutil.copytree(kaggle_folder / "train" / cls, root / cls)
    splits = load_splits(root, 32)
    assert set(splits.present()) == {"train", "val", "test"}
    names = ["train", "val", "test"]
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not _patients(splits[first]) & _patients(splits[second])


def test_patient_in_train_and_test_is_dropped_from_train(tmp_path: Path, kaggle_folder: Path) -> None:
    root = tmp_path / "leaky"
    shutil.copytree(kaggle_folder, root)
    leaked = sorted((root / "test" / "PNEUMONIA").iterdir())[0]
    person = patient_id(leaked.name)
    shutil.copy(leaked, root / "train" / "PNEUMONIA" / f"{person}_bacteria_99.jpeg")
    splits = load_splits(root, 32)
    assert person in _patients(splits.test)
    assert person not in _patients(splits.train) | _patients(splits.val)
    assert any("dropped" in note for note in splits.notes)


def test_folder_with_dicom_files_decodes_them_like_serving(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "dicoms"
    specs = [
        PhantomDicomSpec(bits=12, photometric="MONOCHROME1"),
        PhantomDicomSpec(bits=16, voi_lut=True),
        PhantomDicomSpec(bits=12, rescale=(1.0, -1024.0), window=(500.0, 1000.0)),
    ]
    expected = []
    person = 0
    for split in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            for spec in specs if split == "train" else specs[:1]:
                person += 1
                image = make_phantom(rng, 32, cls == "PNEUMONIA")
                write_phantom_dicom(root / split / cls / f"person{person}_scan_1.dcm", image, spec)
                if split == "train":
                    expected.append(to_model_input(image, 32))
    splits = load_splits(root, 32)
    assert len(splits.train) == 6 and len(splits.val) == 2 and len(splits.test) == 2
    for want in expected:
        # Every file's row equals the original image through the shared preprocessing (MONOCHROME1 not inverted).
        distance = np.abs(splits.train.x - want).reshape(6, -1).max(axis=1).min()
        assert distance < 0.01


def test_non_image_file_in_a_folder_names_the_file(tmp_path: Path, kaggle_folder: Path) -> None:
    root = tmp_path / "with-junk"
    shutil.copytree(kaggle_folder, root)
    junk = root / "train" / "NORMAL" / "notes.txt"
    junk.write_text("radiologist notes, not an image")
    with pytest.raises(UserError) as info:
        load_splits(root)
    assert str(junk) in info.value.message and "not a PNG, JPEG or DICOM" in info.value.message


def test_unreadable_dicom_names_the_file(tmp_path: Path, kaggle_folder: Path) -> None:
    root = tmp_path / "bad-dicom"
    shutil.copytree(kaggle_folder, root)
    bad = root / "test" / "PNEUMONIA" / "person999_virus_1.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    with pytest.raises(UserError) as info:
        load_splits(root)
    assert str(bad) in info.value.message and "DICOM" in info.value.message


def test_folder_missing_a_class_folder(tmp_path: Path) -> None:
    (tmp_path / "x" / "NORMAL").mkdir(parents=True)
    with pytest.raises(UserError, match="PNEUMONIA"):
        load_splits(tmp_path / "x")


@pytest.mark.parametrize("case", ["missing-file", "corrupt"])
def test_cli_exits_2_with_the_error_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    path, _ = _bad_npz(tmp_path, case)
    assert main(["prepare", "--data", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("triage prepare: error: ") and str(path) in err[-1]


# --- carving and processed files --------------------------------------------------------------------------------


def test_carve_split_keeps_patients_whole_and_is_stratified(kaggle_folder: Path) -> None:
    train = load_splits(kaggle_folder, 32).train
    rest, carved = carve_split(train, 0.25, seed=3)
    assert len(rest) + len(carved) == len(train)
    assert not _patients(rest) & _patients(carved)
    assert set(np.unique(carved.y).tolist()) == {0, 1}
    again_rest, again_carved = carve_split(train, 0.25, seed=3)
    np.testing.assert_array_equal(carved.x, again_carved.x)


def test_carve_split_without_patients_treats_each_image_as_one(phantom_npz: Path) -> None:
    train = load_splits(phantom_npz).train
    rest, carved = carve_split(train, 0.2, seed=0)
    assert len(carved) == pytest.approx(12, abs=2)
    assert carved.counts()["normal"] == pytest.approx(carved.counts()["pneumonia"], abs=1)


def test_processed_file_round_trips(tmp_path: Path, phantom_npz: Path) -> None:
    splits = load_splits(phantom_npz)
    path = tmp_path / "splits.npz"
    write_processed_npz(splits, path)
    again = load_splits(path)
    assert again.data_hash == splits.data_hash and again.synthetic and again.image_size == 28
    np.testing.assert_array_equal(again.test.x, splits.test.x)
    with pytest.raises(UserError, match="image size 28"):
        load_splits(path, image_size=32)
