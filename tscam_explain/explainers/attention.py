"""What the attention-based explainers (``rollout``, ``chefer``, ``legrad``) share: which models they explain.

They read a timm ViT's own blocks through :class:`~tscam_explain.vit.AttentionRecorder`, so they apply to a
plain timm ViT classifier and to a TS-CAM model (its backbone's blocks, its own logits). Not to TRT: its
last block runs on a two-token sequence after a re-attention block, outside the chain of blocks these
methods follow.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import ttach

from ..models import TSCAM, backbone_of
from ..vit import check_vit
from .base import ViTExplainer


class AttentionExplainer(ViTExplainer):
    """Base of the explainers computed from a ViT's blocks' attention.

    Args:
        model: a timm ViT classifier or a :class:`~tscam_explain.models.TSCAM` model.
        tta_transforms: ttach transforms for ``aug_smooth`` (default: pytorch-grad-cam's).
    """

    #: the map is a row of the class token (rollout, chefer); LeGrad averages all rows and needs none
    needs_class_token = True
    #: the map differentiates a class score, so the model must output class logits
    needs_classifier = False

    def __init__(self, model: nn.Module, tta_transforms: Optional[ttach.Compose] = None) -> None:
        self._vit = self._checked_backbone(model)
        super().__init__(model, tta_transforms)

    @classmethod
    def _checked_backbone(cls, model: nn.Module) -> nn.Module:
        """The model's timm ViT, or a TypeError saying why the explainer does not apply to ``model``."""
        if getattr(model, "arch", None) == "trt":
            raise TypeError(f"{cls.__name__} follows the chain of a ViT's blocks; a TRT model's last block "
                            "runs on two tokens after its re-attention block. Use TRTExplainer for TRT models")
        vit = check_vit(backbone_of(model), needs_class_token=cls.needs_class_token)
        if cls.needs_classifier and not (isinstance(model, TSCAM) or vit.num_classes > 0):
            raise TypeError(f"{cls.__name__} differentiates a class score, but {type(model).__name__} has no "
                            "classifier (num_classes=0); create the ViT with num_classes > 0")
        return vit

    @classmethod
    def accepts(cls, model: nn.Module) -> bool:
        """Whether the explainer applies to ``model``: a timm ViT (with a class token where the map is its
        row, with a classifier where a class score is differentiated) or a TS-CAM model; not TRT."""
        try:
            cls._checked_backbone(model)
        except TypeError:
            return False
        return True

    @property
    def backbone(self) -> nn.Module:
        return self._vit


def forward_with_activation_graph(model: nn.Module, input_tensor: torch.Tensor) -> torch.Tensor:
    """``model(input_tensor)`` recording an autograd graph through the activations but not to the parameters.

    The gradient methods differentiate activations only. Called with its parameters detached
    (``torch.func.functional_call``: the model's own parameters are untouched and back in place after the
    call, failed or not), autograd does not save the inputs of the linear layers, which only weight
    gradients need: a third less memory (DeiT-S, batch 8: 455 → 298 MiB). The input asks for gradients,
    so that the graph exists whether or not the user's parameters require them.
    """
    parameters = {name: parameter.detach() for name, parameter in model.named_parameters()}
    with torch.enable_grad():
        return torch.func.functional_call(model, parameters, (input_tensor.detach().requires_grad_(True),))
