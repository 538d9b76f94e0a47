"""The pieces a recipe turns into: model, trainable parameters, optimizer, schedule, precision, loaders.

Each is a small function of the recipe and the device, so the choices that only matter on a GPU
(bf16 autocast, fused AdamW, pinned memory, loader workers) are unit-testable on a CPU machine.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from timm.data import resolve_data_config, resolve_model_data_config
from timm.models import get_pretrained_cfg
from timm.optim import create_optimizer_v2
from timm.optim._param_groups import param_groups_weight_decay
from timm.scheduler import MultiStepLRScheduler

from ..checkpoint import PathLike
from ..models import backbone_of, create_model, load_model
from .recipes import Recipe

__all__ = [
    "build_model", "load_stage1", "data_normalization", "seed_everything", "prepare_trainable",
    "no_weight_decay_patterns", "build_optimizer", "build_scheduler", "resolve_amp", "loader_options", "AMP_CHOICES",
]

AMP_CHOICES = ("auto", "bf16", "fp16", "fp32")


def build_model(recipe: Recipe, num_classes: int, model_name: str, pretrained: bool = False,
                model_kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """A new model for ``recipe`` on timm ViT ``model_name`` (every recipe but ``trt-stage2``).

    The recipe's ``img_size``, ``drop_path`` (and ``head`` / ``u``) are passed to the factory;
    ``model_kwargs`` may override the timm ones (``depth``, ``patch_size``, …).

    Args:
        recipe: the recipe.
        num_classes: classes of the training data.
        model_name: timm ViT name, e.g. ``deit_small_patch16_224``.
        pretrained: load timm's pretrained backbone weights (needs the hub or its cache).
        model_kwargs: extra ``timm.create_model`` arguments.
    """
    if recipe.trainable == "stage2":
        raise ValueError("trt-stage2 continues a stage-1 model: load it with load_stage1(path), not build_model")
    kwargs = {"img_size": recipe.img_size, "drop_path_rate": recipe.drop_path, **(model_kwargs or {})}
    if recipe.arch == "tscam":
        return create_model("tscam", model_name=model_name, num_classes=num_classes, pretrained=pretrained,
                            head=recipe.head, **kwargs)
    if recipe.arch == "vit":
        return create_model("vit", model_name=model_name, num_classes=num_classes, pretrained=pretrained, **kwargs)
    return create_model("trt", model_name=model_name, num_classes=num_classes, pretrained=pretrained,
                        u=recipe.u, **kwargs)


def load_stage1(path: PathLike) -> nn.Module:
    """The TRT model ``trt-stage2`` starts from: a model file or training checkpoint of a ``trt-stage1`` run.

    Args:
        path: ``model.pt``, ``best.pt`` or ``last.pt`` of a stage-1 run.
    """
    model = load_model(path)
    if getattr(model, "arch", None) != "trt":
        raise ValueError(f"{path} holds a {getattr(model, 'arch', type(model).__name__)!r} model; trt-stage2 "
                         "needs the checkpoint of a trt-stage1 run (arch 'trt')")
    return model


def data_normalization(model: Union[str, nn.Module]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) the backbone was pretrained with: from timm's pretrained config of a model name,
    or of a built tscam-explain model's backbone (ImageNet's for DeiT, as the official code uses).

    Args:
        model: a timm model name or a tscam-explain model.
    """
    if isinstance(model, str):
        pretrained_cfg = get_pretrained_cfg(model)
        config = resolve_data_config({}, pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {})
    else:
        config = resolve_model_data_config(backbone_of(model))
    return tuple(config["mean"]), tuple(config["std"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def prepare_trainable(model: nn.Module, recipe: Recipe) -> Tuple[nn.Module, ...]:
    """Freeze what the recipe does not train; return the frozen modules to keep in eval mode.

    Frozen parts run in eval mode while the rest trains (the official TRT stage 2 does this), so
    dropout and drop path do not perturb the features the trained part learns from.

    Args:
        model: the model of :func:`build_model`.
        recipe: the recipe; ``trainable`` decides.
    """
    if recipe.trainable == "all":
        model.requires_grad_(True)
        return ()
    if recipe.trainable == "head":
        model.requires_grad_(False)
        model.head.requires_grad_(True)
        return (model.backbone,)
    # TRT: set_stage freezes the other stage and keeps stage 1 in eval mode during stage 2
    model.set_stage(1 if recipe.trainable == "stage1" else 2)
    return tuple(model.stage1_modules()) if recipe.trainable == "stage2" else ()


def no_weight_decay_patterns(model: nn.Module, recipe: Recipe) -> List[str]:
    """timm ``no_weight_decay_list`` patterns for the recipe's exempt leaf names, wherever they sit in the model."""
    names = [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] in recipe.no_weight_decay]
    return sorted(names)


def build_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """timm's optimizer over the trainable parameters, with the official weight-decay rule.

    The official rule (no decay on 1-D parameters, biases, ``pos_embed``, ``cls_token``) is timm's
    ``param_groups_weight_decay`` with ``no_weight_decay_list`` naming the tokens, so timm builds the
    groups; frozen parameters are left out. On CUDA, Adam/AdamW use torch's fused kernel.

    Args:
        model: the (unwrapped) model, trainable parameters already selected.
        recipe: optimizer name, lr, weight decay, eps, betas, exempt names.
        device: the training device.
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"recipe {recipe.name!r} left no parameter to train")
    groups = param_groups_weight_decay(model, recipe.weight_decay,
                                       no_weight_decay_list=no_weight_decay_patterns(model, recipe))
    kwargs: Dict[str, Any] = {"eps": recipe.opt_eps, "betas": recipe.opt_betas}
    if device.type == "cuda" and recipe.opt.lower() in ("adam", "adamw"):
        kwargs["fused"] = True
    return create_optimizer_v2(groups, opt=recipe.opt, lr=recipe.lr, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> MultiStepLRScheduler:
    """timm's multi-step schedule; ``step(e)`` at the start of 0-based epoch e sets its lr.

    timm applies milestone m from 0-based epoch m − 1, i.e. at the start of 1-based epoch m,
    exactly as the official ``adjust_learning_rate_normal`` (see :mod:`.recipes`).
    """
    return MultiStepLRScheduler(optimizer, decay_t=list(recipe.lr_decay_epochs), decay_rate=recipe.lr_decay_rate)


def resolve_amp(requested: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or ``None`` for float32.

    ``auto``: bfloat16 on a CUDA device that supports it, else float32 (CPU autocast is slower
    than float32 on most CPUs and would change results between machines).

    Args:
        requested: one of :data:`AMP_CHOICES`.
        device: the training device.
    """
    if requested not in AMP_CHOICES:
        raise ValueError(f"unknown precision {requested!r}; expected one of {AMP_CHOICES}")
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; use --amp bf16 or fp32 on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[requested]


def loader_options(device: torch.device, workers: Optional[int], world_size: int = 1,
                   persistent: bool = True) -> Dict[str, Any]:
    """DataLoader worker and memory settings for ``device``.

    Args:
        device: the training device.
        workers: loader processes per rank; ``None`` picks: on CUDA, this node's CPUs shared among
            its ranks (at most 8 each); on CPU 0, so that decoding does not compete with the
            training threads.
        world_size: number of ranks on this node (for sharing the CPUs).
        persistent: keep the workers between epochs (a loader iterated many times).
    """
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 1) // max(1, world_size))) if device.type == "cuda" else 0
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    options: Dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        options.update(persistent_workers=persistent, prefetch_factor=4)
    return options
