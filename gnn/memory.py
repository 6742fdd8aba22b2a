"""Peak memory of a stretch of work, as the machine sees it.

``tracemalloc`` misses torch's C++ allocations, and torch keeps no allocator statistics on CPU,
so on CPU the measure is the resident set size (RSS): on Linux the kernel's own high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs``), which sees every page however briefly it
was used; elsewhere a thread polls RSS every millisecond (a lower bound). On CUDA it is the
caching allocator's ``max_memory_allocated``. Windows nest: resetting the peak for an inner
window (one mini-batch) first folds the peak so far into every open outer window (the whole run).

Before a CPU window opens, ``malloc_trim`` hands freed heap pages back to the OS, so memory a
previous step freed but glibc kept cannot hide the window's own allocations.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _libc_function(name: str) -> Any:
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _libc_function("malloc_trim")
_MALLOPT = _libc_function("mallopt")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def trim_heap() -> None:
    """Return freed heap memory to the OS (glibc only; a no-op elsewhere)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for reuse instead of handing it back to the OS (a process
    setting, made by the ``gnn`` command). A batched training step frees and allocates tensors
    of megabytes every epoch; with glibc's defaults much of that memory went back and was
    faulted in again: 1.7 million page faults and 15% of the wall time of a 20-member APPNP
    run on the 2-core development machine. :func:`trim_heap` still returns it before a
    memory window opens. Other C libraries are left as they are."""
    if _MALLOPT is not None:
        _MALLOPT(_M_TRIM_THRESHOLD, 1 << 30)  # keep up to 1 GiB free at the heap's top
        _MALLOPT(_M_MMAP_THRESHOLD, 1 << 25)  # the largest glibc accepts, 32 MiB


def rss() -> int:
    """Resident set size of this process, in bytes."""
    return psutil.Process().memory_info().rss


def free_memory(device: torch.device | str) -> int:
    """Bytes that can still be allocated on ``device``: the GPU's free memory, or the memory
    the OS reports available (free plus reclaimable caches) for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(psutil.virtual_memory().available)


class Probe:
    """Current level, peak since the last reset, and reset, for one kind of memory."""

    name = "?"

    def current(self) -> int:
        raise NotImplementedError

    def peak(self) -> int:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class KernelRSS(Probe):
    """Linux: ``VmHWM`` is exact and costs two small reads of ``/proc``."""

    name = "rss (kernel high-water mark)"

    @staticmethod
    def available() -> bool:
        try:
            with open(_CLEAR_REFS, "w") as handle:
                handle.write("5")
            return "VmHWM" in _STATUS.read_text()
        except OSError:
            return False

    def current(self) -> int:
        return rss()

    def peak(self) -> int:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmHWM missing from /proc/self/status")

    def reset(self) -> None:
        trim_heap()
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")


class PolledRSS(Probe):
    """Anywhere: a daemon thread samples RSS every ``interval`` seconds (may miss short peaks)."""

    name = "rss (polled)"

    def __init__(self, interval: float = 1e-3) -> None:
        self.interval = interval
        self._max = rss()
        self._lock = threading.Lock()
        thread = threading.Thread(target=self._poll, daemon=True, name="gnn-rss-poll")
        thread.start()

    def _poll(self) -> None:
        process = psutil.Process()
        while True:
            value = process.memory_info().rss
            with self._lock:
                self._max = max(self._max, value)
            time.sleep(self.interval)

    def current(self) -> int:
        return rss()

    def peak(self) -> int:
        value = rss()
        with self._lock:
            self._max = max(self._max, value)
            return self._max

    def reset(self) -> None:
        trim_heap()
        with self._lock:
            self._max = rss()


class CudaAllocated(Probe):
    name = "cuda max_memory_allocated"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def current(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def reset(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)


_PROBES: dict[str, Probe] = {}


def probe_for(device: torch.device | str, polled: bool = False) -> Probe:
    """One shared probe per kind (windows on the same probe must know about each other)."""
    device = torch.device(device)
    if device.type == "cuda":
        key = str(device)
        if key not in _PROBES:
            _PROBES[key] = CudaAllocated(device)
        return _PROBES[key]
    key = "polled" if polled or not KernelRSS.available() else "kernel"
    if key not in _PROBES:
        _PROBES[key] = PolledRSS() if key == "polled" else KernelRSS()
    return _PROBES[key]


class PeakWindow:
    """Peak memory above the level at ``start``, up to ``stop`` (bytes in ``.peak``)."""

    _open: dict[int, list[PeakWindow]] = {}

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.base = 0
        self.high = 0
        self.peak = 0

    def _fold(self) -> None:
        high = self.probe.peak()
        for window in self._open.get(id(self.probe), []):
            window.high = max(window.high, high)

    def start(self) -> PeakWindow:
        self._fold()
        self.probe.reset()
        self.base = self.high = self.probe.current()
        self._open.setdefault(id(self.probe), []).append(self)
        return self

    def stop(self) -> int:
        self._fold()
        with contextlib.suppress(ValueError):
            self._open[id(self.probe)].remove(self)
        self.peak = max(self.high - self.base, 0)
        return self.peak

    def __enter__(self) -> PeakWindow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StepPeaks:
    """Peak memory of every training step of a run: each step is its own
    :class:`PeakWindow`, so a whole-run window around them still sees the overall peak.

    A full-batch epoch is one step (:meth:`step`); a sampled epoch has one step per
    mini-batch, from fetching it (sampling included) to the request for the next one, after
    the optimiser step (:meth:`batches`)."""

    def __init__(self, device: torch.device | str) -> None:
        self.probe = probe_for(device)
        self.peaks: list[int] = []

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        with PeakWindow(self.probe) as window:
            yield
        self.peaks.append(window.peak)

    def batches(self, loader: Iterable[Any]) -> Iterator[Any]:
        """Iterate ``loader`` with one window per batch."""
        batches = iter(loader)
        while True:
            window = PeakWindow(self.probe).start()
            try:
                batch = next(batches)
            except StopIteration:
                window.stop()
                return
            yield batch
            self.peaks.append(window.stop())
