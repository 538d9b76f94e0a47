"""Atomic, weights-only checkpoint files: the one place that writes and reads ``.pt`` files."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

PathLike = Union[str, os.PathLike]


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates 0600 files; give the checkpoint the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_file(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary pickles), with a clear error if missing.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty, truncated, not written by ``torch.save``, or holds objects that
            ``weights_only=True`` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes); expected a file written by torch.save")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, KeyError, RuntimeError, pickle.UnpicklingError) as error:
        raise ValueError(f"cannot read checkpoint {path} ({type(error).__name__}: {error}); expected a complete "
                         "torch.save file of tensors and plain Python types (truncated, or another format?)") from None
