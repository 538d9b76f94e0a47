"""Peak memory of one call, in-process: what an explainer adds over the memory already in use.

CUDA: torch's allocator statistics (``max_memory_allocated`` after ``reset_peak_memory_stats``).
CPU (Linux): the process's peak resident set (``VmHWM``), reset before the call through
``/proc/self/clear_refs``, minus the resident set just before it. glibc keeps freed blocks and grows
its mmap threshold dynamically, which made such readings jump by ±15 % between identical calls; a
fixed threshold (``mallopt``) returns every freed tensor to the system at once, so the resident set
follows the live tensors. Elsewhere peak memory is not measured (``None``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Callable, Optional

import torch

__all__ = ["peak_memory_mib", "fix_malloc_threshold"]

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_FIXED_THRESHOLD = 64 * 1024


def fix_malloc_threshold() -> bool:
    """Fix glibc's mmap threshold at 64 KiB for this process (see the module docstring).

    Returns:
        whether it was set (Linux with glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _FIXED_THRESHOLD))
    except (OSError, AttributeError):
        return False


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as stream:
        line = next(line for line in stream if line.startswith(field + ":"))
    return int(line.split()[1])


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")  # Linux >= 4.0: reset VmHWM to the current resident set
        return True
    except OSError:
        return False


def peak_memory_mib(call: Callable[[], object], device: torch.device) -> Optional[float]:
    """Run ``call()`` once; return its peak memory above what was in use before it, in MiB.

    Args:
        call: the work to measure.
        device: where it runs (CUDA devices use the allocator's statistics).

    Returns:
        MiB, or ``None`` where it cannot be measured (not Linux, or ``/proc`` not writable).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    if not sys.platform.startswith("linux"):
        call()
        return None
    before = _status_kib("VmRSS")
    if not _reset_peak_rss():
        call()
        return None
    call()
    return (_status_kib("VmHWM") - before) / 1024
