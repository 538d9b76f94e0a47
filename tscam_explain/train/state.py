"""Training checkpoints: everything needed to continue a run exactly, in a weights-only file.

A checkpoint holds the model record (:func:`~tscam_explain.models.model_state`: arch, config,
weights), optimizer, scheduler and grad-scaler states, every rank's RNG states (python, numpy,
torch CPU, CUDA) and the sampler position (epoch and batches consumed in it). Only tensors and
plain Python types are stored, so :func:`~tscam_explain.checkpoint.load_file` reads it with
``weights_only=True``; files are written with :func:`~tscam_explain.checkpoint.atomic_save`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np
import torch

from ..checkpoint import PathLike, atomic_save, load_file

__all__ = ["TRAIN_FILE_FORMAT", "Position", "capture_rng", "restore_rng", "save_checkpoint", "load_checkpoint"]

TRAIN_FILE_FORMAT = "tscam-explain/train/v1"


@dataclass(frozen=True)
class Position:
    """Where a run is: ``batches`` of ``epoch`` (0-based) consumed, ``step`` optimizer steps in all.

    Args:
        epoch: the epoch in progress (0-based).
        batches: per-rank micro-batches of that epoch already consumed.
        step: optimizer steps taken since the start of the run.
    """

    epoch: int
    batches: int
    step: int

    def as_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "batches": self.batches, "step": self.step}


def capture_rng() -> Dict[str, Any]:
    """This process's RNG states as tensors and plain types (weights-only loadable)."""
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        # only touch CUDA when this process already uses it: reading the state would initialise it
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def restore_rng(state: Dict[str, Any]) -> None:
    """Restore what :func:`capture_rng` captured."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        if not torch.cuda.is_available():
            raise RuntimeError("the checkpoint holds CUDA RNG states but CUDA is not available here; "
                               "resume on a machine with the same kind of device")
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: PathLike, record: Dict[str, Any]) -> None:
    """Write a training checkpoint ``record`` atomically, tagged ``train_format``.

    The tag is not called ``format``: :func:`~tscam_explain.models.load_model` reads a file with a
    ``model`` record and no top-level ``format`` as a training checkpoint, so ``load_model(last.pt)``
    works.
    """
    atomic_save({"train_format": TRAIN_FILE_FORMAT, **record}, path)


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``; clear error if ``path`` is something else."""
    record = load_file(path, map_location="cpu")
    if not isinstance(record, dict) or record.get("train_format") != TRAIN_FILE_FORMAT:
        found = record.get("train_format", record.get("format")) if isinstance(record, dict) else type(record).__name__
        raise ValueError(
            f"{path} is not a tscam-explain training checkpoint (format {found!r}, expected "
            f"{TRAIN_FILE_FORMAT!r}); --resume takes the last.pt a training run wrote"
        )
    return record


def rng_for_rank(states: List[Dict[str, Any]], rank: int, world_size: int) -> Dict[str, Any]:
    """This rank's RNG state from a checkpoint's per-rank list; clear error if the run's size changed."""
    if len(states) != world_size:
        raise ValueError(
            f"the checkpoint was written by a run of {len(states)} process(es), this run has {world_size}; "
            "an exact resume needs the same number of processes"
        )
    return states[rank]
