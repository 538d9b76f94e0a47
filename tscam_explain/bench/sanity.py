"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018): do the maps depend on the model's
weights and on the class asked for?

* model randomisation: the rank correlation between an explainer's maps on the trained model and on
  a copy whose every parameter was re-initialised (:func:`randomized_copy`);
* random logit: the rank correlation between the maps of the target class and of another class.

Low correlation means the maps depend on what they should. Correlations are Spearman's, per image.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..models import backbone_of

__all__ = ["spearman", "randomized_copy", "other_classes"]


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 0 … n−1 of each row, ties sharing the mean of their ranks (as Spearman's definition asks)."""
    ranks = torch.empty_like(values, dtype=torch.float64)
    for row, value in enumerate(values):
        sorted_values, order = value.sort(stable=True)
        _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
        first = torch.cumsum(counts, 0) - counts
        mean_rank = first.double() + (counts.double() - 1) / 2
        ranks[row, order] = mean_rank[inverse]
    return ranks


def spearman(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation between ``maps_a[i]`` and ``maps_b[i]``, over their pixels.

    Args:
        maps_a: (B, …) maps.
        maps_b: maps of the same shape.

    Returns:
        (B,) float64 correlations; NaN where a map is constant (the correlation is undefined).
    """
    if maps_a.shape != maps_b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(maps_a.shape)} and {tuple(maps_b.shape)}")
    ranks_a = _average_ranks(maps_a.flatten(1).double().cpu())
    ranks_b = _average_ranks(maps_b.flatten(1).double().cpu())
    ranks_a = ranks_a - ranks_a.mean(dim=1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(dim=1, keepdim=True)
    denominator = ranks_a.norm(dim=1) * ranks_b.norm(dim=1)
    return torch.where(denominator > 0, (ranks_a * ranks_b).sum(dim=1) / denominator.clamp_min(1e-300),
                       torch.full_like(denominator, float("nan")))


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every parameter re-initialised by the model's own init.

    Every submodule with ``reset_parameters`` resets (linear, conv, norm layers, …); then timm's ViT
    ``init_weights`` re-draws what it owns (position embedding, class / distillation / register
    tokens, and its trunc-normal linear init). The user's model is not touched.

    Args:
        model: a tscam-explain model or a timm ViT.
        seed: seed of the re-initialisation (torch's global generator is left as it was).
    """
    randomized = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            for module in randomized.modules():
                if hasattr(module, "reset_parameters") and module is not randomized:
                    module.reset_parameters()
            backbone = backbone_of(randomized)
            if hasattr(backbone, "init_weights"):
                backbone.init_weights()
    return randomized.eval()


def other_classes(targets: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """For each target, a uniformly chosen different class (seeded), for the random-logit test."""
    if num_classes < 2:
        raise ValueError("the random-logit test needs at least 2 classes")
    generator = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, (len(targets),), generator=generator)
    return (targets.cpu() + shift) % num_classes
