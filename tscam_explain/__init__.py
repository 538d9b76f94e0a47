"""tscam-explain: TS-CAM and TRT explainers for timm Vision Transformers, in the pytorch-grad-cam style."""
from .explainers import (CheferExplainer, LeGradExplainer, RolloutExplainer, TransAttentionExplainer,
                         TransCAMExplainer, TRTExplainer, TSCAMExplainer, list_explainers, make_explainer)
from .models import TRT, TSCAM, create_classifier, create_trt, create_tscam, load_model, load_official, save_model
from .pretrained import list_pretrained, load_pretrained, model_card

__version__ = "0.1.0"

__all__ = [
    "TSCAMExplainer", "TransAttentionExplainer", "TransCAMExplainer", "list_explainers", "make_explainer",
    "TSCAM", "create_tscam", "load_model", "save_model", "__version__", "TRTExplainer", "TRT", "create_trt",
    "load_official", "create_classifier", "list_pretrained", "load_pretrained", "model_card",
    "RolloutExplainer", "CheferExplainer", "LeGradExplainer",
]
