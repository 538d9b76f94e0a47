"""Attention rollout (Abnar & Zuidema, ACL 2020), with vit-explain's head fusion and discard options.

F_l = head fusion (mean, max or min) of block l's attention A_l (N × N); with ``discard_ratio`` d > 0,
the d·N² smallest entries of F_l are zeroed per image (never the class token's self-attention (0, 0));
Â_l = (F_l + I) / 2 with each row divided by its own sum; R = Â_L ⋯ Â_1; the map is the class token's row
R[0, P:] over the patch tokens. (vit-explain divides by a sum broadcast across rows and columns; here
every row is normalised by its own sum, as the definition says.)

The attention of each block is rebuilt from its q and k while the forward pass runs (timm's fused attention
stays on), folded into R and dropped: the pass holds R and one block's N × N matrices (a group of heads at a
time when they are large).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import ttach

from ..vit import AttentionRecord, AttentionRecorder, TokenLayout, token_layout
from .attention import AttentionExplainer
from .base import warn_eigen_smooth_unused

HEAD_FUSIONS = ("mean", "max", "min")


class RolloutExplainer(AttentionExplainer):
    """Attention rollout: the class token's row of the product of every block's (head-fused, identity-mixed,
    row-normalised) attention. Class-agnostic; about the cost of one forward pass.

    Args:
        model: a timm ViT with a class token, or a TS-CAM model.
        head_fusion: ``"mean"`` (the definition), ``"max"`` or ``"min"`` over the heads.
        discard_ratio: share of each block's smallest fused attention entries zeroed per image (0: none).
        tta_transforms: ttach transforms for ``aug_smooth`` (default: pytorch-grad-cam's).

    Example:
        >>> with RolloutExplainer(vit, head_fusion="max", discard_ratio=0.9) as cam:
        ...     maps = cam(input_tensor)
    """

    def __init__(self, model: nn.Module, head_fusion: str = "mean", discard_ratio: float = 0.0,
                 tta_transforms: Optional[ttach.Compose] = None) -> None:
        if head_fusion not in HEAD_FUSIONS:
            raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
        if not 0.0 <= discard_ratio < 1.0:
            raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
        super().__init__(model, tta_transforms)
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)

    def _forward(self, input_tensor: torch.Tensor) -> Tuple[torch.Tensor, Tuple[TokenLayout, torch.Tensor]]:
        layout = token_layout(self._vit, tuple(input_tensor.shape[-2:]))
        rollout = []  # R so far, replaced block by block

        def fold(_index: int, record: AttentionRecord) -> None:
            mixed = self._mixed_attention(record)
            rollout.append(mixed if not rollout else mixed @ rollout.pop())

        with AttentionRecorder(self._vit, on_attention=fold):
            logits = self.model(input_tensor)
        return logits, (layout, rollout[0][:, 0, layout.num_prefix_tokens:])

    def _mixed_attention(self, record: AttentionRecord) -> torch.Tensor:
        """Â_l (B, N, N): fused over heads, smallest entries discarded, identity mixed in, rows normalised."""
        fused = None
        for heads in record.head_groups():
            weights = record.probabilities(heads)
            if self.head_fusion == "mean":
                part = weights.sum(dim=1)
                fused = part if fused is None else fused.add_(part)
            else:
                part = weights.amax(dim=1) if self.head_fusion == "max" else weights.amin(dim=1)
                combine = torch.maximum if self.head_fusion == "max" else torch.minimum
                fused = part if fused is None else combine(fused, part, out=fused)
        # "mean" has summed the heads: F = sum / heads, and F + I ∝ sum + heads · I, which the row
        # normalisation turns into the same rows (as it cancels the halving of (F + I) / 2)
        identity_weight = record.num_heads if self.head_fusion == "mean" else 1
        if self.discard_ratio > 0:
            discard_smallest(fused, self.discard_ratio)
        fused.diagonal(dim1=1, dim2=2).add_(identity_weight)
        return fused.div_(fused.sum(dim=-1, keepdim=True))

    def _class_maps(self, context: Tuple[TokenLayout, torch.Tensor], classes: torch.Tensor,
                    eigen_smooth: bool) -> torch.Tensor:
        if eigen_smooth:
            warn_eigen_smooth_unused(type(self).__name__)
        layout, row = context
        return row.reshape(row.shape[0], *layout.grid)


def discard_smallest(fused: torch.Tensor, ratio: float) -> None:
    """Zero, in place and per image, the ``int(ratio · N²)`` smallest entries of (B, N, N) ``fused``, never (0, 0)."""
    flat = fused.view(fused.shape[0], -1)
    count = min(int(ratio * flat.shape[1]), flat.shape[1] - 1)
    if count == 0:
        return
    # (0, 0) is taken out of the candidates, so exactly `count` other entries are zeroed
    candidates = flat.clone()
    candidates[:, 0] = float("inf")
    flat.scatter_(1, candidates.topk(count, dim=1, largest=False).indices, 0.0)
