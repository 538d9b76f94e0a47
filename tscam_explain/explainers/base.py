"""The pytorch-grad-cam calling contract, shared by the token-based explainers (TS-CAM, TRT, …).

``explainer(input_tensor, targets=None, aug_smooth=False, eigen_smooth=False)`` returns an
``np.ndarray`` float32 (B, H, W), each map min-max normalised to [0, 1], exactly as pytorch-grad-cam's
``BaseCAM.__call__`` does; ``explainer.outputs`` holds the logits; ``with`` releases the hooks.
:meth:`ViTExplainer.attribute` is the tensor path (Captum-style): the maps stay on the model's device.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import ttach

from ..vit import check_input

Targets = Optional[Sequence[Any]]


def resolve_targets(targets: Targets, logits: torch.Tensor) -> torch.Tensor:
    """Turn pytorch-grad-cam targets into one class index per image.

    Args:
        targets: ``None`` (the predicted top-1 class), or one entry per image: an int, a 0-d
            integer tensor, or a pytorch-grad-cam target with a ``category`` attribute
            (``ClassifierOutputTarget``, ``ClassifierOutputSoftmaxTarget``, …).
        logits: (B, C) model outputs.

    Returns:
        (B,) long tensor on the logits' device.
    """
    batch, num_classes = logits.shape
    if targets is None:
        return logits.argmax(dim=-1)
    if isinstance(targets, torch.Tensor):
        targets = targets.tolist()
    if isinstance(targets, (str, bytes)) or not hasattr(targets, "__len__"):
        raise TypeError(f"targets must be a sequence with one target per image, got {type(targets).__name__}")
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch} images; pass one target per image")
    classes = []
    for position, target in enumerate(targets):
        category = getattr(target, "category", target)
        if isinstance(category, torch.Tensor) and category.numel() == 1:
            category = category.item()
        if isinstance(category, np.integer):
            category = int(category)
        if not isinstance(category, int) or isinstance(category, bool):
            raise TypeError(
                f"target {position} is {target!r}; expected an int class index or a pytorch-grad-cam "
                "target with a 'category' (e.g. ClassifierOutputTarget(3))"
            )
        if not 0 <= category < num_classes:
            raise ValueError(f"target {position} is class {category}, outside 0..{num_classes - 1}")
        classes.append(category)
    return torch.tensor(classes, dtype=torch.long, device=logits.device)


def normalize_maps(maps: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Per-map min-max normalisation of (B, H, W) to [0, 1]; a constant map becomes zeros.

    Args:
        maps: (B, H, W) maps (contiguous when ``inplace``).
        inplace: overwrite ``maps`` instead of allocating a second image-sized tensor.
    """
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    span = torch.where(span > 0, span, torch.ones_like(span))
    if inplace:
        flat.sub_(low).div_(span)
        return maps
    return ((flat - low) / span).view_as(maps)


def upsample_maps(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (B, gh, gw) grid maps to the input size, then min-max (TS-CAM's order)."""
    upsampled = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(upsampled, inplace=True)


def first_principal_projection(contributions: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Eigen smoothing: project per-channel map terms on their first principal component.

    pytorch-grad-cam's ``eigen_smooth`` projects the weighted activations on their first principal
    component; here the weighted activations are the per-channel terms of the class map.
    The SVD's sign is arbitrary, so it is chosen to correlate positively with ``reference``.

    Args:
        contributions: (B, n, D) per-token, per-channel terms whose sum over D is the class map.
        reference: (B, n) the plain class map.

    Returns:
        (B, n) projection.
    """
    centered = contributions.float() - contributions.float().mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    projection = torch.einsum("bnd,bd->bn", centered, vh[:, 0])
    reference = reference.float() - reference.float().mean(dim=1, keepdim=True)
    sign = torch.sign((projection * reference).sum(dim=1, keepdim=True))
    return projection * torch.where(sign == 0, torch.ones_like(sign), sign)


class ViTExplainer:
    """Base of the token-based explainers.

    Subclasses implement :meth:`_forward` (one forward pass, returning logits and whatever the
    maps need) and :meth:`_class_maps` (grid maps for one class per image).

    Args:
        model: the model to explain; it is put in eval mode, as pytorch-grad-cam does.
        tta_transforms: ttach transforms for ``aug_smooth``; default: pytorch-grad-cam's
            (horizontal flip × multiply by 0.9, 1, 1.1).
    """

    def __init__(self, model: nn.Module, tta_transforms: Optional[ttach.Compose] = None) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.tta_transforms = tta_transforms if tta_transforms is not None else ttach.Compose(
            [ttach.HorizontalFlip(), ttach.Multiply(factors=[0.9, 1, 1.1])]
        )
        self.outputs: Optional[torch.Tensor] = None

    # -- to implement -------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        """The timm ViT whose input is validated."""
        raise NotImplementedError

    def _forward(self, input_tensor: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        """Run the model once; return (logits (B, C), context for :meth:`_class_maps`)."""
        raise NotImplementedError

    def _class_maps(self, context: Any, classes: torch.Tensor, eigen_smooth: bool) -> torch.Tensor:
        """Raw (B, gh, gw) maps for ``classes[b]`` of image b."""
        raise NotImplementedError

    # -- the contract -------------------------------------------------------------------------
    def attribute(self, input_tensor: torch.Tensor, targets: Targets = None, *, upsample: bool = True,
                  aug_smooth: bool = False, eigen_smooth: bool = False) -> torch.Tensor:
        """Explain a batch, keeping the maps on the model's device.

        Args:
            input_tensor: (B, C, H, W) images, normalised as the model expects.
            targets: one target per image (see :func:`resolve_targets`); ``None`` = top-1 prediction.
            upsample: ``True``: (B, H, W) maps in [0, 1]. ``False``: raw (B, gh, gw) patch-grid maps,
                not normalised (what evaluation protocols resize themselves).
            aug_smooth: average over test-time augmentations (needs ``upsample=True``).
            eigen_smooth: first-principal-component smoothing of the class map.
        """
        if aug_smooth:
            if not upsample:
                raise ValueError("aug_smooth averages maps in image space; it needs upsample=True")
            return self._augmentation_smoothed(input_tensor, targets, eigen_smooth)
        context, classes = self._explained_pass(input_tensor, targets)
        with torch.no_grad():
            maps = self._class_maps(context, classes, eigen_smooth)
        return self._finish(maps, tuple(input_tensor.shape[-2:]), upsample)

    def _explained_pass(self, input_tensor: torch.Tensor, targets: Targets) -> Tuple[Any, torch.Tensor]:
        """Check the input, run :meth:`_forward` once, keep the logits; return (context, classes)."""
        check_input(self.backbone, input_tensor)
        input_tensor = input_tensor.to(self.device)
        with torch.no_grad():
            logits, context = self._forward(input_tensor)
        self.outputs = logits
        return context, resolve_targets(targets, logits)

    @staticmethod
    def _finish(maps: torch.Tensor, size: Tuple[int, int], upsample: bool) -> torch.Tensor:
        """Refuse non-finite maps; upsample and normalise them when asked."""
        if not torch.isfinite(maps).all():
            raise FloatingPointError(
                "the explanation maps contain NaN or Inf; check the model's weights and inputs"
            )
        return upsample_maps(maps, size) if upsample else maps

    def _augmentation_smoothed(self, input_tensor: torch.Tensor, targets: Targets,
                               eigen_smooth: bool) -> torch.Tensor:
        total = None
        for transform in self.tta_transforms:
            augmented = transform.augment_image(input_tensor)
            maps = self.attribute(augmented, targets, eigen_smooth=eigen_smooth)
            if targets is None:
                # keep the classes of the first view, so every view explains the same class
                targets = self.outputs.argmax(dim=-1)
            maps = transform.deaugment_mask(maps[:, None])[:, 0]
            total = maps if total is None else total + maps
        return total / len(self.tta_transforms)

    def __call__(self, input_tensor: torch.Tensor, targets: Targets = None, aug_smooth: bool = False,
                 eigen_smooth: bool = False) -> np.ndarray:
        """pytorch-grad-cam's call: float32 (B, H, W) numpy maps in [0, 1]."""
        maps = self.attribute(input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        return maps.float().cpu().numpy()

    def release(self) -> None:
        """Remove every hook this explainer put on the model."""

    def __enter__(self) -> "ViTExplainer":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        # returns None: exceptions raised inside the block propagate
        self.release()


def warn_eigen_smooth_unused(name: str) -> None:
    warnings.warn(f"{name} has no class features to smooth; eigen_smooth=True is ignored", stacklevel=3)
