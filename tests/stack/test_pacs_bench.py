"""The PACS benchmark's pieces without a stack: a receiver that is not there counts as a failure (the target is
then not met), the report's line and target; the measuring on a live stack is in test_pacs_roundtrip.py."""

from __future__ import annotations

import argparse

import pytest

from load_tests.pacs import PACS_TARGET_P95_S, cstore_to_sr, parse_dicom_url
from load_tests.report import pacs_lines, targets
from triage.stack.processes import unused_port_block


def test_the_dicom_url_names_the_ae_host_and_port() -> None:
    assert parse_dicom_url("dicom://XRAYTRIAGE@127.0.0.1:11112") == ("XRAYTRIAGE", "127.0.0.1", 11112)


def test_a_receiver_that_is_not_there_is_a_failure_not_a_time() -> None:
    (port,) = unused_port_block(1)
    result = cstore_to_sr(f"dicom://XRAYTRIAGE@127.0.0.1:{port}", f"http://127.0.0.1:{port}/dicom-web", studies=2,
                          rows=32, columns=32, gap_s=0)
    assert result["n"] == 0 and result["p95_s"] is None and result["met"] is False
    assert result["failures"] == ["study 0: C-STORE status -1", "study 1: C-STORE status -1"]


def _report(pacs: dict) -> dict:
    warm = {"p50_ms": 1.0, "p99_ms": 2.0}
    return {"warm": {"function_c1": warm, "gateway_c1": warm}, "cold_start": {"median_s": 0.2},
            "upload_to_result": {"p95_s": 1.0}, "pacs": pacs}


def test_the_report_carries_the_pacs_line_and_target() -> None:
    pacs = {"n": 20, "rows": 2500, "columns": 2048, "bytes": 10240952, "p50_s": 0.9, "p95_s": 1.2, "max_s": 1.4,
            "cstore_p50_s": 0.3, "samples_s": [], "failures": [], "target_p95_s": PACS_TARGET_P95_S, "met": True}
    (line,) = pacs_lines(pacs)
    assert "2,500 x 2,048 16-bit DX" in line and "p50 0.9 s, p95 1.2 s" in line and "target p95 <= 3.0 s" in line
    assert targets(_report(pacs))["pacs_cstore_to_sr_p95_s"] == (3.0, 1.2)
    failed = {**pacs, "failures": ["study 3: no SR in the PACS within 60 s"]}
    assert targets(_report(failed))["pacs_cstore_to_sr_p95_s"] == (3.0, None)  # a lost study is not met
    assert "1 failed: study 3" in pacs_lines(failed)[0]


def test_a_skipped_pacs_benchmark_says_why_and_sets_no_target() -> None:
    skipped = {"skipped": "Orthanc is not installed"}
    assert pacs_lines(skipped) == ["- PACS (C-STORE to the SR in Orthanc): skipped: Orthanc is not installed"]
    assert "pacs_cstore_to_sr_p95_s" not in targets(_report(skipped))


def test_bench_refuses_a_pacs_count_out_of_range() -> None:
    from shared.errors import UserError
    from triage.bench import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).pacs_studies == 20
    with pytest.raises(UserError, match="--pacs-studies 0..200"):
        run(parser.parse_args(["--pacs-studies", "500"]))


def test_a_benchmark_study_carries_the_radiograph_it_was_given() -> None:
    """The PACS benchmark sends real radiographs (random pixels would be refused by the not-assessable gate)."""
    import io

    import numpy as np
    import pydicom

    from load_tests.pacs import _study

    image = np.tile(np.linspace(0, 255, 28, dtype=np.float32), (28, 1)).astype(np.uint8)
    data, study = _study(56, 40, seed=1, image=image)
    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = ds.pixel_array.astype(np.float64)
    assert ds.StudyInstanceUID == study and pixels.shape == (56, 40)
    # left to right it ramps as the image does (x 4095 / 255), up to the small per-study noise
    assert pixels[:, :4].mean() < 300 and pixels[:, -4:].mean() > 3700
    assert np.corrcoef(pixels.mean(axis=0), np.arange(40))[0, 1] > 0.99
