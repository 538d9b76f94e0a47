"""Registry of the model architectures tscam-explain builds, and their checkpoint files.

A checkpoint holds the architecture name, the factory arguments and the state dict, all plain
types, so :func:`load_model` rebuilds the model from the file alone with ``weights_only=True``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Union

import torch
import torch.nn as nn

from ..checkpoint import PathLike, atomic_save, load_file

MODEL_FILE_FORMAT = "tscam-explain/model/v1"
_ARCHITECTURES: Dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory under ``name`` (the model class's ``arch``)."""

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _ARCHITECTURES[name] = factory
        return factory

    return decorate


def list_architectures() -> list:
    return sorted(_ARCHITECTURES)


def create_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build a registered architecture (``tscam``, ``trt``, …) from its factory arguments."""
    if arch not in _ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {list_architectures()}")
    return _ARCHITECTURES[arch](**kwargs)


def backbone_of(model: nn.Module) -> nn.Module:
    """The timm ViT inside a tscam-explain model (its ``backbone``), or ``model`` itself for a plain timm model."""
    return getattr(model, "backbone", model)


def model_state(model: nn.Module) -> Dict[str, Any]:
    """The checkpoint record of a registered model: format, arch, config and state dict."""
    arch = getattr(model, "arch", None)
    if arch not in _ARCHITECTURES or not hasattr(model, "config"):
        raise TypeError(
            f"{type(model).__name__} is not a tscam-explain model; build one with create_tscam or create_trt"
        )
    return {"format": MODEL_FILE_FORMAT, "arch": arch, "config": dict(model.config),
            "state_dict": model.state_dict()}


def model_from_state(record: Dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild a model from :func:`model_state`'s record (no download: ``pretrained=False``)."""
    if not isinstance(record, dict) or record.get("format") != MODEL_FILE_FORMAT:
        raise ValueError(f"{source} is not a tscam-explain model file (expected format {MODEL_FILE_FORMAT!r})")
    config = dict(record["config"])
    config["pretrained"] = False
    model = create_model(record["arch"], **config)
    model.load_state_dict(record["state_dict"])
    return model


def save_model(model: nn.Module, path: PathLike) -> None:
    """Write ``model`` (architecture, config and weights) atomically to ``path``."""
    atomic_save(model_state(model), path)


def load_model(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """Load a model file, with ``weights_only=True``.

    Reads what :func:`save_model` writes, a trainer checkpoint, and the authors' official TS-CAM and TRT
    checkpoints (see :func:`~tscam_explain.models.load_official`, whose defaults apply).

    Raises:
        ValueError: the file is none of these; the message says what each format expects.
    """
    record = load_file(path, map_location=map_location)
    if isinstance(record, dict) and "model" in record and "format" not in record:
        record = record["model"]  # a full training checkpoint keeps the model record under "model"
    if isinstance(record, dict) and record.get("format") == MODEL_FILE_FORMAT:
        return model_from_state(record, source=str(path))
    # imported here: the official loader builds on the model classes, which import this module
    from .official import model_from_official
    try:
        return model_from_official(record, source=str(path))
    except ValueError as error:
        raise ValueError(f"{error}. It is not a tscam-explain model file either (expected format "
                         f"{MODEL_FILE_FORMAT!r})") from None
