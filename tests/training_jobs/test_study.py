"""`triage study`: stratified folds, one tiny recipe end to end on phantoms, bad arguments exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training_jobs.study import RECIPES, markdown_table, recipe_options, stratified_folds
from training_jobs.train import TrainOptions

torch.set_num_threads(1)


def test_folds_are_stratified_disjoint_and_cover_the_data():
    y = np.array([0] * 30 + [1] * 70)
    folds = stratified_folds(y, 5, seed=3)
    assert len(folds) == 5
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(100))  # cover, and disjoint (no index twice)
    for held in folds:
        assert len(held) == 20 and (y[held] == 0).sum() == 6  # each fold keeps the 30 / 70 mix
    assert all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(y, 5, seed=3), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(folds, stratified_folds(y, 5, seed=4), strict=True))


def test_recipes_change_what_they_say():
    base = TrainOptions()
    assert recipe_options("acq-aug", base).aug_gamma > 0
    assert recipe_options("input-norm", base).model.input_norm is True
    assert recipe_options("baseline-v1", base).model.input_norm is False
    v1 = recipe_options("baseline-v1", base)
    assert v1.aug_gamma == 0.0 and v1.threshold_quantile == 0.05
    assert recipe_options("ls0", base).label_smoothing == 0.0
    assert recipe_options("default", base) == base and base.model.input_norm is True and base.aug_gamma > 0
    assert recipe_options("acq-aug", base).model.input_norm is False  # relative to the pre-study recipe


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from training_jobs.phantom import write_phantom_npz

    return write_phantom_npz(tmp_path_factory.mktemp("data") / "phantom.npz", n_train=160, n_val=40, n_test=8)


def test_study_runs_a_tiny_recipe_and_writes_json_and_markdown(phantom, tmp_path, capsys):
    from triage.cli import main

    out = tmp_path / "study.jsonl"
    argv = ["study", "--data", str(phantom), "--recipes", "tiny-test", "--folds", "2", "--epochs", "1",
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["recipe"] == "tiny-test" and record["folds"] == 2 and record["n"] == 200
    assert len(record["fold_rows"]) == 2 and all(r["epochs"] == 1 for r in record["fold_rows"])
    for key in ("auc", "accuracy", "sensitivity", "specificity", "ece"):
        cv = record["cv"][key]
        assert 0.0 <= cv["worst"] <= 1.0 and 0.0 <= cv["mean"] <= 1.0
        assert (cv["worst"] >= cv["mean"]) if key == "ece" else (cv["worst"] <= cv["mean"])
    assert set(record["policies"]) == {"q05", "q25", "q50"}
    assert len(record["stress"]["shifts_auc"]) == 14
    table = (tmp_path / "study.md").read_text().splitlines()
    assert len(table) == 3 and table[2].startswith("| tiny-test | 2 x ")
    assert "tiny-test: CV AUC" in capsys.readouterr().out

    assert main(argv + ["--no-stress"]) == 0  # appends; the table is rebuilt from every record
    assert len(out.read_text().splitlines()) == 2 and len((tmp_path / "study.md").read_text().splitlines()) == 4
    assert markdown_table([json.loads(out.read_text().splitlines()[-1])]).splitlines()[2].count("| - |") >= 1


@pytest.mark.parametrize(("extra", "message"), [
    (["--folds", "1"], "--folds must be at least 2"),
    (["--recipes", "default,nope"], "unknown recipe(s) nope"),
    (["--max-minutes", "0"], "--max-minutes must be positive"),
    (["--folds", "500"], "too few for 500 folds"),
])
def test_bad_arguments_exit_2_with_a_clear_message(phantom, tmp_path, capsys, extra, message):
    from triage.cli import main

    code = main(["study", "--data", str(phantom), "--out", str(tmp_path / "s.jsonl"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.jsonl").exists()


def test_help_and_recipe_list(capsys):
    from triage.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--help"])
    assert exit_info.value.code == 0 and "--folds" in capsys.readouterr().out
    assert main(["study", "--list-recipes"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in RECIPES)
    assert main(["study"]) == 2 and "--data is required" in capsys.readouterr().err
