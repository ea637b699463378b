"""`triage train` end to end on SYNTHETIC phantoms: beats chance, exports, logs to MLflow, registers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shared.modelcard import ModelCard
from shared.monitor import MonitorConfig, card_reference

torch.set_num_threads(1)
TINY = ["--patch", "4", "--dim", "48", "--depth", "2", "--heads", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from training_jobs.phantom import write_phantom_npz

    return write_phantom_npz(tmp_path_factory.mktemp("data") / "phantom.npz", n_train=1000, n_val=200, n_test=100)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # `triage train` sets MLflow's process-global tracking URI: restore it after each test.
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.chdir(tmp_path)  # the default MLflow store and artifacts land here, not in the project
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_short_training_beats_chance_and_registers(phantom, workdir, capsys, monkeypatch):
    from tests.functions.event_sink import EventSink
    from training_jobs import registry
    from triage.cli import main

    sink = EventSink()  # as on a retrain job: K_SINK is the broker, RETRAIN_BATCH_ID the batch of labels
    monkeypatch.setenv("K_SINK", sink.url)
    monkeypatch.setenv("RETRAIN_BATCH_ID", "batch-7")
    code = main(["train", "--data", str(phantom), "--out", str(workdir / "model"), "--epochs", "2",
                 "--batch-size", "32", "--no-augment", "--json", *TINY])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    # Chance is 0.5; 2 epochs reach 0.74-0.83 val AUC over seeds 0-2 (the phantoms' opacities are faint).
    assert report["val"]["auc"] > 0.65 and report["test"]["auc"] > 0.6
    assert report["synthetic_data"] is True and report["epochs"] == 2
    assert report["val"]["sensitivity"] >= 0.95  # the stored threshold is chosen for >= 0.95 on val
    spread = report["threshold_spread"]
    assert spread["p5"] <= spread["p50"] <= spread["p95"]

    card = ModelCard.load(workdir / "model")
    assert card.synthetic_data and card.version == report["version"] == "1"
    assert card.threshold == pytest.approx(report["threshold"]) and card.metrics["val"]["auc"] == report["val"]["auc"]
    assert (workdir / "model" / "model.int8.onnx").is_file() and (workdir / "model" / "checkpoint.pt").is_file()
    # The monitor's drift references come with the model: val probabilities and input intensities.
    reference = card_reference(card, MonitorConfig.bins)
    assert sum(reference["histogram"]) == sum(reference["intensity_histogram"]) == report["val"]["n"]

    mc = registry.client()
    run = mc.get_run(report["run_id"])
    assert run.data.params["data_hash"] == card.data_hash and run.data.params["model_dim"] == "48"
    assert [m.step for m in mc.get_metric_history(report["run_id"], "val_auc")] == [1, 2]
    summary = {"model_val_auc", "model_test_sensitivity", "threshold", "temperature", "int8_accuracy_change"}
    assert summary <= set(run.data.metrics)
    logged = {a.path for a in mc.list_artifacts(report["run_id"], "model")}
    assert logged == {"model/model.onnx", "model/model.int8.onnx", "model/model_card.json"}
    assert str(mc.get_model_version_by_alias("xray-vit", "challenger").version) == "1"

    # The canary starts from this announcement.
    sink.close()
    assert report["announced"] is True
    [event] = sink.events
    assert event["type"] == "triage.model.registered"
    assert event.get_data()["version"] == "1" and event.get_data()["batch_id"] == "batch-7"


def test_missing_data_fails_cleanly(workdir, capsys):
    from triage.cli import main

    assert main(["train", "--data", str(workdir / "nope.npz"), "--out", str(workdir / "m"), *TINY]) == 2
    assert "nope.npz" in capsys.readouterr().err
    assert not (workdir / "m").exists() and not (workdir / "mlflow.db").exists()


def test_one_class_only_fails_cleanly(workdir, capsys):
    from triage.cli import main

    images = np.zeros((20, 28, 28), np.uint8)
    path = workdir / "one_class.npz"
    np.savez(path, train_images=images, train_labels=np.ones((20, 1), np.uint8),
             val_images=images[:6], val_labels=np.ones((6, 1), np.uint8))
    assert main(["train", "--data", str(path), *TINY]) == 2
    assert "one_class.npz" in capsys.readouterr().err


def test_calibration_picks_a_threshold_meeting_the_target():
    from training_jobs.calibration import choose_threshold, fit_temperature, threshold_for_sensitivity

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    margin = (labels * 2 - 1) * 2.0 + rng.normal(0, 1.0, 600)
    # Classes N(+-2, 1): the true log-odds are 4 * margin, so logits 12 * margin are over-confident by 3x.
    logits = np.stack([np.zeros(600), 12.0 * margin], 1)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.2)
    probs = 1 / (1 + np.exp(-4.0 * margin))
    choice = choose_threshold(probs, labels, n_bootstrap=200)
    assert (probs[labels == 1] >= choice.threshold).mean() >= 0.95
    assert choice.spread["p5"] <= choice.spread["p50"] <= choice.spread["p95"]
    assert threshold_for_sensitivity(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 1, 1]), 0.75) == 0.2


@pytest.mark.parametrize("command", ["train", "export", "evaluate", "promote"])
def test_help(command, capsys):
    from triage.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"triage {command}" in capsys.readouterr().out


def test_distillation_trains_teacher_and_student_within_one_time_budget(monkeypatch):
    from training_jobs import train
    from training_jobs.train import FitResult, TeacherCNN, TrainOptions, train_model

    budgets: list[tuple[str, float]] = []

    def timed_fit(model, train_x, train_y, val_x, val_y, options, *, teacher=None, epochs=None, **kwargs):
        budgets.append((type(model).__name__, options.max_minutes))
        assert (teacher is not None) == (not isinstance(model, TeacherCNN))  # the student learns from the teacher
        return FitResult(model.eval(), 1, 0.5, 1, "time", 60.0 * options.max_minutes * 0.5, [])

    monkeypatch.setattr(train, "fit", timed_fit)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 1, 28, 28)).astype(np.float32), np.arange(40) % 2
    options = TrainOptions(distill=True, max_minutes=10.0, teacher_share=0.3)
    train_model(x, y, x, y, options, progress=False)
    # The teacher may use 30 % (3 min) and used half of it; the student gets the 8.5 min left.
    assert budgets == [("TeacherCNN", pytest.approx(3.0)), ("ViT", pytest.approx(8.5))]


def test_an_ensemble_trains_its_members_at_once_from_their_own_seeds(phantom, workdir, capfd):
    """`--members 2`: two processes, two different models (seeds 0 and 1), one exported graph whose logits are
    their mean, the gate fitted on both embeddings, a checkpoint that rebuilds the ensemble."""
    from training_jobs.export import check_parity
    from training_jobs.vit import Ensemble, load_checkpoint
    from triage.cli import main

    code = main(["train", "--data", str(phantom), "--out", str(workdir / "model"), "--epochs", "1",
                 "--batch-size", "64", "--no-register", "--json", "--members", "2", *TINY])
    assert code == 0
    captured = capfd.readouterr()  # at the descriptors: the members' progress comes from their processes
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["members"] == 2 and len(report["member_best_epochs"]) == 2
    assert "member 1/2" in captured.err and "member 2/2" not in captured.err  # one progress bar, the first's
    model, _ = load_checkpoint(workdir / "model" / "checkpoint.pt")
    assert isinstance(model, Ensemble) and len(model.members) == 2
    first, second = (dict(m.named_parameters()) for m in model.members)
    assert not torch.equal(first["pos_embed"], second["pos_embed"])  # different seeds, different models
    card = ModelCard.load(workdir / "model")
    assert card.config["members"] == 2 and card.gate["dim"] == 2 * 48 + 7 * 7 + 4
    data = np.load(phantom)
    x = ((data["val_images"][:8].astype(np.float32) / 255.0 - 0.5) / 0.5)[:, None]
    assert max(check_parity(model, workdir / "model" / "model.onnx", x).values()) < 1e-4
    with torch.no_grad():
        mean_logits = torch.stack([m(torch.from_numpy(x))[0] for m in model.members]).mean(0)
    torch.testing.assert_close(model(torch.from_numpy(x))[0], mean_logits)

    # Served as any model: a prediction through the gate, both heatmaps.
    import io

    from PIL import Image

    from shared.config import Settings
    from shared.model import TriageModel

    served = TriageModel(Settings(model_uri=str(workdir / "model"), model_cache_dir=workdir / "cache"))
    buffer = io.BytesIO()
    Image.fromarray(data["val_images"][0]).save(buffer, format="PNG")
    png = buffer.getvalue()
    prediction = served(png, "image/png")
    assert prediction.assessable and prediction.verdict.distance is not None  # the gate measured both embeddings
    for method in ("rollout", "occlusion"):
        explained = served(png, "image/png", explain=method)
        assert explained.heatmap.shape == (28, 28) and explained.prediction.label == prediction.label


def test_members_below_one_is_refused(workdir, phantom, capsys):
    from triage.cli import main

    code = main(["train", "--data", str(phantom), "--out", str(workdir / "model"), "--members", "0", *TINY])
    assert code != 0
    assert "--members must be at least 1" in capsys.readouterr().err
    assert not (workdir / "model").exists()
