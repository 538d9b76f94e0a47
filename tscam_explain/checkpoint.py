"""Atomic, weights-only checkpoint files: the one place that writes and reads ``.pt`` files."""
from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
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


#: how every torch.save file since PyTorch 1.6 starts: a zip archive's first local header
_ZIP_SIGNATURE = b"PK\x03\x04"
#: how torch.save's legacy format (``_use_new_zipfile_serialization=False``) starts: its pickled magic number
_LEGACY_SIGNATURE = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1]
_EXPECTED = "expected a complete file written by torch.save (save_model, or a trainer checkpoint)"


def _check_archive(path: Path, size: int) -> None:
    """Refuse a torch.save zip archive that is truncated or whose data fails its CRC-32.

    torch.load does not verify the checksums torch.save writes, so a file damaged on disk or in a copy
    would load with wrong weights and no error; this reads the file once more (about 1 s per GB).
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"cannot read checkpoint {path}: it is truncated or damaged: it starts as a torch.save "
                         f"zip archive but its end (the zip directory) is missing in its {size} bytes; "
                         f"{_EXPECTED} (an interrupted download or copy?)") from None
    with archive:
        for info in archive.infolist():
            if info.CRC == 0:  # written with torch's CRC-32 turned off (serialization config compute_crc32)
                continue
            try:
                with archive.open(info) as stream:
                    while stream.read(1 << 24):
                        pass
            except (zipfile.BadZipFile, OSError, EOFError) as error:
                raise ValueError(f"cannot read checkpoint {path}: it is corrupt: entry {info.filename} does not "
                                 f"match the CRC-32 checksum torch.save wrote ({error}); {_EXPECTED}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    # torch's weights_only refusal is several paragraphs; the line that says what it met is the useful one
    found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    return found.group(1) if found else (text.splitlines() or [""])[0]


def load_file(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary pickles), with a clear error if missing.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty, truncated, corrupt (a CRC-32 mismatch), not written by ``torch.save``,
            or holds objects that ``weights_only=True`` refuses; the message names the file, what was found
            and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes); {_EXPECTED}")
    with open(path, "rb") as stream:
        head = stream.read(len(_LEGACY_SIGNATURE))
    is_zip = head.startswith(_ZIP_SIGNATURE)
    if not (is_zip or head == _LEGACY_SIGNATURE):  # never unpickle what torch.save did not write
        raise ValueError(f"cannot read checkpoint {path}: it is not a torch.save file: it starts with {head!r}, "
                         f"neither a zip archive (torch.save's format) nor torch's legacy format; {_EXPECTED}")
    if is_zip:
        _check_archive(path, size)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only load failed" in str(error).lower():
            raise ValueError(f"cannot read checkpoint {path}: torch.load(weights_only=True) refused it "
                             f"({_first_line(error)}): it holds objects other than tensors and plain Python "
                             "types, and loading those could run arbitrary code; expected a file of tensors and "
                             "plain types (save_model writes one)") from None
        raise _unreadable(path, is_zip, error) from None
    except Exception as error:  # a damaged file can fail anywhere in the unpickler
        raise _unreadable(path, is_zip, error) from None


def _unreadable(path: Path, is_zip: bool, error: BaseException) -> ValueError:
    found = "torch's legacy (before PyTorch 1.6) format, unreadable: truncated or damaged?"
    if is_zip:
        with zipfile.ZipFile(path) as archive:
            found = f"a zip archive holding {archive.namelist()[:4]}"
    return ValueError(f"cannot read checkpoint {path} ({type(error).__name__}: {_first_line(error)}); "
                      f"found {found}; {_EXPECTED}")
