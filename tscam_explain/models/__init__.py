"""Models: TS-CAM (and TRT), their factories, and checkpoint files."""
from .classifier import create_classifier
from .heads import HEADS, SemanticHead, create_head
from .official import OfficialCheckpoint, load_official
from .registry import (backbone_of, create_model, list_architectures, load_model, model_from_state, model_state,
                       register_architecture, save_model)
from .trt import TRT, TokenSelection, TRTOutput, create_trt
from .tscam import TSCAM, TSCAMOutput, create_tscam

__all__ = [
    "HEADS", "SemanticHead", "backbone_of", "create_head", "create_model", "list_architectures", "load_model",
    "model_from_state", "model_state", "register_architecture", "save_model", "TSCAM", "TSCAMOutput",
    "create_tscam", "create_classifier", "TRT", "TRTOutput", "TokenSelection", "create_trt", "OfficialCheckpoint",
    "load_official",
]
