"""Registry of the model architectures tscam-explain builds, and their checkpoint files.

A checkpoint holds the architecture name, the factory arguments and the state dict, all plain
types, so :func:`load_model` rebuilds the model from the file alone with ``weights_only=True``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Union

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


def _shown(keys: List[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (f" … ({len(keys)} in all)" if len(keys) > limit else "")


def _state_mismatch(expected: Dict[str, torch.Tensor], found: Dict[str, Any]) -> str:
    """What differs between a model's state dict and a file's, in words (empty if they fit)."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    shapes = [f"{key} {tuple(found[key].shape)} instead of {tuple(value.shape)}" for key, value in expected.items()
              if isinstance(found.get(key), torch.Tensor) and found[key].shape != value.shape]
    parts = [f"missing {_shown(missing)}" if missing else "", f"unexpected {_shown(unexpected)}" if unexpected else "",
             f"shapes {_shown(shapes)}" if shapes else ""]
    return "; ".join(part for part in parts if part)


def model_from_state(record: Dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild a model from :func:`model_state`'s record (no download: ``pretrained=False``).

    Raises:
        ValueError: the record is not a complete tscam-explain model record, names an architecture this
            version does not know, or holds weights that do not fit the model its config describes.
    """
    if not isinstance(record, dict) or record.get("format") != MODEL_FILE_FORMAT:
        raise ValueError(f"{source} is not a tscam-explain model file (expected format {MODEL_FILE_FORMAT!r})")
    absent = [key for key in ("arch", "config", "state_dict") if not isinstance(record.get(key), (str, dict))]
    if absent:
        raise ValueError(f"{source} is a tscam-explain model file without a valid {absent} (found keys "
                         f"{sorted(record)}); expected format, arch, config and state_dict, as save_model writes")
    arch = record["arch"]
    if arch not in _ARCHITECTURES:
        raise ValueError(f"{source} holds a model of architecture {arch!r}, which this tscam-explain does not know; "
                         f"expected one of {list_architectures()}")
    config = dict(record["config"], pretrained=False)
    try:
        model = create_model(arch, **config)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{source}: its config {record['config']} does not build a {arch!r} model ({error}); "
                         "expected the factory arguments save_model stored") from None
    mismatch = _state_mismatch(model.state_dict(), record["state_dict"])
    if mismatch:
        raise ValueError(f"{source}: its weights do not fit the {arch!r} model its config describes ({mismatch}); "
                         "expected the state dict save_model stored with that config (a file of another "
                         "architecture, or edited?)")
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
