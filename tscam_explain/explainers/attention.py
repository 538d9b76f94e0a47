"""What the attention-based explainers (``rollout``, ``chefer``, ``legrad``) share: which models they explain.

They read a timm ViT's own blocks through :class:`~tscam_explain.vit.AttentionRecorder`, so they apply to a
plain timm ViT classifier and to a TS-CAM model (its backbone's blocks, its own logits). Not to TRT: its
last block runs on a two-token sequence after a re-attention block, outside the chain of blocks these
methods follow.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import ttach

from ..models import TSCAM, backbone_of
from ..vit import BlockTokenRecorder, TokenLayout, check_vit, token_layout
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


class GradientAttentionExplainer(AttentionExplainer):
    """Base of the explainers that differentiate a class score to the blocks' attention (``chefer``, ``legrad``).

    One forward pass without gradients, the user's model as it is (fused attention kept), records the tokens
    between the blocks (:class:`~tscam_explain.vit.BlockTokenRecorder`) and gives the logits, hence the
    classes. The gradients are then taken one block at a time from those tokens
    (:func:`~tscam_explain.vit.block_attention_gradient`), so that peak memory holds one block's
    activations, not all of them (DeiT-S, batch 8: 2.45× and 1.67× a plain forward's memory instead of 7.1×;
    docs/benchmarks.md).
    """

    needs_classifier = True

    def _token_positions(self) -> Optional[Sequence[int]]:
        """The token positions :meth:`_class_maps` reads (``None``: all)."""
        return None

    def _forward(self, input_tensor: torch.Tensor) -> Tuple[torch.Tensor, tuple]:
        layout = token_layout(self._vit, tuple(input_tensor.shape[-2:]))
        with BlockTokenRecorder(self._vit, self._token_positions()) as recorder:
            logits = self.model(input_tensor)
        return logits, (layout, recorder.tokens)

    def _model_score(self, layout: TokenLayout) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``score(tokens, classes)``: (B,) the model's own logits of ``classes`` from final block tokens (B, N, D):
        the final norm, then the model's pooling and classifier (TS-CAM: its conv head and average)."""
        vit = self._vit
        if isinstance(self.model, TSCAM):
            head = lambda tokens: self.model.forward_head(vit.norm(tokens), layout).logits  # noqa: E731
        else:
            head = lambda tokens: vit.forward_head(vit.norm(tokens))  # noqa: E731
        return lambda tokens, classes: head(tokens).gather(1, classes[:, None])[:, 0]


def score_gradient(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tokens: torch.Tensor,
                   classes: torch.Tensor) -> torch.Tensor:
    """∂ Σ_b score(tokens, classes)_b / ∂tokens, (B, N, D): images are independent, so one backward pass
    gives every image's gradient."""
    tokens = tokens.detach().requires_grad_(True)
    with torch.enable_grad():
        total = score(tokens, classes).sum()
    return torch.autograd.grad(total, tokens)[0]
