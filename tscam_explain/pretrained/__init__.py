"""Models shipped inside the package, by name: tiny ViTs trained on the generated benchmark.

``load_pretrained("tscam-synth")`` gives a ready TS-CAM model, ``"trt-synth"`` a TRT model (both
stages trained) and ``"vit-synth"`` a plain timm ViT classifier (for pytorch-grad-cam's methods and
TS-CAM's training-free mode). Each ``<name>.pt`` holds the model record of
:func:`~tscam_explain.models.save_model` with float16 weights (loaded with ``weights_only=True`` and
cast back to float32); ``<name>.json`` beside it is the model card: the recipe, the training data
and its seed, the exact commands, the training device and time, and the metrics measured on a held-out
generated test set (a seed never used in training), next to those of the same architecture at random
init. ``docs/synth.md`` says how they were made.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Union

import torch
import torch.nn as nn

from ..checkpoint import PathLike, atomic_save, load_file
from ..models import load_model, model_from_state, model_state

__all__ = ["list_pretrained", "load_pretrained", "model_card", "open_model", "save_pretrained", "PRETRAINED_DIR"]

#: where the shipped files live (inside the installed package)
PRETRAINED_DIR = Path(__file__).resolve().parent


def list_pretrained() -> List[str]:
    """Names :func:`load_pretrained` accepts."""
    return sorted(path.stem for path in PRETRAINED_DIR.glob("*.pt"))


def _path(name: str, suffix: str) -> Path:
    if name not in list_pretrained():
        raise ValueError(f"unknown pretrained model {name!r}; shipped: {list_pretrained()}")
    return PRETRAINED_DIR / f"{name}{suffix}"


def model_card(name: str) -> Dict[str, Any]:
    """The model card of a shipped model (recipe, data, commands, metrics)."""
    return json.loads(_path(name, ".json").read_text(encoding="utf-8"))


def load_pretrained(name: str, map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """A shipped model by name, in eval mode, with float32 weights.

    Args:
        name: one of :func:`list_pretrained` (``tscam-synth``, ``trt-synth``, ``vit-synth``).
        map_location: device to load the weights on.
    """
    path = _path(name, ".pt")
    record = load_file(path, map_location=map_location)
    record = {**record, "state_dict": {key: value.float() if value.is_floating_point() else value
                                       for key, value in record["state_dict"].items()}}
    return model_from_state(record, source=str(path)).eval()


def save_pretrained(model: nn.Module, card: Dict[str, Any], directory: PathLike, name: str) -> Path:
    """Write ``<name>.pt`` (float16 weights) and ``<name>.json`` (the card) into ``directory``, atomically.

    Args:
        model: a tscam-explain model (``tscam``, ``trt`` or ``vit`` architecture).
        card: the model card (JSON-serialisable).
        directory: where to write (the package's folder to ship it).
        name: the name :func:`load_pretrained` will take.
    """
    record = model_state(model)
    record["state_dict"] = {key: value.half() if value.is_floating_point() else value
                            for key, value in record["state_dict"].items()}
    path = atomic_save(record, Path(directory) / f"{name}.pt")
    card_path = Path(directory) / f"{name}.json"
    tmp = card_path.with_name(f".{card_path.name}.tmp")
    tmp.write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    tmp.replace(card_path)
    return path


def open_model(spec: Union[str, PathLike], map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """A shipped model by name (:func:`list_pretrained`) or a tscam-explain model file by path.

    Args:
        spec: ``tscam-synth`` … or the path of a file written by ``save_model`` / the trainer.
        map_location: device to load the weights on.
    """
    if isinstance(spec, str) and spec in list_pretrained():
        return load_pretrained(spec, map_location)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{spec!r} is neither a shipped model ({', '.join(list_pretrained()) or 'none'}) "
                                "nor an existing model file")
    return load_model(path, map_location).eval()
