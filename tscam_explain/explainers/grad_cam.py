"""pytorch-grad-cam's methods, configured for any timm ViT and safe on the user's model.

:func:`make_grad_cam` builds pytorch-grad-cam's own class (a subclass of it, so ``isinstance`` holds and
every attribute is theirs) with ``target_layers=[blocks[-1].norm1]`` and
:class:`~tscam_explain.vit.ViTReshapeTransform`, and adds what those classes leave to the caller:

* the input is checked as ours are (shape, channels, empty batch, NaN) and cast to the model's dtype
  (:func:`~tscam_explain.explainers.base.cast_input`); ``.outputs`` holds float32 logits;
* targets may be ints (``ClassifierOutputTarget`` is made for them), as for our explainers;
* gradient methods work on a frozen model (``requires_grad_(False)``) and under ``torch.no_grad()``;
* each call runs the model in eval mode and leaves it exactly as it was, even when it raises
  (:func:`~tscam_explain.explainers.base.preserving_model`); pytorch-grad-cam's own ``__init__`` puts the
  model in eval mode for good, and its AblationCAM leaves its ablation layer in the model on failure;
* ``with`` releases the hooks and lets every exception through (``BaseCAM.__exit__`` swallows
  ``IndexError`` and prints it); ``release()`` can be called any number of times; garbage collection
  releases the hooks as pytorch-grad-cam's ``__del__`` does, without its "Exception ignored" tracebacks.

Per method:

* ``ablationcam``: :class:`~tscam_explain.vit.ViTAblationLayer` (pytorch-grad-cam's default layer
  indexes tokens as a (B, C, H, W) map and raises ``IndexError``);
* ``shapleycam``: see :class:`_ShapleyCAMOnViT`;
* ``fullgrad``: refused (:data:`REFUSED`).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, ContextManager, Dict, List

import numpy as np
import pytorch_grad_cam
import torch
import torch.nn as nn
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models import backbone_of
from ..vit import ViTAblationLayer, ViTReshapeTransform, check_input, check_vit
from .base import ModelState, Targets, callable_targets, cast_input, dtype_policy, preserving_model

#: pytorch-grad-cam methods that do not apply to ViTs, and why (canonical name → reason).
REFUSED: Dict[str, str] = {
    "fullgrad": (
        "pytorch-grad-cam's FullGrad ignores target_layers and sums gradient x bias over every Conv2d and "
        "BatchNorm2d layer; a ViT has one such layer (the patch embedding), so every Linear and LayerNorm bias, "
        "which FullGrad's completeness needs, would be left out silently. Use gradcam, layercam or tscam instead"
    ),
}


def canonical_name(name: str) -> str:
    """The one normalisation of explainer names, for registering, listing and looking them up:
    lower case without ``-`` and ``_`` (``KPCA_CAM``, ``kpca-cam`` and ``kpcacam`` are one name)."""
    return name.lower().replace("-", "").replace("_", "")


@functools.lru_cache(maxsize=None)
def grad_cam_classes() -> Dict[str, type]:
    """Every pytorch-grad-cam CAM class by canonical name (gradcam, scorecam, kpcacam, …), refused ones included."""
    return {
        canonical_name(name): cls
        for name, cls in inspect.getmembers(pytorch_grad_cam, inspect.isclass)
        if issubclass(cls, BaseCAM) and cls is not BaseCAM
    }


def grad_cam_methods() -> List[str]:
    """The canonical names of the pytorch-grad-cam methods :func:`make_grad_cam` builds for ViTs."""
    return sorted(name for name in grad_cam_classes() if name not in REFUSED)


def grad_cam_accepts(model: nn.Module) -> bool:
    """pytorch-grad-cam's methods hook ``blocks[-1].norm1``, which must see the full token sequence:
    any timm ViT classifier or TS-CAM model, not TRT (its last block runs on two tokens)."""
    if getattr(model, "arch", None) == "trt":
        return False
    try:
        check_vit(backbone_of(model), needs_class_token=False)
    except TypeError:
        return False
    return True


class _ViTCAM:
    """Put in front of a pytorch-grad-cam class by :func:`make_grad_cam` (see the module docstring)."""

    _vit: nn.Module

    def _backend(self) -> ContextManager[Any]:
        """The attention kernels the call runs under (the default ones)."""
        return contextlib.nullcontext()

    def __call__(self, input_tensor: torch.Tensor, targets: Targets = None, aug_smooth: bool = False,
                 eigen_smooth: bool = False) -> np.ndarray:
        """pytorch-grad-cam's call: float32 (B, H, W) maps in [0, 1]; ``targets`` may also be ints."""
        check_input(self._vit, input_tensor)
        targets = callable_targets(targets, len(input_tensor))
        # an input that needs a gradient gives the target layer's output one even when every parameter is
        # frozen or the caller is under torch.no_grad(); else pytorch-grad-cam records no gradient and fails
        # with "IndexError: list index out of range"
        input_tensor = cast_input(self.model, input_tensor).detach().requires_grad_(self.uses_gradients)
        with torch.enable_grad(), preserving_model(self.model), dtype_policy(self.model), self._backend():
            maps = super().__call__(input_tensor, targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        # the logits without the graph of the backward pass they were part of
        self.outputs = self.outputs.detach()
        return np.asarray(maps, dtype=np.float32)

    def release(self) -> None:
        """Remove every hook this CAM put on the model (any number of times; never raises)."""
        recorder = getattr(self, "activations_and_grads", None)
        if recorder is None:  # __init__ failed before it registered anything
            return
        # not ActivationsAndGradients.release(): its clear() calls detach_() on the stored tensors, which
        # raises "Can't detach views in-place" on the undetached ones ShapleyCAM keeps
        recorder.activations, recorder.gradients = [], []
        for handle in recorder.handles:
            handle.remove()
        recorder.handles.clear()

    def __enter__(self) -> "_ViTCAM":
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        # returns None: every exception propagates (BaseCAM.__exit__ swallows IndexError)
        self.release()

    def __del__(self) -> None:
        # BaseCAM.__del__ releases the hooks when the object is collected, and prints "Exception ignored"
        # tracebacks when its __init__ failed half-way or the release raises; keep the first, not the second
        self.release()


class _ShapleyCAMOnViT(_ViTCAM):
    """ShapleyCAM needs a Hessian-vector product, so two upstream limits are worked around:

    * it backpropagates twice through the attention; PyTorch's fused attention kernels (flash, memory
      efficient) have no double backward ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward
      is not implemented"), so the call runs under ``sdpa_kernel(MATH)``, a scoped dispatcher choice:
      the model's ``fused_attn`` flags are not touched;
    * it keeps undetached activations (``detach=False``), and ``BaseCAM.get_cam_image`` then uses the raw
      token sequence instead of the reshaped map ("Invalid activation shape. Get 3."), so the map is
      formed here from the reshaped activations, as ``BaseCAM.get_cam_image`` forms it.
    """

    def _backend(self) -> ContextManager[Any]:
        return sdpa_kernel([SDPBackend.MATH])

    def get_cam_image(self, input_tensor: torch.Tensor, target_layer: nn.Module, targets: List[Callable],
                      activations: torch.Tensor, grads: torch.Tensor, eigen_smooth: bool = False) -> np.ndarray:
        weights = self.get_cam_weights(input_tensor, target_layer, targets, activations, grads)
        grid = self.reshape_transform(activations).detach().cpu().numpy()
        weighted = weights[:, :, None, None] * grid
        if eigen_smooth:
            return get_2d_projection(weighted)
        return weighted.sum(axis=1)


_MIXINS: Dict[str, type] = {"shapleycam": _ShapleyCAMOnViT}


@functools.lru_cache(maxsize=None)
def _vit_class(name: str) -> type:
    """pytorch-grad-cam's class ``name`` with the ViT mixin in front; same class name."""
    cls = grad_cam_classes()[name]
    mixin = _MIXINS.get(name, _ViTCAM)
    return type(cls.__name__, (mixin, cls), {"__module__": __name__, "__doc__": cls.__doc__})


def make_grad_cam(name: str, model: nn.Module, **kwargs: Any) -> BaseCAM:
    """Build pytorch-grad-cam's method ``name`` (canonical) for ``model``.

    Args:
        name: a canonical name from :func:`grad_cam_methods`.
        model: a timm ViT classifier or a TS-CAM model.
        **kwargs: passed to the class; ``target_layers`` defaults to ``[vit.blocks[-1].norm1]``,
            ``reshape_transform`` to :class:`~tscam_explain.vit.ViTReshapeTransform`, AblationCAM's
            ``ablation_layer`` to :class:`~tscam_explain.vit.ViTAblationLayer`.

    :func:`~tscam_explain.explainers.make_explainer` checks the name (:data:`REFUSED`) and the model
    (:func:`grad_cam_accepts`) first.
    """
    vit = check_vit(backbone_of(model), needs_class_token=False)
    state = ModelState(model)
    reshape = kwargs.pop("reshape_transform", None) or ViTReshapeTransform(vit)
    kwargs.setdefault("target_layers", [vit.blocks[-1].norm1])
    if name == "ablationcam":
        kwargs.setdefault("ablation_layer", ViTAblationLayer(vit.num_prefix_tokens))
    try:
        cam = _vit_class(name)(model=model, reshape_transform=reshape, **kwargs)
    except BaseException:
        state.restore()  # removes the reshape transform's hook too
        raise
    state.restore(hooks=False)  # BaseCAM.__init__ puts the model in eval mode for good; each call does it instead
    cam._vit = vit
    if isinstance(reshape, ViTReshapeTransform) and reshape.handle is not None:
        cam.activations_and_grads.handles.append(reshape.handle)
    return cam
