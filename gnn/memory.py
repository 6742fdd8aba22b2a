"""Peak memory of a block of work: what a user needs to know whether a model fits a machine.

On a GPU it is the CUDA allocator's maximum allocated bytes above the level at the start. On
CPU it is the growth of the process's resident set (RSS): on Linux the kernel's high-water mark
(``VmHWM``), reset at the start through ``/proc/self/clear_refs``, so the true peak is read
without polling; elsewhere the RSS at the end minus the RSS at the start (a lower bound). Memory
that earlier work freed is handed back to the OS first (``malloc_trim``), so a run is not
credited with pages a previous run left resident.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import re
from pathlib import Path

import psutil
import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
MIB = 1024 * 1024


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc only; a no-op elsewhere)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS; False where unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return _rss_peak() is not None
    except OSError:
        return False


def _rss_peak() -> int | None:
    try:
        match = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


class PeakMemory:
    """Context manager; after the block, ``peak_bytes`` and ``measure`` (what was measured)."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.measure = ""
        self._start = 0
        self._kernel_peak = False

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.measure = "cuda_max_allocated"
            return self
        _trim_heap()
        self._kernel_peak = _reset_rss_peak()
        self._start = psutil.Process().memory_info().rss
        self.measure = "rss_peak_growth" if self._kernel_peak else "rss_growth"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            end = torch.cuda.max_memory_allocated(self.device)
        else:
            end = (_rss_peak() if self._kernel_peak else None) or psutil.Process().memory_info().rss
        self.peak_bytes = max(end - self._start, 0)

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / MIB
