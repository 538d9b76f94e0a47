"""TS-CAM's semantic re-allocation heads: patch tokens → class semantic maps S (B, C, gh, gw).

The three variants of the paper's Tables 10/11. Each also exposes the per-channel terms of one
class's map (:meth:`class_contributions`), whose sum over channels plus the bias is that map;
explainers use them for eigen smoothing.
"""
from __future__ import annotations

from typing import Dict, Type

import torch
import torch.nn as nn
import torch.nn.functional as F


class SemanticHead(nn.Module):
    """Base: ``forward(grid (B, D, gh, gw)) -> S (B, C, gh, gw)``."""

    def class_contributions(self, grid: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Per-channel terms of class ``classes[b]``'s map for image b: (B, D, gh, gw)."""
        raise NotImplementedError


class Conv2dHead(SemanticHead):
    """Conv2d 3×3, stride 1, padding 1 over the patch grid (TS-CAM's default head)."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(embed_dim, num_classes, kernel_size=3, stride=1, padding=1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.conv(grid)

    def class_contributions(self, grid: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        batch, dim = grid.shape[:2]
        # a depthwise conv per image with that image's class filter
        weight = self.conv.weight[classes].reshape(batch * dim, 1, 3, 3)
        out = F.conv2d(grid.reshape(1, batch * dim, *grid.shape[2:]), weight, padding=1, groups=batch * dim)
        return out.reshape_as(grid)


class Conv1dHead(SemanticHead):
    """Conv1d with kernel 3 over the row-major patch sequence (Tables 10/11, "Conv1D")."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(embed_dim, num_classes, kernel_size=3, stride=1, padding=1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.conv(grid.flatten(2)).reshape(grid.shape[0], -1, *grid.shape[2:])

    def class_contributions(self, grid: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        batch, dim = grid.shape[:2]
        weight = self.conv.weight[classes].reshape(batch * dim, 1, 3)
        out = F.conv1d(grid.reshape(1, batch * dim, -1), weight, padding=1, groups=batch * dim)
        return out.reshape_as(grid)


class LinearHead(SemanticHead):
    """A fully connected layer applied to each patch token (Tables 10/11, "FC")."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embed_dim, num_classes)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bdhw,cd->bchw", grid, self.fc.weight) + self.fc.bias[None, :, None, None]

    def class_contributions(self, grid: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return grid * self.fc.weight[classes][:, :, None, None]


HEADS: Dict[str, Type[SemanticHead]] = {"conv2d": Conv2dHead, "conv1d": Conv1dHead, "fc": LinearHead}


def create_head(kind: str, embed_dim: int, num_classes: int) -> SemanticHead:
    """Build a semantic re-allocation head by name: ``conv2d`` (default), ``conv1d`` or ``fc``."""
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; expected one of {sorted(HEADS)}")
    return HEADS[kind](embed_dim, num_classes)
