"""The SYNTHETIC chest phantom: files, labels, determinism, and a task that is learnable but not trivial."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from training_jobs.phantom import make_phantoms, write_phantom_folder, write_phantom_npz
from triage.cli import main


def test_npz_has_medmnist_keys_and_is_marked_synthetic(tmp_path: Path) -> None:
    path = write_phantom_npz(tmp_path / "p.npz", n_train=20, n_val=6, n_test=4, size=32, seed=1)
    with np.load(path) as data:
        assert bool(data["synthetic"]) is True
        for split, n in (("train", 20), ("val", 6), ("test", 4)):
            images, labels = data[f"{split}_images"], data[f"{split}_labels"]
            assert images.shape == (n, 32, 32) and images.dtype == np.uint8
            assert labels.shape == (n, 1) and labels.dtype == np.uint8
            assert set(np.unique(labels).tolist()) == {0, 1}


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path) -> None:
    a, la = make_phantoms(10, 28, seed=5)
    b, lb = make_phantoms(10, 28, seed=5)
    c, _ = make_phantoms(10, 28, seed=6)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_pneumonia_is_learnable_but_not_trivial() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x, y = make_phantoms(300, 20, seed=0)
    xv, yv = make_phantoms(200, 20, seed=10)
    model = LogisticRegression(C=0.3, max_iter=300).fit(x.reshape(300, -1) / 255.0, y)
    auc = roc_auc_score(yv, model.predict_proba(xv.reshape(200, -1) / 255.0)[:, 1])
    # A linear model on pixels sees some signal; a perfect score would make the phantom useless as a test.
    assert 0.6 < auc < 0.97


def test_folder_has_kaggle_names_and_several_images_per_patient(tmp_path: Path) -> None:
    root = write_phantom_folder(tmp_path / "chest_xray", {"train": 4, "test": 2}, images_per_patient=(2, 3), size=32)
    pneumonia = sorted(p.name for p in (root / "train" / "PNEUMONIA").iterdir())
    normal = sorted(p.name for p in (root / "train" / "NORMAL").iterdir())
    assert all(re.fullmatch(r"person\d+_(bacteria|virus)_\d+\.jpeg", n) for n in pneumonia)
    assert all(re.fullmatch(r"IM-\d{4}-\d{4}\.jpeg", n) for n in normal)
    persons = {n.split("_")[0] for n in pneumonia}
    assert len(pneumonia) >= 2 * len(persons)
    assert (root / "SYNTHETIC_PHANTOM_DATA.txt").exists()


def test_cli_writes_the_file_and_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ph.npz"
    code = main(["phantom", "--out", str(out), "--n-train", "10", "--n-val", "4", "--n-test", "4", "--json"])
    assert code == 0 and out.exists()
    captured = capsys.readouterr()
    assert '"synthetic": true' in captured.out.strip().splitlines()[-1]
    assert "SYNTHETIC" in captured.err


def test_cli_rejects_a_split_too_small_for_two_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["phantom", "--out", str(tmp_path / "x.npz"), "--n-val", "1"]) == 2
    assert "val split needs at least 2 images" in capsys.readouterr().err


def test_cli_writes_a_dicom_folder_that_loads_and_carries_fake_identifiers(tmp_path: Path) -> None:
    import pydicom

    from training_jobs.data import load_splits

    out = tmp_path / "dicoms"
    args = ["phantom", "--format", "dicom", "--out", str(out), "--n-train", "3", "--n-val", "1", "--n-test", "1"]
    assert main([*args, "--size", "32"]) == 0
    files = sorted(out.rglob("*.dcm"))
    assert files and all(f.suffix == ".dcm" for f in files)
    photometric = {pydicom.dcmread(f).PhotometricInterpretation for f in files}
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    first = pydicom.dcmread(next(f for f in files if f.name.startswith("person")))
    assert first.PatientID.startswith("SYN-person") and first.PatientName == "SYNTHETIC^PHANTOM"
    splits = load_splits(out, 32)
    assert splits.synthetic and len(splits.train) + len(splits.val) + len(splits.test) == len(files)
    assert main([*args]) == 2  # refuses to write into a non-empty folder
