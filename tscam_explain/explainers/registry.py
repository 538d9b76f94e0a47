"""``make_explainer(name, model)``: our explainers, pytorch-grad-cam's and Captum's, configured for any timm ViT.

Names are normalised once (:func:`canonical_name`: lower case, no ``-`` or ``_``) for registering,
listing and looking up, so every name :func:`list_explainers` returns is accepted by :func:`make_explainer`.
A name that does not apply to a model is refused up front with the reason, never at the first call.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional

import torch.nn as nn
from pytorch_grad_cam.base_cam import BaseCAM

from .captum_attr import CaptumExplainer, captum_explainer_names, captum_method_name
from .chefer import CheferExplainer
from .grad_cam import REFUSED, canonical_name, grad_cam_accepts, grad_cam_methods, make_grad_cam
from .legrad import LeGradExplainer
from .rollout import RolloutExplainer
from .trt import TRTExplainer
from .tscam import TransAttentionExplainer, TransCAMExplainer, TSCAMExplainer

Accepts = Callable[[nn.Module], bool]

__all__ = ["register_explainer", "list_explainers", "make_explainer", "canonical_name", "release_explainer"]


class _Entry(NamedTuple):
    factory: Callable[..., Any]
    accepts: Accepts


_EXPLAINERS: Dict[str, _Entry] = {}


def _any_model(model: nn.Module) -> bool:
    """Every model."""
    return True


def register_explainer(name: str, accepts: Optional[Accepts] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering an explainer factory ``factory(model, **kw)`` under ``name``.

    Args:
        name: the name :func:`make_explainer` takes; stored as :func:`canonical_name` gives it.
        accepts: ``accepts(model)`` says whether the explainer applies to ``model`` (what
            :func:`list_explainers` filters on and :func:`make_explainer` checks); its docstring is
            the reason given when it refuses a model. Default: every model.
    """

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        _EXPLAINERS[canonical_name(name)] = _Entry(factory, accepts or _any_model)
        return factory

    return decorate


def list_explainers(model: Optional[nn.Module] = None) -> List[str]:
    """Every name :func:`make_explainer` accepts; with ``model``, only those that apply to it.

    Ours and pytorch-grad-cam's are canonical (:func:`canonical_name`); Captum's are as
    :func:`~tscam_explain.explainers.captum_attr.captum_explainer_names` spells them (``noisetunnel-saliency``).
    pytorch-grad-cam's methods that do not apply to ViTs (:data:`~tscam_explain.explainers.grad_cam.REFUSED`)
    are not listed; ``make_explainer`` refuses them with the reason.
    """
    theirs = grad_cam_methods() if model is None or grad_cam_accepts(model) else []
    captum = captum_explainer_names() if model is None or CaptumExplainer.accepts(model) else []
    return sorted(set(registered_explainers(model)) | set(theirs) | set(captum))


def registered_explainers(model: Optional[nn.Module] = None) -> List[str]:
    """The names registered with :func:`register_explainer` (ours, and later registrations), without
    pytorch-grad-cam's or Captum's methods, in the order they were registered; with ``model``, only those
    that apply to it."""
    return [name for name, entry in _EXPLAINERS.items() if model is None or entry.accepts(model)]


def make_explainer(name: str, model: nn.Module, **kwargs: Any) -> Any:
    """Build an explainer by name, ready for ``explainer(input_tensor, targets)``.

    Args:
        name: ``tscam``, ``transattention``, ``transcam``, ``trt``, ``rollout``, ``chefer``, ``legrad``
            (and later registrations), any pytorch-grad-cam method by class name (``gradcam``, ``scorecam``,
            ``layercam``, ``gradcamplusplus``, ``eigencam``, ``kpca_cam``, …), or a Captum method
            (``saliency``, ``inputxgradient``, ``integratedgradients``, ``gradientshap``, ``occlusion``,
            ``noisetunnel-saliency``, …; see :class:`~tscam_explain.explainers.captum_attr.CaptumExplainer`);
            case, ``-`` and ``_`` do not matter.
        model: a tscam-explain model or a timm ViT classifier.
        **kwargs: passed to the explainer. For pytorch-grad-cam methods, ``target_layers`` defaults to
            ``[vit.blocks[-1].norm1]`` and ``reshape_transform`` to :class:`~tscam_explain.vit.ViTReshapeTransform`
            (see :func:`~tscam_explain.explainers.grad_cam.make_grad_cam`).

    pytorch-grad-cam methods are returned as pytorch-grad-cam's own classes (a subclass each: ``isinstance``
    holds) that also take int targets, leave the model as it was and release their hooks on ``with`` exit
    or ``release()``.

    Raises:
        ValueError: an unknown name, or a pytorch-grad-cam method that does not apply to ViTs (with why).
        TypeError: the explainer does not apply to ``model`` (with what it expects).
    """
    key = canonical_name(name)
    if key in REFUSED:
        raise ValueError(f"explainer {name!r} does not apply to ViTs: {REFUSED[key]}")
    if key not in _EXPLAINERS and captum_method_name(key) is not None:
        return CaptumExplainer(model, key, **kwargs)
    entry = _EXPLAINERS.get(key)
    if entry is None and key not in grad_cam_methods():
        raise ValueError(f"unknown explainer {name!r}; expected one of {list_explainers()}")
    accepts = entry.accepts if entry is not None else grad_cam_accepts
    if not accepts(model):
        reason = " ".join((accepts.__doc__ or "").split())
        raise TypeError(f"explainer {name!r} does not apply to {type(model).__name__}: {reason} "
                        f"Explainers that apply to it: {list_explainers(model)}")
    return entry.factory(model, **kwargs) if entry is not None else make_grad_cam(key, model, **kwargs)


def release_explainer(explainer: Any) -> None:
    """Remove the hooks of any explainer :func:`make_explainer` built, without ``with``.

    Ours have ``release()``; pytorch-grad-cam's objects have none (their hooks go through
    ``activations_and_grads.release()``, and their ``__exit__`` swallows ``IndexError``).
    """
    release = getattr(explainer, "release", None)
    if release is not None:
        release()
    elif isinstance(explainer, BaseCAM):
        explainer.activations_and_grads.release()
    else:
        raise TypeError(f"{type(explainer).__name__} is not an explainer make_explainer builds")


register_explainer("tscam", TSCAMExplainer.accepts)(TSCAMExplainer)
register_explainer("transattention", TSCAMExplainer.accepts)(TransAttentionExplainer)
register_explainer("transcam", TSCAMExplainer.accepts)(TransCAMExplainer)
register_explainer("trt", TRTExplainer.accepts)(TRTExplainer)
register_explainer("rollout", RolloutExplainer.accepts)(RolloutExplainer)
register_explainer("chefer", CheferExplainer.accepts)(CheferExplainer)
register_explainer("legrad", LeGradExplainer.accepts)(LeGradExplainer)

