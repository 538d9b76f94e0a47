"""``make_explainer(name, model)``: our explainers and pytorch-grad-cam's, configured for any timm ViT."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict

import pytorch_grad_cam
import torch.nn as nn
from pytorch_grad_cam.base_cam import BaseCAM

from ..models import backbone_of
from ..vit import ViTReshapeTransform, check_vit
from .trt import TRTExplainer
from .tscam import TransAttentionExplainer, TransCAMExplainer, TSCAMExplainer

_EXPLAINERS: Dict[str, Callable[..., Any]] = {}


def register_explainer(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering an explainer factory ``factory(model, **kw)`` under ``name``."""

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        _EXPLAINERS[name.lower()] = factory
        return factory

    return decorate


def _grad_cam_methods() -> Dict[str, type]:
    """pytorch-grad-cam's CAM classes by lower-case name: gradcam, scorecam, layercam, gradcamplusplus, …"""
    return {
        name.lower(): cls
        for name, cls in inspect.getmembers(pytorch_grad_cam, inspect.isclass)
        if issubclass(cls, BaseCAM) and cls is not BaseCAM
    }


def list_explainers() -> list:
    """Every name :func:`make_explainer` accepts."""
    return sorted(set(_EXPLAINERS) | set(_grad_cam_methods()))


def make_explainer(name: str, model: nn.Module, **kwargs: Any) -> Any:
    """Build an explainer by name, ready for ``explainer(input_tensor, targets)``.

    Args:
        name: ``tscam``, ``transattention``, ``transcam`` (and later registrations such as ``trt``),
            or any pytorch-grad-cam method by class name, case-insensitive (``gradcam``, ``scorecam``,
            ``layercam``, ``gradcamplusplus``, ``eigencam``, …).
        model: a tscam-explain model or a timm ViT classifier.
        **kwargs: passed to the explainer. For pytorch-grad-cam methods, ``target_layers`` defaults to
            ``[vit.blocks[-1].norm1]`` and ``reshape_transform`` to :class:`~tscam_explain.vit.ViTReshapeTransform`.

    pytorch-grad-cam methods are returned as pytorch-grad-cam's own objects; the reshape transform's
    hook (dynamic-size models) is released by their ``release()`` / ``with`` exit.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key in _EXPLAINERS:
        return _EXPLAINERS[key](model, **kwargs)
    methods = _grad_cam_methods()
    if key not in methods:
        raise ValueError(f"unknown explainer {name!r}; expected one of {list_explainers()}")
    vit = check_vit(backbone_of(model), needs_class_token=False)
    reshape = kwargs.pop("reshape_transform", None) or ViTReshapeTransform(vit)
    target_layers = kwargs.pop("target_layers", None) or [vit.blocks[-1].norm1]
    cam = methods[key](model=model, target_layers=target_layers, reshape_transform=reshape, **kwargs)
    if isinstance(reshape, ViTReshapeTransform) and reshape.handle is not None:
        cam.activations_and_grads.handles.append(reshape.handle)
    return cam


register_explainer("tscam")(TSCAMExplainer)
register_explainer("transattention")(TransAttentionExplainer)
register_explainer("transcam")(TransCAMExplainer)
register_explainer("trt")(TRTExplainer)
