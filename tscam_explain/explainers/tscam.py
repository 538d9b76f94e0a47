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

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import ttach

from ..models.tscam import TSCAM, TSCAMOutput
from ..vit import (CLSAttentionRecorder, TokenLayout, check_vit, split_tokens, token_class_contributions,
                   token_class_scores, token_layout)
from .base import (Targets, ViTExplainer, first_principal_projection, preserving_model,
                   warn_eigen_smooth_unused)


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
        if getattr(model, "arch", None) not in (None, "tscam", "vit"):
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

    @staticmethod
    def accepts(model: nn.Module) -> bool:
        """Whether TS-CAM explains ``model``: a TS-CAM model, or a timm ViT classifier with a class
        token and a linear head (the training-free mode)."""
        if isinstance(model, TSCAM):
            return True
        if getattr(model, "arch", None) not in (None, "vit"):
            return False
        try:
            vit = check_vit(model)
        except TypeError:
            return False
        return isinstance(vit.head, nn.Linear)

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

    def _parts(self, context: tuple, classes: torch.Tensor, eigen_smooth: bool, attention: bool,
               semantic: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(A*, S_c), each (B, n) or ``None`` when not asked for."""
        layout, payload = context
        summed = self._recorder.total() if attention else None
        class_map = self._semantic_maps(layout, payload, classes, eigen_smooth) if semantic else None
        return summed, class_map

    def _class_maps(self, context: tuple, classes: torch.Tensor, eigen_smooth: bool) -> torch.Tensor:
        if eigen_smooth and not self.uses_semantic:
            warn_eigen_smooth_unused(type(self).__name__)
        attention, semantic = self._parts(context, classes, eigen_smooth, self.uses_attention, self.uses_semantic)
        maps = semantic if attention is None else attention if semantic is None else attention * semantic
        return maps.view(classes.shape[0], *context[0].grid)

    def attribute_ablations(self, input_tensor: torch.Tensor, targets: Targets = None, *,
                            upsample: bool = True) -> Dict[str, torch.Tensor]:
        """TS-CAM and its two ablations from one forward pass (what the paper's Tables 5/6 compare).

        Args:
            input_tensor: (B, C, H, W) images.
            targets: as for :meth:`attribute`.
            upsample: as for :meth:`attribute`.

        Returns:
            ``{"tscam": A* ⊙ S_c, "transattention": A*, "transcam": S_c}``, each as :meth:`attribute`
            returns it (``self.outputs`` holds the logits).
        """
        if not (self.uses_attention and self.uses_semantic):
            raise TypeError(f"{type(self).__name__} computes one ablation only; use TSCAMExplainer for all three")
        with preserving_model(self.model):
            context, classes = self._explained_pass(input_tensor, targets)
        with torch.no_grad():
            attention, semantic = self._parts(context, classes, False, True, True)
        grid = (classes.shape[0], *context[0].grid)
        size = tuple(input_tensor.shape[-2:])
        maps = {"tscam": attention * semantic, "transattention": attention, "transcam": semantic}
        return {name: self._finish(value.reshape(grid), size, upsample) for name, value in maps.items()}

    def release(self) -> None:
        if self._recorder is not None:
            self._recorder.release()


class TransAttentionExplainer(TSCAMExplainer):
    """The TS-CAM ablation "TransAttention": the summed CLS attention A* alone (class-agnostic)."""

    uses_semantic = False


class TransCAMExplainer(TSCAMExplainer):
    """The TS-CAM ablation "TransCAM": the semantic map S_c alone, without attention coupling."""

    uses_attention = False
