"""Captum's attribution methods as explainers with our contract (Captum → tscam-explain).

``make_explainer("saliency" | "inputxgradient" | "integratedgradients" | "gradientshap" | "occlusion" |
"noisetunnel-saliency" | "noisetunnel-inputxgradient" | "noisetunnel-integratedgradients", model)``
runs Captum's own class (``captum.attr``) on the model's logits for the target class; the attribution maths
is Captum's. What this file adds is the contract: targets as for our other explainers, the (B, C, H, W)
attribution reduced to one map per image, min-max normalised.

Channel reduction, as Captum's ``visualize_image_attr`` does it: the sum over the colour channels, then the
``sign`` (``"absolute_value"``, its default, ``"positive"``, or ``"all"`` to keep the signed sum). The raw
map (``attribute(..., upsample=False)``) is already at the input size.

Defaults added where Captum has none or where its default does not fit a batch of ViT inputs (each can be
overridden by passing it):

* ``gradientshap``: ``baselines`` = one all-zero image (Captum requires baselines);
* ``occlusion``: a window of one patch over all channels, moved by one patch (``sliding_window_shapes`` =
  ``strides`` = (C, patch height, patch width)), so each forward occludes one token;
* ``integratedgradients`` (also inside the noise tunnel): ``internal_batch_size`` = the batch size, so the
  ``n_steps`` (50) scaled inputs go through the model one batch at a time instead of all at once.

The noise tunnel keeps Captum's defaults (``nt_type="smoothgrad"``, ``nt_samples=5``, ``stdevs=1.0`` in the
model's normalised input space) but runs its samples one at a time (``nt_samples_batch_size=1``), so that
the method inside sees batches of the input's size.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import ttach
from captum.attr import GradientShap, InputXGradient, IntegratedGradients, NoiseTunnel, Occlusion, Saliency

from ..models import backbone_of
from ..vit import check_vit
from .base import ViTExplainer, dtype_policy, warn_eigen_smooth_unused
from .grad_cam import canonical_name

#: Captum's classes by the name ``make_explainer`` takes
CAPTUM_METHODS = {"saliency": Saliency, "inputxgradient": InputXGradient, "integratedgradients": IntegratedGradients,
                  "gradientshap": GradientShap, "occlusion": Occlusion}
#: the methods offered inside Captum's ``NoiseTunnel`` (SmoothGrad and its variants) as ``noisetunnel-<name>``
NOISE_TUNNELED = ("saliency", "inputxgradient", "integratedgradients")
SIGNS = ("absolute_value", "positive", "all")


def captum_explainer_names() -> List[str]:
    """Every Captum name :func:`~tscam_explain.explainers.make_explainer` accepts."""
    return sorted(CAPTUM_METHODS) + [f"noisetunnel-{name}" for name in NOISE_TUNNELED]


_BY_KEY = {canonical_name(name): name for name in captum_explainer_names()}


def captum_method_name(name: str) -> Optional[str]:
    """The canonical Captum explainer name for ``name`` (case, ``-`` and ``_`` ignored), or ``None``."""
    return _BY_KEY.get(canonical_name(name))


class CaptumExplainer(ViTExplainer):
    """A Captum attribution method with our explainer contract.

    Args:
        model: a timm ViT classifier, a TS-CAM or a TRT model (anything whose forward gives class logits).
        method: one of :func:`captum_explainer_names`.
        sign: ``"absolute_value"`` (default), ``"positive"`` or ``"all"``: applied to the channel sum.
        tta_transforms: ttach transforms for ``aug_smooth`` (default: pytorch-grad-cam's).
        **attribute_kwargs: passed to the Captum method's ``attribute`` (e.g. ``n_steps``, ``baselines``,
            ``nt_samples``, ``stdevs``); they replace the defaults above.

    Example:
        >>> with make_explainer("integratedgradients", vit, n_steps=32) as cam:
        ...     maps = cam(input_tensor, targets=[ClassifierOutputTarget(281)])
    """

    def __init__(self, model: nn.Module, method: str, *, sign: str = "absolute_value",
                 tta_transforms: Optional[ttach.Compose] = None, **attribute_kwargs: Any) -> None:
        canonical = captum_method_name(method)
        if canonical is None:
            raise ValueError(f"unknown Captum method {method!r}; expected one of {captum_explainer_names()}")
        if sign not in SIGNS:
            raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
        if not self.accepts(model):
            raise TypeError(f"Captum explainers need a model with a timm ViT backbone that outputs class logits; "
                            f"got {type(model).__name__} (a ViT needs num_classes > 0)")
        super().__init__(model, tta_transforms)
        self._vit = backbone_of(model)
        self.method = canonical
        self.sign = sign
        self.attribute_kwargs = attribute_kwargs
        inner = canonical.split("-")[-1]
        self._attribution = CAPTUM_METHODS[inner](model)
        if canonical.startswith("noisetunnel-"):
            self._attribution = NoiseTunnel(self._attribution)

    @staticmethod
    def accepts(model: nn.Module) -> bool:
        """Any model with a timm ViT backbone whose forward gives class logits (ViT classifier, TS-CAM, TRT)."""
        try:
            vit = check_vit(backbone_of(model), needs_class_token=False)
        except TypeError:
            return False
        wrapped = vit is not model  # TS-CAM and TRT models: their own heads give the logits
        return wrapped or vit.num_classes > 0

    @property
    def backbone(self) -> nn.Module:
        return self._vit

    def _forward(self, input_tensor: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model(input_tensor), input_tensor

    def _defaults(self, input_tensor: torch.Tensor) -> Dict[str, Any]:
        inner = self.method.split("-")[-1]
        # the noise tunnel's samples one at a time: each inner call sees the batch itself
        defaults: Dict[str, Any] = {"nt_samples_batch_size": 1} if self.method.startswith("noisetunnel-") else {}
        if inner == "gradientshap":
            defaults["baselines"] = torch.zeros_like(input_tensor[:1])
        elif inner == "occlusion":
            window = (input_tensor.shape[1], *self._vit.patch_embed.patch_size)
            defaults.update(sliding_window_shapes=window, strides=window)
        elif inner == "integratedgradients":
            defaults["internal_batch_size"] = len(input_tensor)
        return defaults

    def _class_maps(self, context: torch.Tensor, classes: torch.Tensor, eigen_smooth: bool) -> torch.Tensor:
        if eigen_smooth:
            warn_eigen_smooth_unused(type(self).__name__)
        kwargs = {**self._defaults(context), **self.attribute_kwargs}
        # the gradient methods differentiate the logits w.r.t. the input; Captum sets requires_grad on the
        # (noisy, for the noise tunnel) copies it differentiates and warns each time: by design here, not news.
        # Captum builds its own inputs (float32 noise, baselines, path points): the dtype policy casts each
        # model call, so a bf16 or fp16 model works
        with torch.enable_grad(), warnings.catch_warnings(), dtype_policy(self.model):
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
            attributions = self._attribution.attribute(context, target=classes, **kwargs)
        summed = attributions.detach().float().sum(dim=1)
        if self.sign == "absolute_value":
            return summed.abs()
        return summed.clamp(min=0) if self.sign == "positive" else summed
