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

∂s_l/∂A_l = (∂s_l/∂O_l) V_lᵀ, with O_l = A_l V_l the block's attention output: no attention weights are
needed, only v and the gradient at O_l, recorded with timm's fused attention kept. s_l depends on block l's
attention only through block l's own projection and MLP, so each block's backward pass is short.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import ttach

from ..models.tscam import TSCAM
from ..vit import AttentionRecord, AttentionRecorder, TokenLayout, resolve_block_indices, token_class_scores, token_layout
from .attention import AttentionExplainer, forward_with_activation_graph
from .base import warn_eigen_smooth_unused

POOLINGS = ("model", "mean")


class LeGradExplainer(AttentionExplainer):
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
    needs_classifier = True

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

    def _forward(self, input_tensor: torch.Tensor) -> Tuple[torch.Tensor, tuple]:
        layout = token_layout(self._vit, tuple(input_tensor.shape[-2:]))
        recorder = AttentionRecorder(self._vit, self.blocks, values=True, outputs=True, tokens=True)
        with recorder:
            logits = forward_with_activation_graph(self.model, input_tensor)
        return logits.detach(), (layout, recorder.records)

    def _layer_score(self, layout: TokenLayout) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``score(tokens, classes)``: (B,) class scores of a block's output tokens (B, N, D)."""
        vit = self._vit
        if self.pooling == "mean":
            return lambda tokens, classes: token_class_scores(vit, vit.norm(tokens).mean(1, keepdim=True), classes)[:, 0]
        if isinstance(self.model, TSCAM):
            head = lambda tokens: self.model.forward_head(vit.norm(tokens), layout).logits  # noqa: E731
        else:
            head = lambda tokens: vit.forward_head(vit.norm(tokens))  # noqa: E731
        return lambda tokens, classes: head(tokens).gather(1, classes[:, None])[:, 0]

    def _class_maps(self, context: Tuple[TokenLayout, dict], classes: torch.Tensor,
                    eigen_smooth: bool) -> torch.Tensor:
        if eigen_smooth:
            warn_eigen_smooth_unused(type(self).__name__)
        layout, records = context
        score = self._layer_score(layout)
        total = None
        for index in self.blocks:
            record = records.pop(index)
            with torch.enable_grad():
                block_score = score(record.tokens, classes).sum()  # images are independent: one backward per block
            # s_l reaches block l's attention through block l alone, so each block's graph is used once
            output_grad, = torch.autograd.grad(block_score, record.output)
            relevance = layer_relevance(record, output_grad)
            total = relevance if total is None else total.add_(relevance)
        return total[:, layout.num_prefix_tokens:].reshape(classes.shape[0], *layout.grid)


def layer_relevance(record: AttentionRecord, output_grad: torch.Tensor) -> torch.Tensor:
    """E_l: mean over heads and query rows of max(∂s/∂A, 0), (B, N) float32 over all key tokens."""
    total = None
    for heads in record.head_groups():
        part = record.probability_gradient(output_grad, heads).clamp_(min=0).mean(dim=2).sum(dim=1)
        total = part if total is None else total.add_(part)
    return total.div_(record.num_heads)
