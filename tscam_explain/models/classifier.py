"""A plain timm ViT classifier as a registered architecture (``vit``).

It is the model pytorch-grad-cam's baselines and TS-CAM's training-free mode explain. Registering it
lets the one training loop train it and lets :func:`~tscam_explain.models.save_model` /
:func:`~tscam_explain.models.load_model` write and read it like TS-CAM and TRT models: the timm
module itself is returned (no wrapper), tagged with ``arch`` and its factory ``config``.
"""
from __future__ import annotations

from typing import Any

import timm
import torch.nn as nn

from ..vit import check_vit
from .registry import register_architecture


@register_architecture("vit")
def create_classifier(model_name: str, num_classes: int, pretrained: bool = False, **timm_kwargs: Any) -> nn.Module:
    """Create a timm ViT classifier that the training loop and the model files know.

    Args:
        model_name: any timm VisionTransformer name, e.g. ``deit_tiny_patch16_224``.
        num_classes: classes of its linear head.
        pretrained: load timm's pretrained weights (needs the hub or its cache); the head is resized.
        **timm_kwargs: passed to ``timm.create_model`` (``img_size``, ``patch_size``, ``depth``, …).

    Returns:
        The timm model, with ``arch = "vit"`` and ``config`` (the arguments above) set.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, **timm_kwargs)
    check_vit(model, needs_class_token=False)
    model.arch = "vit"
    model.config = dict(model_name=model_name, num_classes=num_classes, **timm_kwargs)
    return model
