"""Chefer, Gur & Wolf's gradient-weighted attention relevance (ICCV 2021, "Generic attention-model
explainability", self-attention rule).

y_c is the target class's logit (pre-softmax) of the model's own output; ∇A_l = ∂y_c/∂A_l;
Ā_l = E_h[(∇A_l ⊙ A_l)⁺] (the product, clamped at 0, then the mean over heads); R⁰ = I and
R ← R + Ā_l · R for l = 1 … L, unnormalised; the map is the class token's row R[0, P:].

One forward pass without gradients (timm's fused attention kept) records the tokens between the blocks;
then one backward pass, a block at a time from block L down, carries ∂y_c/∂(tokens) and yields each
block's A_l and ∇A_l (:func:`~tscam_explain.vit.block_attention_gradient`). Only the class token's row
of R is needed, and R = (I + Ā_L) ⋯ (I + Ā_1), so the row is carried down alongside the gradient
(r ← r + r Ā_l): no N × N relevance matrix, one block's activations at a time.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from ..vit import TokenLayout, block_attention_gradient
from .attention import GradientAttentionExplainer, score_gradient
from .base import warn_eigen_smooth_unused


class CheferExplainer(GradientAttentionExplainer):
    """Gradient-weighted attention relevance (Chefer et al., ICCV 2021): one forward and one backward pass.

    Args:
        model: a timm ViT classifier with a class token, or a TS-CAM model.
        tta_transforms: ttach transforms for ``aug_smooth`` (default: pytorch-grad-cam's).

    Example:
        >>> with CheferExplainer(vit) as cam:
        ...     maps = cam(input_tensor, targets=[ClassifierOutputTarget(281)])
    """

    def _class_maps(self, context: Tuple[TokenLayout, Dict[int, torch.Tensor]], classes: torch.Tensor,
                    eigen_smooth: bool) -> torch.Tensor:
        if eigen_smooth:
            warn_eigen_smooth_unused(type(self).__name__)
        layout, tokens = context
        depth = len(self._vit.blocks)
        grad = score_gradient(self._model_score(layout), tokens.pop(depth), classes)
        row = grad.new_zeros(grad.shape[0], 1, grad.shape[1], dtype=torch.float32)
        row[:, 0, 0] = 1.0
        for index in reversed(range(depth)):
            step = block_attention_gradient(self._vit, index, tokens.pop(index), grad, input_grad=index > 0)
            weights = step.gradient.mul_(step.probabilities).clamp_(min=0).mean(dim=1)  # Ā_l at its rows
            row = row + row[:, :, step.rows] @ weights  # Ā_l is zero at the other rows
            grad = step.input_grad
            del step, weights  # the N × N matrices go before the next block's are made
        return row[:, 0, layout.num_prefix_tokens:].reshape(row.shape[0], *layout.grid)
