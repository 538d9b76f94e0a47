"""The bench's metrics against hand computations and independent references (methods.md §8)."""
import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn as nn
from pytorch_grad_cam.metrics.road import ROADCombined, ROADLeastRelevantFirst, ROADMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from conftest import tiny_vit
from tscam_explain import create_trt, create_tscam
from tscam_explain.bench import (StoredMaps, deletion_insertion, energy_pointing_game, randomized_copy, road_scores,
                                 spearman)
from tscam_explain.bench.faithfulness import blur, relevance_ranks
from tscam_explain.bench.sanity import other_classes


class SumModel(nn.Module):
    """Two classes: logit 0 = k · (sum of all input values), logit 1 = 0, so p0 = sigmoid(k · sum)."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x):
        total = x.flatten(1).sum(dim=1)
        return torch.stack([self.k * total, torch.zeros_like(total)], dim=1)


def sigmoid(value):
    return 1 / (1 + math.exp(-value))


def trapezoid(values):
    steps = len(values) - 1
    return sum((values[i] + values[i + 1]) / 2 for i in range(steps)) / steps


def test_relevance_order_is_highest_first_with_raster_order_on_ties():
    maps = torch.tensor([[[0.5, 0.9], [0.5, 0.1]]])
    # order: (0,1)=0.9 first, then the tied 0.5s in raster order (0,0) then (1,0), then (1,1)
    assert relevance_ranks(maps).tolist() == [[1, 0, 2, 3]]


def test_deletion_and_insertion_by_hand():
    image = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    cam = torch.tensor([[[0.9, 0.1], [0.5, 0.7]]])      # order: 1 (0.9), 4 (0.7), 3 (0.5), 2 (0.1)
    k = 0.3
    result = deletion_insertion(SumModel(k), image, cam, torch.tensor([0]), steps=4,
                                insertion_start=torch.zeros_like(image))
    deleted_sums = [10, 9, 5, 2, 0]   # the most relevant pixel goes first, one pixel per step
    inserted_sums = [0, 1, 5, 8, 10]  # onto zeros, in the same order
    expected_deletion = [sigmoid(k * s) for s in deleted_sums]
    expected_insertion = [sigmoid(k * s) for s in inserted_sums]
    assert result.deletion_curve[0].tolist() == pytest.approx(expected_deletion, abs=1e-6)
    assert result.insertion_curve[0].tolist() == pytest.approx(expected_insertion, abs=1e-6)
    assert result.deletion_auc.item() == pytest.approx(trapezoid(expected_deletion), abs=1e-6)
    assert result.insertion_auc.item() == pytest.approx(trapezoid(expected_insertion), abs=1e-6)


def test_deletion_removes_floor_of_k_hw_over_steps_and_uses_the_baseline():
    image = torch.ones(1, 1, 3, 3)
    cam = torch.arange(9.0).view(1, 3, 3)
    result = deletion_insertion(SumModel(1.0), image, cam, torch.tensor([0]), steps=2, baseline=-1.0)
    # step 1 removes 9 // 2 = 4 pixels (set to -1): sum 5 - 4 = 1; step 2 removes all: -9
    assert result.deletion_curve[0].tolist() == pytest.approx([sigmoid(9), sigmoid(1), sigmoid(-9)], abs=1e-6)


def test_deletion_insertion_batch_equals_one_by_one():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 1, 4, 4, generator=generator)
    cams = torch.rand(3, 4, 4, generator=generator)
    targets = torch.tensor([0, 1, 0])
    model = SumModel(0.2)
    batch = deletion_insertion(model, images, cams, targets, steps=8)
    for index in range(3):
        single = deletion_insertion(model, images[index:index + 1], cams[index:index + 1], targets[index:index + 1],
                                    steps=8)
        assert torch.allclose(batch.deletion_curve[index], single.deletion_curve[0])
        assert torch.allclose(batch.insertion_curve[index], single.insertion_curve[0])


def reference_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian over ±3σ with reflected borders, in numpy."""
    radius = math.ceil(3 * sigma)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    rows = sum(w * padded[:, radius + o:radius + o + image.shape[1], :] for o, w in zip(offsets, weights))
    return sum(w * rows[:, :, radius + o:radius + o + image.shape[2]] for o, w in zip(offsets, weights))


def test_insertion_start_is_a_gaussian_blur_of_sigma_5():
    image = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    expected = reference_blur(image[0].numpy().astype(np.float64), 5.0)
    assert np.allclose(blur(image, 5.0)[0].numpy(), expected, atol=1e-5)


def test_deletion_insertion_rejects_a_map_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"maps must be \(B, H, W\)"):
        deletion_insertion(SumModel(1.0), torch.zeros(2, 1, 4, 4), torch.zeros(2, 3, 3), torch.tensor([0, 0]))


def test_energy_pointing_game_by_hand():
    cam = torch.zeros(1, 4, 5)
    cam[0, 0, 0] = 2.0   # inside box A
    cam[0, 1, 1] = 1.0   # inside A and B (counted once)
    cam[0, 3, 4] = 1.0   # outside both
    boxes = [torch.tensor([[0, 0, 1, 1], [1, 1, 2, 2]])]  # inclusive x0, y0, x1, y1
    assert energy_pointing_game(cam, boxes).tolist() == pytest.approx([3.0 / 4.0])


def test_energy_pointing_game_counts_a_zero_map_as_uniform():
    boxes = [torch.tensor([[0, 0, 1, 0]])]  # 2 of 8 pixels
    assert energy_pointing_game(torch.zeros(1, 2, 4), boxes).tolist() == pytest.approx([0.25])


def test_energy_pointing_game_rejects_negative_maps():
    with pytest.raises(ValueError, match="non-negative"):
        energy_pointing_game(-torch.ones(1, 2, 2), [torch.tensor([[0, 0, 1, 1]])])


def test_spearman_equals_scipy_with_ties_and_nan_for_constant_maps():
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (3, 6, 5), generator=generator).float()  # many ties
    b = torch.rand(3, 6, 5, generator=generator)
    b[1] = a[1] * -2 + 1   # exact monotone decreasing: -1
    ours = spearman(a, b)
    for index in range(3):
        expected = scipy.stats.spearmanr(a[index].flatten().numpy(), b[index].flatten().numpy()).statistic
        assert ours[index].item() == pytest.approx(expected, abs=1e-12)
    assert ours[1].item() == pytest.approx(-1.0)
    assert math.isnan(spearman(torch.ones(1, 3, 3), b[:1, :3, :3])[0].item())


def test_randomized_copy_changes_every_parameter_and_leaves_the_model_alone():
    for model in (tiny_vit(num_classes=4),
                  create_tscam("deit_tiny_patch16_224", 4, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2),
                  create_trt("deit_tiny_patch16_224", 4, img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2)):
        # a "trained" model: no parameter at its initial value (LayerNorms at 1/0 included)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.rand_like(parameter) + 0.5)
        before = {name: value.clone() for name, value in model.state_dict().items()}
        state = torch.random.get_rng_state()
        randomized = randomized_copy(model, seed=1)
        assert torch.equal(torch.random.get_rng_state(), state)
        for name, value in model.state_dict().items():
            assert torch.equal(value, before[name]), name
        for name, value in randomized.named_parameters():
            assert not torch.equal(value, before[name]), f"{type(model).__name__}.{name} was not re-initialised"
        again = randomized_copy(model, seed=1)
        assert all(torch.equal(a, b) for a, b in zip(again.parameters(), randomized.parameters()))


def test_other_classes_differ_from_the_targets():
    targets = torch.tensor([0, 1, 2, 3] * 25)
    others = other_classes(targets, 4, seed=0)
    assert (others != targets).all() and others.min() >= 0 and others.max() < 4
    assert len(set(others.tolist())) == 4
    with pytest.raises(ValueError, match="at least 2 classes"):
        other_classes(targets, 1)


def test_road_scores_are_pytorch_grad_cams_own_metrics_on_softmax_targets():
    model = tiny_vit(num_classes=3, img_size=16, patch_size=8).eval()
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2])
    state = torch.random.get_rng_state()
    ours = road_scores(model, images, maps, targets, morf_percentile=70, lerf_percentile=30,
                       combined_percentiles=(30, 60), seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    softmax = [ClassifierOutputSoftmaxTarget(0), ClassifierOutputSoftmaxTarget(2)]
    for key, metric in (("morf", ROADMostRelevantFirst(70)), ("lerf", ROADLeastRelevantFirst(30)),
                        ("combined", ROADCombined([30, 60]))):
        torch.manual_seed(5)
        expected = metric(images, maps.numpy(), softmax, model)
        assert np.allclose(ours[key], expected, atol=1e-6), key
    torch.random.set_rng_state(state)


def test_stored_maps_replay_in_order_and_refuse_other_classes():
    maps = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    logits = torch.eye(3)
    replay = StoredMaps(maps, logits, torch.tensor([0, 1, 2]))
    assert np.array_equal(replay(torch.zeros(2, 3, 4, 4), [0, 1]), maps[:2])
    assert torch.equal(replay.outputs, logits[:2])
    with pytest.raises(ValueError, match="explain classes"):
        replay(torch.zeros(1, 3, 4, 4), [0])
    replay = StoredMaps(maps, logits, torch.tensor([0, 1, 2]))
    with pytest.raises(IndexError, match="only 3 maps"):
        replay(torch.zeros(4, 3, 4, 4), [0, 1, 2, 0])
