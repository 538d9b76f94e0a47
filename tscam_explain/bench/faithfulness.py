"""Faithfulness of maps to the model: deletion / insertion AUC, ROAD, the energy-based pointing game.

Definitions: ``methods.md`` §8. Deletion and insertion are written here because neither
pytorch-grad-cam nor Captum has them in batched form on normalised ViT inputs (pytorch-grad-cam's
``PerturbationConfidenceMetric`` perturbs one image and one threshold per call); ROAD is
pytorch-grad-cam's own. Tensors in, tensors out; maps are (B, H, W) at the input size, in [0, 1].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from pytorch_grad_cam.metrics.road import (ROADCombined, ROADLeastRelevantFirst, ROADMostRelevantFirst)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torchvision.transforms.functional import gaussian_blur

__all__ = ["DeletionInsertion", "deletion_insertion", "energy_pointing_game", "road_scores", "ROAD_DEFAULTS",
           "relevance_ranks", "blur"]

#: pytorch-grad-cam's defaults: MoRF at the 80th percentile, LeRF at the 20th, Combined over 10 … 90
ROAD_DEFAULTS = {"morf_percentile": 80, "lerf_percentile": 20, "combined_percentiles": (10, 20, 30, 40, 50, 60, 70, 80, 90)}


@dataclass(frozen=True)
class DeletionInsertion:
    """Per-image results of :func:`deletion_insertion`.

    Args:
        deletion_auc: (B,) area under the deletion curve (lower is better).
        insertion_auc: (B,) area under the insertion curve (higher is better).
        deletion_curve: (B, steps + 1) target-class probability after removing 0, 1/steps, …, all pixels.
        insertion_curve: (B, steps + 1) the same for insertion.
    """

    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor
    deletion_curve: torch.Tensor
    insertion_curve: torch.Tensor


def relevance_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Each pixel's place in the order "most relevant first": 0 for the highest value of its map.

    Ties keep the pixels' raster order (a stable sort), so the order is a function of the map alone.

    Args:
        maps: (B, H, W).

    Returns:
        (B, H·W) long ranks.
    """
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def _trapezoid(curve: torch.Tensor) -> torch.Tensor:
    """Area under (B, S + 1) values over x = 0, 1/S, …, 1."""
    steps = curve.shape[1] - 1
    return (curve.sum(dim=1) - (curve[:, 0] + curve[:, -1]) / 2) / steps


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Insertion's start images: torchvision's Gaussian blur of σ pixels (reflected borders); the
    kernel spans ±3σ, cut to the largest odd size the image side allows."""
    side = min(images.shape[-2:])
    # reflect padding needs a half-width below the side
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * side - 1)
    return gaussian_blur(images, [kernel, kernel], [sigma, sigma]) if kernel >= 3 else images.clone()


@torch.no_grad()
def deletion_insertion(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, *,
                       steps: int = 16, baseline: float = 0.0, blur_sigma: float = 5.0,
                       insertion_start: Optional[torch.Tensor] = None) -> DeletionInsertion:
    """Deletion and insertion (Petsiuk et al., RISE, BMVC 2018).

    Pixels are ordered by the map, most relevant first (:func:`relevance_ranks`). At step k of
    0 … ``steps`` the first ⌊k·H·W / steps⌋ pixels are removed (deletion: set to ``baseline`` in the
    model's input space, every channel) or inserted (insertion: copied from the image onto its
    Gaussian-blurred copy). Each curve records the softmax probability of the target class; its
    area is the trapezoidal rule over x = 0 … 1.

    Args:
        model: returns (B, classes) logits.
        images: (B, C, H, W) normalised as the model expects.
        maps: (B, H, W) relevance maps at the input size.
        targets: (B,) class per image.
        steps: number of perturbation steps (the curves have ``steps + 1`` points).
        baseline: the value removed pixels take (0 = the dataset mean after normalisation).
        blur_sigma: σ in pixels of insertion's blurred start image.
        insertion_start: insertion's start images instead of the blurred ones (same shape as ``images``).
    """
    if images.dim() != 4 or maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps must be (B, H, W) = {(images.shape[0], *images.shape[-2:])} for images of shape "
                         f"{tuple(images.shape)}; got {tuple(maps.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    batch, _, height, width = images.shape
    ranks = relevance_ranks(maps.to(images.device)).view(batch, 1, height, width)
    blurred = blur(images, blur_sigma) if insertion_start is None else insertion_start.to(images)
    rows = torch.arange(batch, device=images.device)
    targets = targets.to(images.device)
    deletion, insertion = [], []
    for step in range(steps + 1):
        chosen = ranks < (step * height * width) // steps
        for perturbed, curve in ((torch.where(chosen, torch.full_like(images, baseline), images), deletion),
                                 (torch.where(chosen, images, blurred), insertion)):
            curve.append(model(perturbed).float().softmax(dim=-1)[rows, targets])
    deletion_curve, insertion_curve = torch.stack(deletion, dim=1), torch.stack(insertion, dim=1)
    return DeletionInsertion(_trapezoid(deletion_curve), _trapezoid(insertion_curve), deletion_curve, insertion_curve)


def energy_pointing_game(maps: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Energy-based pointing game (Wang et al., Score-CAM, CVPRW 2020): Σ map inside the union of the
    ground-truth boxes / Σ map, per image.

    A map that sums to zero (a constant map after min-max normalisation) carries no preference, so
    it counts as uniform: its score is the fraction of the image the boxes cover.

    Args:
        maps: (B, H, W) non-negative maps.
        boxes: per image, (k, 4) inclusive ``x0, y0, x1, y1`` in map pixels.

    Returns:
        (B,) fractions in [0, 1].
    """
    if len(boxes) != maps.shape[0]:
        raise ValueError(f"got boxes for {len(boxes)} images and {maps.shape[0]} maps")
    if (maps < 0).any():
        raise ValueError("the energy pointing game needs non-negative maps")
    scores = []
    for cam, image_boxes in zip(maps, boxes):
        inside = torch.zeros_like(cam, dtype=torch.bool)
        for x0, y0, x1, y1 in torch.as_tensor(image_boxes).reshape(-1, 4).tolist():
            inside[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1] = True
        if not inside.any():
            raise ValueError("an image has no ground-truth box pixels; the pointing game needs boxes")
        total = cam.sum()
        scores.append(cam[inside].sum() / total if total > 0 else inside.float().mean())
    return torch.stack(scores).float()


def road_scores(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, *,
                morf_percentile: float = ROAD_DEFAULTS["morf_percentile"],
                lerf_percentile: float = ROAD_DEFAULTS["lerf_percentile"],
                combined_percentiles: Sequence[float] = ROAD_DEFAULTS["combined_percentiles"],
                seed: int = 0) -> Dict[str, np.ndarray]:
    """ROAD (Rong et al., ICML 2022) with pytorch-grad-cam's own metrics, on softmax probabilities.

    ``morf``: ``ROADMostRelevantFirst(morf_percentile)``, the change of the target's probability when
    the most relevant pixels are imputed (lower is better); ``lerf``: ``ROADLeastRelevantFirst``
    (closer to 0 is better); ``combined``: ``ROADCombined(combined_percentiles)`` (higher is better).
    The imputer adds noise from torch's global generator, so it runs seeded inside ``fork_rng``
    (the caller's random state is left as it was).

    Returns:
        ``{"morf": (B,), "lerf": (B,), "combined": (B,)}``.
    """
    cams = maps.detach().float().cpu().numpy()
    softmax_targets = [ClassifierOutputSoftmaxTarget(int(target)) for target in targets]
    metrics = {"morf": ROADMostRelevantFirst(morf_percentile), "lerf": ROADLeastRelevantFirst(lerf_percentile),
               "combined": ROADCombined(list(combined_percentiles))}
    devices = [images.device] if images.device.type == "cuda" else []
    results = {}
    with torch.random.fork_rng(devices=devices):
        for name, metric in metrics.items():
            torch.manual_seed(seed)
            with torch.no_grad():
                results[name] = np.asarray(metric(images, cams, softmax_targets, model), dtype=np.float64)
    return results
