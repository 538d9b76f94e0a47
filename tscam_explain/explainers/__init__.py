"""Explainers with pytorch-grad-cam's calling contract."""
from .base import (ViTExplainer, cast_input, dtype_policy, model_dtype, normalize_maps, preserving_model,
                   resolve_targets, upsample_maps)
from .chefer import CheferExplainer
from .legrad import LeGradExplainer
from .registry import (canonical_name, list_explainers, make_explainer, register_explainer, registered_explainers,
                       release_explainer)
from .rollout import RolloutExplainer
from .trt import TRTExplainer
from .tscam import TransAttentionExplainer, TransCAMExplainer, TSCAMExplainer

__all__ = [
    "ViTExplainer", "normalize_maps", "resolve_targets", "upsample_maps", "list_explainers", "make_explainer",
    "register_explainer", "release_explainer", "TSCAMExplainer", "TransAttentionExplainer", "TransCAMExplainer",
    "TRTExplainer", "canonical_name", "registered_explainers",
    "cast_input", "dtype_policy", "model_dtype", "preserving_model",
    "RolloutExplainer", "CheferExplainer", "LeGradExplainer",
]
