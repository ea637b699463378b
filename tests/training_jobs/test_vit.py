"""The ViT: shapes, attention maps, loss, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from training_jobs.vit import ViT, ViTConfig, load_checkpoint, save_checkpoint

torch.set_num_threads(1)
TINY = dict(image_size=28, patch=7, dim=32, depth=2, heads=2)


@pytest.mark.parametrize("conv_stem", [True, False])
def test_logits_and_per_layer_attention(conv_stem):
    model = ViT(ViTConfig(**TINY, conv_stem=conv_stem)).eval()
    x = torch.randn(3, 1, 28, 28)
    logits, attention = model.forward_with_attention(x)
    assert logits.shape == (3, 2)
    assert attention.shape == (3, 2, 17, 17)  # depth 2, T = 1 + (28/7)^2
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 2, 17))  # each row is a distribution
    same_logits, loss = model(x)
    torch.testing.assert_close(same_logits, logits)
    assert loss is None


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = ViT(ViTConfig(**TINY, dropout=0.0))
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 2, (16,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        _, loss = model(x, y)
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.5 * first


def test_checkpoint_rebuilds_the_exact_model(tmp_path):
    model = ViT(ViTConfig(**TINY)).eval()
    path = save_checkpoint(model, tmp_path / "ckpt.pt", threshold=0.3)
    rebuilt, extra = load_checkpoint(path)
    assert rebuilt.config == model.config and extra == {"threshold": 0.3}
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(rebuilt(x)[0], model(x)[0])


def test_bad_config_and_bad_checkpoint_are_named(tmp_path):
    with pytest.raises(ValueError, match="not a multiple of patch"):
        ViTConfig(image_size=28, patch=5)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_ensemble_averages_its_members_behind_the_same_interface(tmp_path):
    from training_jobs.vit import Ensemble

    torch.manual_seed(0)
    members = [ViT(ViTConfig(**TINY)).eval() for _ in range(3)]
    ensemble = Ensemble(members).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        logits, attention = ensemble.forward_with_attention(x)
        each = [m.forward_with_attention(x) for m in members]
        embedding, _ = ensemble.forward_features(x)
    torch.testing.assert_close(logits, torch.stack([lg for lg, _ in each]).mean(0))
    torch.testing.assert_close(attention, torch.stack([a for _, a in each]).mean(0))
    assert embedding.shape == (4, 3 * 32) == (4, ensemble.embedding_dim)
    torch.testing.assert_close(ensemble.head(embedding), logits)  # the head the export's parity check uses
    assert ensemble.num_params() == sum(m.num_params() for m in members)  # the shared heads counted once

    path = save_checkpoint(ensemble, tmp_path / "ensemble.pt", threshold=0.4)
    rebuilt, extra = load_checkpoint(path)
    assert isinstance(rebuilt, Ensemble) and len(rebuilt.members) == 3 and extra == {"threshold": 0.4}
    torch.testing.assert_close(rebuilt(x)[0], ensemble(x)[0])


def test_ensemble_and_its_checkpoint_refuse_what_they_cannot_be(tmp_path):
    from training_jobs.vit import Ensemble

    one = ViT(ViTConfig(**TINY))
    with pytest.raises(ValueError, match="at least two distinct members"):
        Ensemble([one])
    with pytest.raises(ValueError, match="at least two distinct members"):
        Ensemble([one, one])
    with pytest.raises(ValueError, match="same ViTConfig"):
        Ensemble([one, ViT(ViTConfig(**{**TINY, "depth": 1}))])
    path = save_checkpoint(one, tmp_path / "odd.pt")
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "members": 0}, path)
    with pytest.raises(ValueError, match="'members' is not a positive whole number"):
        load_checkpoint(path)
