"""Timing that measures work, not kernel launches: synchronise the device before every clock read.

One implementation, used by training (train-time figures) and by the benchmarks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

Clock = Callable[[], float]


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU, where calls are synchronous)."""
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Timer:
    """Accumulating stopwatch; every ``start``/``stop`` synchronises ``device`` first."""

    def __init__(self, device: torch.device | str | None = None,
                 clock: Clock = time.perf_counter,
                 sync: Callable[[Any], None] = synchronize) -> None:
        self.device = device
        self.clock = clock
        self.sync = sync
        self.total = 0.0
        self.laps: list[float] = []
        self._started: float | None = None

    def start(self) -> Timer:
        self.sync(self.device)
        self._started = self.clock()
        return self

    def stop(self) -> float:
        if self._started is None:
            raise RuntimeError("Timer.stop() called before start()")
        self.sync(self.device)
        lap = self.clock() - self._started
        self._started = None
        self.laps.append(lap)
        self.total += lap
        return lap

    def __enter__(self) -> Timer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LatencyStats:
    """Per-call seconds over the timed iterations (warmup excluded)."""

    median: float
    mean: float
    std: float
    iqr: float
    min: float
    max: float
    iters: int
    warmup: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def latency_stats(times: list[float], warmup: int) -> LatencyStats:
    if not times:
        raise ValueError("no timed iterations")
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return LatencyStats(
        median=statistics.median(times), mean=statistics.fmean(times),
        std=statistics.pstdev(times), iqr=quartiles[2] - quartiles[0],
        min=min(times), max=max(times), iters=len(times), warmup=warmup,
    )


def measure_latency(fn: Callable[[], Any], device: torch.device | str | None = "cpu",
                    warmup: int = 10, iters: int = 100, *, clock: Clock = time.perf_counter,
                    sync: Callable[[Any], None] = synchronize) -> LatencyStats:
    """Run ``fn`` ``warmup`` times untimed, then ``iters`` timed calls, each bracketed by a
    device synchronisation so queued asynchronous work is counted."""
    if warmup < 0 or iters < 1:
        raise ValueError("warmup must be >= 0 and iters >= 1")
    for _ in range(warmup):
        fn()
    timer = Timer(device, clock=clock, sync=sync)
    for _ in range(iters):
        with timer:
            fn()
    return latency_stats(timer.laps, warmup)


def synchronized(fn: Callable[[], Any], device: torch.device | str | None, *,
                 inference: bool = False,
                 sync: Callable[[Any], None] = synchronize) -> Callable[[], Any]:
    """Wrap ``fn`` for an external timer (pytest-benchmark): run it under
    ``torch.inference_mode()`` when ``inference``, and synchronise ``device`` before returning,
    so the timer that brackets the call sees the device work finish."""

    def call() -> Any:
        if inference:
            with torch.inference_mode():
                out = fn()
        else:
            out = fn()
        sync(device)
        return out

    return call
