"""TS-CAM maps (Gao et al., ICCV 2021) and the paper's two ablations.

M_c = A* ⊙ S_c: A* is the sum of the CLS attention rows of the chosen blocks, S_c the semantic
map of class c. ``TransAttentionExplainer`` gives A* alone and ``TransCAMExplainer`` S_c alone
(the paper's Tables 5/6); ``attention_blocks`` selects which blocks' attention is summed
(Tables 12/13: the last k blocks are ``range(-k, 0)``).

Two kinds of model are explained:

* a :class:`~tscam_explain.models.TSCAM` — S comes from its trained re-allocation head;
* any plain timm ViT classifier, training-free — S_c is the model's own classifier applied to
  every final patch token, for the requested class only (DeiT-distilled: the mean of its two heads).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import ttach

from ..models.tscam import TSCAM, TSCAMOutput
from ..vit import (CLSAttentionRecorder, TokenLayout, check_vit, split_tokens, token_class_contributions,
                   token_class_scores, token_layout)
from .base import ViTExplainer, first_principal_projection, warn_eigen_smooth_unused


class TSCAMExplainer(ViTExplainer):
    """TS-CAM: semantic-aware maps, at about the cost of one forward pass.

    Args:
        model: a :class:`~tscam_explain.models.TSCAM`, or a plain timm ViT classifier (training-free mode).
        attention_blocks: indices of the blocks whose CLS attention is summed (negative allowed);
            ``None``: all blocks, as in the paper.
        tta_transforms: ttach transforms for ``aug_smooth`` (default: pytorch-grad-cam's).

    Example:
        >>> with TSCAMExplainer(model) as cam:
        ...     maps = cam(input_tensor, targets=[ClassifierOutputTarget(281)])
    """

    uses_attention = True
    uses_semantic = True

    def __init__(self, model: nn.Module, attention_blocks: Optional[Sequence[int]] = None,
                 tta_transforms: Optional[ttach.Compose] = None) -> None:
        if getattr(model, "arch", None) not in (None, "tscam"):
            raise TypeError(f"{type(self).__name__} explains TS-CAM models or timm ViTs; "
                            f"for a {type(model).__name__} use its own explainer (e.g. TRTExplainer)")
        self.trained_head = isinstance(model, TSCAM)
        self._vit = model.backbone if self.trained_head else check_vit(model)
        if not self.trained_head and not isinstance(self._vit.head, nn.Linear):
            raise TypeError(
                f"{type(model).__name__} has no linear classifier head (num_classes={self._vit.num_classes}); "
                "the training-free mode scores patch tokens with it. Create the ViT with num_classes > 0 "
                "or build a TS-CAM model with create_tscam"
            )
        super().__init__(model, tta_transforms)
        self._recorder = CLSAttentionRecorder(self._vit, attention_blocks) if self.uses_attention else None

    @property
    def backbone(self) -> nn.Module:
        return self._vit

    def _forward(self, input_tensor: torch.Tensor) -> Tuple[torch.Tensor, tuple]:
        layout = token_layout(self._vit, tuple(input_tensor.shape[-2:]))
        if self._recorder is not None:
            self._recorder.clear()
        if self.trained_head:
            output: TSCAMOutput = self.model.forward_maps(input_tensor)
            return output.logits, (layout, output)
        tokens = self._vit.forward_features(input_tensor)
        logits = self._vit.forward_head(tokens)
        _, patches = split_tokens(tokens, layout)
        return logits, (layout, patches)

    def _semantic_maps(self, layout: TokenLayout, payload, classes: torch.Tensor,
                       eigen_smooth: bool) -> torch.Tensor:
        """S_c per image, flattened row-major: (B, n)."""
        batch = classes.shape[0]
        if self.trained_head:
            rows = torch.arange(batch, device=classes.device)
            maps = payload.semantic_maps[rows, classes].flatten(1)
            if eigen_smooth:
                terms = self.model.head.class_contributions(payload.features, classes)
                maps = first_principal_projection(terms.flatten(2).transpose(1, 2), maps)
            return maps
        maps = token_class_scores(self._vit, payload, classes)
        if eigen_smooth:
            maps = first_principal_projection(token_class_contributions(self._vit, payload, classes), maps)
        return maps

    def _class_maps(self, context: tuple, classes: torch.Tensor, eigen_smooth: bool) -> torch.Tensor:
        layout, payload = context
        maps = None
        if self.uses_semantic:
            maps = self._semantic_maps(layout, payload, classes, eigen_smooth)
        elif eigen_smooth:
            warn_eigen_smooth_unused(type(self).__name__)
        if self.uses_attention:
            attention = self._recorder.total()
            maps = attention if maps is None else attention * maps
        return maps.view(classes.shape[0], *layout.grid)

    def release(self) -> None:
        if self._recorder is not None:
            self._recorder.release()


class TransAttentionExplainer(TSCAMExplainer):
    """The TS-CAM ablation "TransAttention": the summed CLS attention A* alone (class-agnostic)."""

    uses_semantic = False


class TransCAMExplainer(TSCAMExplainer):
    """The TS-CAM ablation "TransCAM": the semantic map S_c alone, without attention coupling."""

    uses_attention = False
