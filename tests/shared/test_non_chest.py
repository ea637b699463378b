"""The non-chest corpus (deterministic, every kind, decodable) and the gate benchmark's shares on a tiny gated model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from load_tests.gate_bench import measure_gate
from load_tests.non_chest import KINDS, build_corpus
from shared.imaging import batch_to_model_input, decode_image
from tests.functions.tiny_model import build_gated_model_dir, gated_phantoms


def _digest(corpus) -> str:
    return hashlib.sha256(b"".join(item.name.encode() + item.data for item in corpus)).hexdigest()


def test_the_corpus_is_deterministic_has_every_kind_and_decodes() -> None:
    corpus = build_corpus(0)
    assert _digest(corpus) == _digest(build_corpus(0))
    assert _digest(corpus) != _digest(build_corpus(1))
    assert {item.kind for item in corpus} == set(KINDS)
    assert len({item.name for item in corpus}) == len(corpus)
    assert {item.content_type for item in corpus if item.kind == "photo"} == {"image/png", "image/jpeg"}
    for item in corpus[::7]:
        assert decode_image(item.data, item.content_type).ndim == 2


@pytest.fixture(scope="module")
def gated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gated_model_dir(tmp_path_factory.mktemp("gated-bench") / "model")


def test_measure_gate_reports_both_shares_and_each_kind(gated_dir: Path) -> None:
    val = gated_phantoms(40, seed=14)
    result = measure_gate(gated_dir, val)
    dicoms = sum(item.kind == "dicom" for item in build_corpus(0))
    assert dicoms >= 40  # pydicom's own CT, MR, US, NM, RT dose, ... images
    assert result["gate"] is True and result["n_val"] == 40 and result["n_non_chest"] == 24 * (len(KINDS) - 1) + dicoms
    assert result["val_accepted"] >= 0.9
    assert set(result["refused_by_kind"]) == set(KINDS)
    assert result["refused_by_kind"]["flat"] == 1.0 and result["refused_by_kind"]["photo"] == 1.0
    assert result["reasons_by_kind"]["photo"] == {"not_grayscale": 24}
    assert result["reasons_by_kind"]["dicom"]["header_not_chest"] >= 25  # CT, MR, US, NM, SEG, RTDOSE by header
    assert result["targets"]["val_accepted"]["met"] is (result["val_accepted"] >= 0.99)
    # Model inputs [N, 1, S, S] are taken as well as images [N, H, W]: the same images, the same share.
    assert measure_gate(gated_dir, batch_to_model_input(val, 28))["val_accepted"] == result["val_accepted"]


def test_measure_gate_on_a_model_without_a_gate_says_so(tmp_path: Path) -> None:
    from tests.functions.tiny_model import build_tiny_model_dir

    result = measure_gate(build_tiny_model_dir(tmp_path / "model"), gated_phantoms(4))
    assert result["gate"] is False and "no gate" in result["note"]
