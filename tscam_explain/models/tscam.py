"""TS-CAM (Gao et al., ICCV 2021): a timm ViT backbone plus a semantic re-allocation head.

Patch tokens after the final norm → (B, D, gh, gw) → head → semantic maps S (B, C, gh, gw);
logits are the global average of S. The backbone's CLS output and pretrained MLP head are unused.
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import timm
import torch
import torch.nn as nn

from ..vit import TokenLayout, check_vit, split_tokens, token_layout, tokens_to_grid
from .heads import SemanticHead, create_head
from .registry import register_architecture


class TSCAMOutput(NamedTuple):
    """logits (B, C); semantic_maps S (B, C, gh, gw); features: the head's input grid (B, D, gh, gw)."""

    logits: torch.Tensor
    semantic_maps: torch.Tensor
    features: torch.Tensor


class TSCAM(nn.Module):
    """A timm ViT with TS-CAM's semantic re-allocation head.

    Args:
        backbone: a timm VisionTransformer; its classifier is removed.
        num_classes: number of classes of the head.
        head: ``conv2d`` (3×3, default), ``conv1d`` or ``fc`` (the paper's Tables 10/11).
        config: the factory arguments, stored in checkpoints so :func:`load_model` can rebuild it.
    """

    arch = "tscam"

    def __init__(self, backbone: nn.Module, num_classes: int, head: str = "conv2d",
                 config: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        check_vit(backbone)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        backbone.reset_classifier(0)
        self.backbone = backbone
        self.head: SemanticHead = create_head(head, backbone.embed_dim, num_classes)
        self.num_classes = num_classes
        self.config = dict(config or {})

    def forward_maps(self, input_tensor: torch.Tensor) -> TSCAMOutput:
        """Logits, semantic maps and the head's input grid in one forward."""
        layout = token_layout(self.backbone, tuple(input_tensor.shape[-2:]))
        return self.forward_head(self.backbone.forward_features(input_tensor), layout)

    def forward_head(self, tokens: torch.Tensor, layout: TokenLayout) -> TSCAMOutput:
        """The head on final (``norm``-ed) backbone tokens (B, N, D) of the given layout."""
        _, patches = split_tokens(tokens, layout)
        features = tokens_to_grid(patches, layout)
        semantic_maps = self.head(features)
        return TSCAMOutput(semantic_maps.mean(dim=(2, 3)), semantic_maps, features)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(input_tensor).logits


@register_architecture("tscam")
def create_tscam(model_name: str, num_classes: int, pretrained: bool = False, head: str = "conv2d",
                 **timm_kwargs: Any) -> TSCAM:
    """Create a TS-CAM model on a timm ViT.

    Args:
        model_name: any timm VisionTransformer name, e.g. ``deit_small_patch16_224``.
        num_classes: classes of the semantic head.
        pretrained: load the backbone's pretrained weights through timm (needs the hub or its cache).
        head: ``conv2d`` (default), ``conv1d`` or ``fc``.
        **timm_kwargs: passed to ``timm.create_model`` (``img_size``, ``drop_path_rate``, ``dynamic_img_size``, …).
    """
    backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **timm_kwargs)
    config = dict(model_name=model_name, num_classes=num_classes, head=head, **timm_kwargs)
    return TSCAM(backbone, num_classes, head=head, config=config)
