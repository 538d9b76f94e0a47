"""Explainers with pytorch-grad-cam's calling contract."""
from .base import ViTExplainer, normalize_maps, resolve_targets, upsample_maps
from .registry import list_explainers, make_explainer, register_explainer, release_explainer
from .trt import TRTExplainer
from .tscam import TransAttentionExplainer, TransCAMExplainer, TSCAMExplainer

__all__ = [
    "ViTExplainer", "normalize_maps", "resolve_targets", "upsample_maps", "list_explainers", "make_explainer",
    "register_explainer", "release_explainer", "TSCAMExplainer", "TransAttentionExplainer", "TransCAMExplainer",
    "TRTExplainer",
]
