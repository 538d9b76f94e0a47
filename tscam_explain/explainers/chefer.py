"""Chefer, Gur & Wolf's gradient-weighted attention relevance (ICCV 2021, "Generic attention-model
explainability", self-attention rule).

y_c is the target class's logit (pre-softmax) of the model's own output; ∇A_l = ∂y_c/∂A_l;
Ā_l = E_h[(∇A_l ⊙ A_l)⁺] (the product, clamped at 0, then the mean over heads); R⁰ = I and
R ← R + Ā_l · R for l = 1 … L, unnormalised; the map is the class token's row R[0, P:].

One forward pass (timm's fused attention kept) and one backward pass to the blocks' attention outputs:
A_l is rebuilt from the recorded q, k and ∇A_l = (∂y_c/∂O_l) V_lᵀ from the gradient at the attention
output O_l = A_l V_l. Only the class token's row of R is needed, and
R = (I + Ā_L) ⋯ (I + Ā_1), so the row is carried from block L down to block 1 (r ← r + r Ā_l): no N × N
relevance matrix, and one block's N × N matrices at a time.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from ..vit import AttentionRecord, AttentionRecorder, TokenLayout, token_layout
from .attention import AttentionExplainer, forward_with_activation_graph
from .base import warn_eigen_smooth_unused


class CheferExplainer(AttentionExplainer):
    """Gradient-weighted attention relevance (Chefer et al., ICCV 2021): one forward and one backward pass.

    Args:
        model: a timm ViT classifier with a class token, or a TS-CAM model.
        tta_transforms: ttach transforms for ``aug_smooth`` (default: pytorch-grad-cam's).

    Example:
        >>> with CheferExplainer(vit) as cam:
        ...     maps = cam(input_tensor, targets=[ClassifierOutputTarget(281)])
    """

    needs_classifier = True

    def _forward(self, input_tensor: torch.Tensor) -> Tuple[torch.Tensor, tuple]:
        layout = token_layout(self._vit, tuple(input_tensor.shape[-2:]))
        with AttentionRecorder(self._vit, values=True, outputs=True) as recorder:
            logits = forward_with_activation_graph(self.model, input_tensor)
        return logits.detach(), (layout, logits, recorder.records)

    def _class_maps(self, context: Tuple[TokenLayout, torch.Tensor, Dict[int, AttentionRecord]],
                    classes: torch.Tensor, eigen_smooth: bool) -> torch.Tensor:
        if eigen_smooth:
            warn_eigen_smooth_unused(type(self).__name__)
        layout, logits, records = context
        order = sorted(records, reverse=True)  # block L first: the class token's row is carried downwards
        with torch.enable_grad():  # images are independent: one backward pass for the batch
            score = logits.gather(1, classes[:, None]).sum()
        gradients = torch.autograd.grad(score, [records[index].output for index in order])
        row = torch.zeros(logits.shape[0], 1, records[order[0]].query.shape[2], device=logits.device)
        row[:, 0, 0] = 1.0
        for index, output_grad in zip(order, gradients):
            row = row + row @ relevance_weights(records.pop(index), output_grad)
        return row[:, 0, layout.num_prefix_tokens:].reshape(row.shape[0], *layout.grid)


def relevance_weights(record: AttentionRecord, output_grad: torch.Tensor) -> torch.Tensor:
    """Ā = E_h[(∇A_h ⊙ A_h)⁺], (B, N, N) float32."""
    total = None
    for heads in record.head_groups():
        weighted = record.probability_gradient(output_grad, heads).mul_(record.probabilities(heads))
        part = weighted.clamp_(min=0).sum(dim=1)
        total = part if total is None else total.add_(part)
    return total.div_(record.num_heads)
