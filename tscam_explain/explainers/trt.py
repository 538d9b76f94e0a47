"""TRT maps (Su et al., BMVC 2022): M = r ⊙ M_C[c], classification from the TPSM logits.

r is TPSM's refined attention (the preliminary CLS attention m with the selected tokens' mass
re-distributed by the importance weights λ), M_C the CAM branch's class maps. The paper's
ablations are options: without re-attention (r = m), and token selection by top-k, by a fixed
threshold τ, or by the CDF rule with another ``u``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import ttach

from ..models.trt import TRT, TokenSelection, TRTOutput
from ..vit import TokenLayout, token_layout
from .base import ViTExplainer, first_principal_projection


class TRTExplainer(ViTExplainer):
    """TRT: token-refined, class-aware maps from one pass of blocks 1 … L−1 plus TRT's three small extras.

    Args:
        model: a :class:`~tscam_explain.models.TRT` (build one with ``create_trt(model_name, num_classes)``).
        reattention: ``False`` for the paper's "w/o re-attention" ablation: r = m.
        u: CDF token selection with this ``u`` instead of the model's.
        top_k: token selection by the ``top_k`` largest attention values (ablation).
        threshold: token selection by m > ``threshold`` · max(m) (ablation).
        tta_transforms: ttach transforms for ``aug_smooth`` (default: pytorch-grad-cam's).

    At most one of ``u``, ``top_k``, ``threshold``; none: the model's own CDF rule. The selection
    changes the whole TPSM pass (the re-attention mask, λ and the TPSM logits), not only r.

    Example:
        >>> with TRTExplainer(create_trt("deit_small_patch16_224", num_classes=200)) as cam:
        ...     maps = cam(input_tensor, targets=[ClassifierOutputTarget(3)])
    """

    def __init__(self, model: nn.Module, *, reattention: bool = True, u: Optional[float] = None,
                 top_k: Optional[int] = None, threshold: Optional[float] = None,
                 tta_transforms: Optional[ttach.Compose] = None) -> None:
        if not isinstance(model, TRT):
            raise TypeError(
                f"TRTExplainer explains TRT models, got {type(model).__name__}; build one with "
                "tscam_explain.create_trt(model_name, num_classes) (or load_model on a TRT checkpoint). "
                "For a TS-CAM model or a plain timm ViT use TSCAMExplainer"
            )
        chosen = {name: value for name, value in (("cdf", u), ("top_k", top_k), ("threshold", threshold))
                  if value is not None}
        if len(chosen) > 1:
            raise ValueError(f"choose at most one token selection among u, top_k and threshold; got {sorted(chosen)}")
        self.selection = TokenSelection(*chosen.popitem()) if chosen else model.selection
        self.reattention = reattention
        super().__init__(model, tta_transforms)

    @staticmethod
    def accepts(model: nn.Module) -> bool:
        """Whether TRT explains ``model``: only TRT models."""
        return isinstance(model, TRT)

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    def _forward(self, input_tensor: torch.Tensor) -> Tuple[torch.Tensor, Tuple[TokenLayout, TRTOutput]]:
        layout = token_layout(self.backbone, tuple(input_tensor.shape[-2:]))
        output = self.model.forward_parts(input_tensor, tpsm=True, cam=True, selection=self.selection)
        return output.logits, (layout, output)

    def _class_maps(self, context: Tuple[TokenLayout, TRTOutput], classes: torch.Tensor,
                    eigen_smooth: bool) -> torch.Tensor:
        layout, output = context
        rows = torch.arange(classes.shape[0], device=classes.device)
        cam_maps = output.cam_maps[rows, classes].flatten(1).float()
        if eigen_smooth:
            terms = self.model.cam_head.class_contributions(output.cam_features, classes)
            cam_maps = first_principal_projection(terms.flatten(2).transpose(1, 2), cam_maps)
        attention = output.refined_attention if self.reattention else output.attention
        return (attention * cam_maps).view(classes.shape[0], *layout.grid)
