"""LeGrad (Bousselham et al., 2024): the positive gradients of every block's attention, each block scored by
the model's own classifier on that block's output.

For each chosen block l, s_l is the target class's score when the model's own final norm, pooling and
classifier are applied to the block's OUTPUT tokens (at the last block: the model's logit). ∇A_l = ∂s_l/∂A_l
(block l's own attention only); E_l = mean over heads, then over all N query rows, of max(∇A_l, 0), over
the patch columns; the map is Σ_l E_l (all blocks by default, as the paper aggregates every layer).

The official code (WalBouss/LeGrad) targets CLIP: it mean-pools all tokens of each layer's output,
L2-normalises the feature and differentiates its similarity to a text embedding, from the second-to-last
layer on by default. For a classifier we keep the model's own pooling and the raw class logit;
``pooling="mean"`` scores the mean of all final-normed tokens instead, closer to the official code.

One forward pass without gradients (timm's fused attention kept) records the tokens between the blocks.
s_l depends on block l's attention only through block l's own projection and MLP, so each block's gradient
is one short backward pass from the tokens after it through that block alone
(:func:`~tscam_explain.vit.block_attention_gradient`). Where the score reads a few tokens (a CLS-token
head), only those rows of ∇A_l are non-zero, and only they are computed.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import ttach

from ..models.tscam import TSCAM
from ..vit import TokenLayout, block_attention_gradient, resolve_block_indices, token_class_scores
from .attention import GradientAttentionExplainer, score_gradient
from .base import warn_eigen_smooth_unused

POOLINGS = ("model", "mean")


class LeGradExplainer(GradientAttentionExplainer):
    """LeGrad: per block, the positive gradient of the block's class score w.r.t. its attention, summed.

    Args:
        model: a timm ViT classifier (no class token needed) or a TS-CAM model.
        blocks: the blocks whose E_l are summed (negative allowed); ``None``: all.
        pooling: ``"model"``: the model's own pooling and classifier (CLS token, ``global_pool='avg'``, the
            distilled model's two heads, TS-CAM's conv head and average); ``"mean"``: the mean of all tokens
            after the final norm, through the model's linear head (plain timm ViTs).
        tta_transforms: ttach transforms for ``aug_smooth`` (default: pytorch-grad-cam's).

    Example:
        >>> with LeGradExplainer(vit) as cam:
        ...     maps = cam(input_tensor, targets=[ClassifierOutputTarget(281)])
    """

    needs_class_token = False

    def __init__(self, model: nn.Module, blocks: Optional[Sequence[int]] = None, pooling: str = "model",
                 tta_transforms: Optional[ttach.Compose] = None) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        super().__init__(model, tta_transforms)
        if pooling == "mean" and isinstance(model, TSCAM):
            raise TypeError("pooling='mean' scores a pooled token with a linear classifier; a TS-CAM model "
                            "classifies the token grid with its conv head: use pooling='model'")
        self.blocks = resolve_block_indices(self._vit, blocks)
        self.pooling = pooling

    def _token_positions(self) -> List[int]:
        # block l's input and output
        return sorted({position for index in self.blocks for position in (index, index + 1)})

    def _layer_score(self, layout: TokenLayout) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``score(tokens, classes)``: (B,) class scores of a block's output tokens (B, N, D)."""
        vit = self._vit
        if self.pooling == "mean":
            return lambda tokens, classes: token_class_scores(vit, vit.norm(tokens).mean(1, keepdim=True), classes)[:, 0]
        return self._model_score(layout)

    def _class_maps(self, context: Tuple[TokenLayout, Dict[int, torch.Tensor]], classes: torch.Tensor,
                    eigen_smooth: bool) -> torch.Tensor:
        if eigen_smooth:
            warn_eigen_smooth_unused(type(self).__name__)
        layout, tokens = context
        score = self._layer_score(layout)
        total = None
        for index in self.blocks:
            grad = score_gradient(score, tokens[index + 1], classes)
            step = block_attention_gradient(self._vit, index, tokens.pop(index), grad)
            # E_l: max(∇A_l, 0) averaged over all N query rows (zero outside step.rows), then over heads
            relevance = step.gradient.clamp_(min=0).sum(dim=2).mean(dim=1).div_(grad.shape[1])
            total = relevance if total is None else total.add_(relevance)
            del step, grad  # the N × N matrices go before the next block's are made
        return total[:, layout.num_prefix_tokens:].reshape(classes.shape[0], *layout.grid)
