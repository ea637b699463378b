"""Saliency maps and their faithfulness, checked on score functions whose true evidence is known."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared import explain

SIZE = 16
REGION = (slice(2, 6), slice(9, 13))  # the only pixels the test score looks at


def region_score(batch: np.ndarray) -> np.ndarray:
    """A 'model' whose score is the mean brightness inside REGION: the true saliency is REGION."""
    return batch[:, 0, REGION[0], REGION[1]].mean(axis=(1, 2))


def bright_image() -> np.ndarray:
    """Dark noise with a bright REGION (model-input space, roughly [-1, 1])."""
    rng = np.random.default_rng(0)
    image = -0.8 + 0.2 * rng.random((1, SIZE, SIZE))
    image[0, REGION[0], REGION[1]] = 0.8 + 0.2 * rng.random((4, 4))
    return image.astype(np.float32)


def test_rollout_follows_where_cls_attends() -> None:
    tokens = 1 + 4
    attention = np.tile(np.eye(tokens), (2, 1, 1))
    attention[:, 0] = [0.0, 0.0, 0.0, 1.0, 0.0]  # CLS looks only at patch 2 (row 1, column 0) in every layer
    rollout = explain.attention_rollout(attention)
    assert rollout.shape == (2, 2)
    assert np.unravel_index(rollout.argmax(), rollout.shape) == (1, 0)
    assert rollout.max() == pytest.approx(1.0) and rollout.min() == pytest.approx(0.0)


def test_rollout_of_self_attention_only_points_nowhere() -> None:
    rollout = explain.attention_rollout(np.tile(np.eye(10), (3, 1, 1)))
    assert rollout.shape == (3, 3) and not rollout.any()


@pytest.mark.parametrize("shape", [(5, 5), (2, 5, 4), (1, 6, 6)])
def test_rollout_rejects_attention_that_is_not_depth_t_t_with_a_square_grid(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="attention"):
        explain.attention_rollout(np.ones(shape))


def test_occlusion_finds_the_region_the_score_depends_on_in_batches() -> None:
    calls: list[int] = []

    def counted(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return region_score(batch)

    saliency = explain.occlusion_map(counted, bright_image(), patch=4, stride=2, baseline=0.0, batch_size=16)
    assert saliency.shape == (SIZE, SIZE)
    assert saliency[REGION].mean() > 0.5
    assert saliency[10:, :6].max() == 0.0  # far from the region nothing matters
    assert max(calls[1:]) <= 16 and len(calls) > 2  # one reference call, then batches of at most 16


def test_resize_and_overlay_keep_the_images_size_and_leave_cold_pixels_gray() -> None:
    heat = explain.resize_map(np.array([[0.0, 1.0], [0.0, 0.0]], np.float32), (30, 50))
    assert heat.shape == (30, 50)
    image = np.full((30, 50), 0.5, np.float32)
    overlay = np.asarray(Image.open(io.BytesIO(explain.overlay_png(image, heat))))
    assert overlay.shape == (30, 50, 3)
    cold = overlay[-1, 0]
    assert cold[0] == cold[1] == cold[2] == 128
    hot = overlay[0, -1].astype(int)
    assert hot[0] > hot[2]  # the hottest corner is tinted red


def test_overlay_refuses_maps_of_another_size() -> None:
    with pytest.raises(ValueError, match="differ"):
        explain.overlay_png(np.zeros((4, 4)), np.zeros((5, 5)))


def test_colormap_runs_from_blue_to_red() -> None:
    low, high = explain.colormap(np.array([0.0, 1.0]))
    assert low[2] > low[0] and high[0] > high[2]


def test_a_faithful_map_beats_a_random_one_on_deletion_and_insertion() -> None:
    image = bright_image()
    truth = np.zeros((SIZE, SIZE), np.float32)
    truth[REGION] = 1.0
    deletion, insertion = explain.deletion_insertion_auc(region_score, image, truth, steps=16)
    # the score falls to the baseline as soon as REGION is deleted, and is back once REGION is inserted
    assert deletion < 0.1 and insertion > 0.8
    report = explain.faithfulness_against_random(region_score, image, truth, steps=16, random_maps=3)
    assert report["deletion_auc"] < report["random_deletion_auc"]
    assert report["insertion_auc"] > report["random_insertion_auc"]


def test_auc_resizes_a_coarse_map_to_the_input() -> None:
    coarse = np.zeros((4, 4), np.float32)
    coarse[0:2, 2:4] = 1.0  # the grid cells over REGION
    deletion, insertion = explain.deletion_insertion_auc(region_score, bright_image(), coarse, steps=8)
    assert 0.0 <= deletion < insertion <= 1.0


def curved_score(batch: np.ndarray) -> np.ndarray:
    """A nonlinear score of the whole image, so every window's drop differs (numerics, not just the argmax)."""
    weights = np.linspace(-1.0, 1.0, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    return 1.0 / (1.0 + np.exp(-(batch[:, 0] * weights).sum(axis=(1, 2))))


def test_batched_occlusion_equals_the_unbatched_map_and_a_given_reference_spares_a_call() -> None:
    calls: list[int] = []

    def counted(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return curved_score(batch)

    image = bright_image()
    unbatched = explain.occlusion_map(curved_score, image, patch=4, stride=2, batch_size=1)
    reference = float(curved_score(image[np.newaxis])[0])
    batched = explain.occlusion_map(counted, image, patch=4, stride=2, reference=reference)

    assert calls == [49]  # the 7 x 7 windows in one call, no reference call
    np.testing.assert_allclose(batched, unbatched, rtol=0, atol=1e-6)
    assert batched.max() == pytest.approx(1.0)
