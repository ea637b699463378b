"""`triage prepare` end to end against a local S3 server: raw upload, splits, manifest, report, bad input."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shared.config import Settings
from shared.errors import UserError
from shared.storage import Storage
from training_jobs.data import load_splits
from training_jobs.phantom import write_phantom_folder
from triage.cli import main


@pytest.fixture
def storage(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Storage:
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server)
    return Storage.from_settings(Settings(s3_endpoint_url=s3_server))


def _name() -> str:
    return f"ds-{uuid.uuid4().hex[:8]}"


def _json_line(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_prepare_npz_writes_raw_splits_report_and_manifest(
    storage: Storage, phantom_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = _name()
    report = tmp_path / "report"
    code = main(["prepare", "--data", str(phantom_npz), "--name", name, "--out-report", str(report), "--json"])
    assert code == 0
    summary = _json_line(capsys.readouterr().out)
    assert summary["uri"] == f"s3://processed/{name}" and summary["synthetic"] is True

    assert storage.get_bytes("raw-data", f"{name}/phantom.npz") == phantom_npz.read_bytes()
    manifest = storage.get_json("processed", f"{name}/manifest.json")
    payload = storage.get_bytes("processed", f"{name}/splits.npz")
    assert manifest["sha256"] == hashlib.sha256(payload).hexdigest()
    assert manifest["synthetic"] is True and manifest["image_size"] == 28
    # The missing final_eval split was carved out of train; the others are the file's.
    assert manifest["splits"] == ["train", "val", "test", "final_eval"]
    splits = load_splits(f"s3://processed/{name}")
    assert splits.data_hash == manifest["data_hash"]
    for split_name, split in splits.present().items():
        counts = manifest["counts"][split_name]
        assert counts["normal"] == int((split.y == 0).sum())
        assert counts["pneumonia"] == int((split.y == 1).sum())
        assert counts["total"] == len(split)
    assert manifest["counts"]["val"]["total"] == 20 and manifest["counts"]["test"]["total"] == 20
    assert manifest["counts"]["train"]["total"] + manifest["counts"]["final_eval"]["total"] == 60

    for file in ("counts.json", "counts.png", "samples.png", "histograms.png"):
        assert (report / file).stat().st_size > 0
        assert storage.exists("processed", f"{name}/report/{file}")
    assert (report / "samples.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((report / "counts.json").read_text())["counts"] == manifest["counts"]


def test_prepare_folder_splits_by_patient_and_uploads_every_file(
    storage: Storage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_phantom_folder(tmp_path / "chest_xray", {"train": 8, "val": 2, "test": 2}, size=32, seed=5)
    name = _name()
    args = ["prepare", "--data", str(root), "--name", name, "--image-size", "32", "--out-report", str(tmp_path / "r")]
    assert main([*args, "--json"]) == 0
    files = sorted(f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file())
    assert storage.list_keys("raw-data", f"{name}/") == [f"{name}/{f}" for f in files]
    splits = load_splits(f"s3://processed/{name}")
    assert set(splits.present()) == {"train", "val", "test", "final_eval"}
    seen: dict[str, str] = {}
    for split_name, split in splits.present().items():
        for patient in set(split.patients.tolist()):
            assert seen.setdefault(patient, split_name) == split_name, f"{patient} in {seen[patient]} and {split_name}"


def test_prepare_again_replaces_the_data_set(storage: Storage, phantom_npz: Path, tmp_path: Path) -> None:
    name = _name()
    base = ["prepare", "--data", str(phantom_npz), "--name", name, "--out-report", str(tmp_path / "r")]
    assert main(base) == 0
    first = storage.get_json("processed", f"{name}/manifest.json")
    assert main([*base, "--seed", "7"]) == 0
    second = storage.get_json("processed", f"{name}/manifest.json")
    assert second["seed"] == 7 and second["sha256"] != first["sha256"]
    assert load_splits(f"s3://processed/{name}").data_hash == second["data_hash"]


def _one_class_npz(tmp_path: Path) -> Path:
    path = tmp_path / "normal_only.npz"
    with open(path, "wb") as fh:
        np.savez(fh, train_images=np.zeros((6, 28, 28), np.uint8), train_labels=np.zeros((6, 1), np.uint8))
    return path


def _folder_with_junk(tmp_path: Path) -> Path:
    root = write_phantom_folder(tmp_path / "junk", {"train": 3, "test": 2}, size=32, seed=1)
    (root / "test" / "PNEUMONIA" / "report.pdf").write_bytes(b"%PDF-1.4 not an image")
    return root


def _folder_with_bad_dicom(tmp_path: Path) -> Path:
    root = write_phantom_folder(tmp_path / "baddicom", {"train": 3, "test": 2}, size=32, seed=1)
    (root / "train" / "NORMAL" / "IM-9999-0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 20)
    return root


def _wrong_keys(tmp_path: Path) -> Path:
    path = tmp_path / "wrong.npz"
    with open(path, "wb") as fh:
        np.savez(fh, images=np.zeros((4, 28, 28), np.uint8), labels=np.zeros(4, np.uint8))
    return path


@pytest.mark.parametrize(
    ("make", "culprit"),
    [
        (_one_class_npz, "normal_only.npz"),
        (_folder_with_junk, "report.pdf"),
        (_folder_with_bad_dicom, "IM-9999-0001.dcm"),
        (_wrong_keys, "wrong.npz"),
    ],
    ids=["one-class", "non-image-file", "unreadable-dicom", "wrong-keys"],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(
    storage: Storage, tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], Path], culprit: str
) -> None:
    data = make(tmp_path)
    name = _name()
    report = tmp_path / "report"
    assert main(["prepare", "--data", str(data), "--name", name, "--out-report", str(report)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("triage prepare: error: ") and culprit in last
    storage.ensure_buckets(("raw-data", "processed"))
    assert storage.list_keys("raw-data", f"{name}/") == []
    assert storage.list_keys("processed", f"{name}/") == []
    assert not report.exists()


def test_missing_data_path(storage: Storage, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "does-not-exist"
    assert main(["prepare", "--data", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_a_reader_without_manifest_gets_a_clear_error(storage: Storage) -> None:
    name = _name()
    storage.ensure_buckets(("processed",))
    storage.put_bytes("processed", f"{name}/splits.npz", b"half-written")
    with pytest.raises(UserError, match="no manifest.json"):
        load_splits(f"s3://processed/{name}")


class _SplitsUploadFails(Storage):
    """A real S3 storage that fails when the splits file is written (e.g. the network drops mid-run)."""

    def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str | None = None, metadata: dict | None = None
    ) -> str:
        if key.endswith("splits.npz"):
            raise ConnectionError("network dropped")
        return super().put_bytes(bucket, key, data, content_type, metadata)


def test_a_failure_mid_upload_leaves_nothing_behind(s3_server: str, phantom_npz: Path, tmp_path: Path) -> None:
    from training_jobs.prepare import prepare

    storage = _SplitsUploadFails.from_settings(Settings(s3_endpoint_url=s3_server))
    name = _name()
    with pytest.raises(ConnectionError):
        prepare(phantom_npz, storage, name=name, report_dir=tmp_path / "r", log=lambda _: None)
    assert storage.list_keys("raw-data", f"{name}/") == []
    assert storage.list_keys("processed", f"{name}/") == []


def test_unreachable_s3_is_one_clear_line(
    phantom_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    assert main(["prepare", "--data", str(phantom_npz), "--out-report", str(tmp_path / "r")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "http://127.0.0.1:9" in last and "nothing was published" in last


def test_raw_dicoms_are_deidentified_before_upload(storage: Storage, tmp_path: Path) -> None:
    import pydicom

    from training_jobs.phantom import FAKE_PATIENT

    root = write_phantom_folder(tmp_path / "dicoms", {"train": 4, "test": 2}, size=32, seed=3, file_format="dicom")
    name = _name()
    assert main(["prepare", "--data", str(root), "--name", name, "--out-report", str(tmp_path / "r")]) == 0
    keys = [k for k in storage.list_keys("raw-data", f"{name}/") if k.endswith(".dcm")]
    assert len(keys) == sum(1 for _ in root.rglob("*.dcm"))
    for key in keys:
        data = storage.get_bytes("raw-data", key)
        assert b"SYNTHETIC^PHANTOM" not in data and FAKE_PATIENT["PatientBirthDate"].encode() not in data
        assert b"SYN-person" not in data
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientID == ""
