"""``make_explainer(name, model)``: our explainers and pytorch-grad-cam's, configured for any timm ViT."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import pytorch_grad_cam
import torch.nn as nn
from pytorch_grad_cam.base_cam import BaseCAM

from ..models import backbone_of
from ..vit import ViTReshapeTransform, check_vit
from .trt import TRTExplainer
from .tscam import TransAttentionExplainer, TransCAMExplainer, TSCAMExplainer

Accepts = Callable[[nn.Module], bool]


class _Entry(NamedTuple):
    factory: Callable[..., Any]
    accepts: Accepts


_EXPLAINERS: Dict[str, _Entry] = {}


def _any_model(model: nn.Module) -> bool:
    return True


def register_explainer(name: str, accepts: Optional[Accepts] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering an explainer factory ``factory(model, **kw)`` under ``name``.

    Args:
        name: the name :func:`make_explainer` takes (case-insensitive).
        accepts: ``accepts(model)`` says whether the explainer applies to ``model`` (what
            :func:`list_explainers` filters on); default: every model.
    """

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        _EXPLAINERS[name.lower()] = _Entry(factory, accepts or _any_model)
        return factory

    return decorate


def _grad_cam_methods() -> Dict[str, type]:
    """pytorch-grad-cam's CAM classes by lower-case name: gradcam, scorecam, layercam, gradcamplusplus, …"""
    return {
        name.lower(): cls
        for name, cls in inspect.getmembers(pytorch_grad_cam, inspect.isclass)
        if issubclass(cls, BaseCAM) and cls is not BaseCAM
    }


def _grad_cam_accepts(model: nn.Module) -> bool:
    """pytorch-grad-cam's methods hook ``blocks[-1].norm1``, which must see the full token sequence:
    any timm ViT classifier or TS-CAM model, not TRT (its last block runs on two tokens)."""
    if getattr(model, "arch", None) == "trt":
        return False
    try:
        check_vit(backbone_of(model), needs_class_token=False)
    except TypeError:
        return False
    return True


def list_explainers(model: Optional[nn.Module] = None) -> List[str]:
    """Every name :func:`make_explainer` accepts; with ``model``, only those that apply to it."""
    if model is None:
        return sorted(set(_EXPLAINERS) | set(_grad_cam_methods()))
    ours = [name for name, entry in _EXPLAINERS.items() if entry.accepts(model)]
    theirs = list(_grad_cam_methods()) if _grad_cam_accepts(model) else []
    return sorted(set(ours) | set(theirs))


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
        return _EXPLAINERS[key].factory(model, **kwargs)
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


register_explainer("tscam", TSCAMExplainer.accepts)(TSCAMExplainer)
register_explainer("transattention", TSCAMExplainer.accepts)(TransAttentionExplainer)
register_explainer("transcam", TSCAMExplainer.accepts)(TransCAMExplainer)
register_explainer("trt", TRTExplainer.accepts)(TRTExplainer)


def release_explainer(explainer: Any) -> None:
    """Remove every hook ``explainer`` put on its model: ours (``release()``) or a pytorch-grad-cam CAM
    (its ``activations_and_grads``, which also holds the reshape transform's hook). Use it in a
    ``finally`` instead of a CAM's ``with``, whose ``__exit__`` swallows ``IndexError``."""
    release = getattr(explainer, "release", None)
    if release is None:
        release = explainer.activations_and_grads.release
    release()
