"""The timing methodology: warmup untimed, then device-synchronised timed calls."""

from __future__ import annotations

import pytest
import torch

from gnn.timing import Timer, latency_stats, measure_latency, synchronize, synchronized


class Recorder:
    """A fake device and clock that log every call in order."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.now = 0.0

    def fn(self) -> None:
        self.log.append("fn")
        self.now += 1.0

    def sync(self, device: object) -> None:
        self.log.append(f"sync:{device}")

    def clock(self) -> float:
        self.log.append("clock")
        return self.now


def test_measure_latency_call_order() -> None:
    rec = Recorder()
    stats = measure_latency(rec.fn, "cuda:7", warmup=2, iters=3, clock=rec.clock, sync=rec.sync)
    timed = ["sync:cuda:7", "clock", "fn", "sync:cuda:7", "clock"]
    assert rec.log == ["fn", "fn"] + timed * 3
    assert stats.iters == 3 and stats.warmup == 2
    assert stats.median == 1.0 and stats.min == 1.0 and stats.max == 1.0


def test_synchronized_wrapper_syncs_after_call_and_uses_inference_mode() -> None:
    rec = Recorder()
    seen = []

    def fn() -> int:
        seen.append(torch.is_inference_mode_enabled())
        rec.log.append("fn")
        return 42

    call = synchronized(fn, "cuda:0", inference=True, sync=rec.sync)
    assert call() == 42
    assert rec.log == ["fn", "sync:cuda:0"] and seen == [True]
    synchronized(fn, "cpu", inference=False, sync=rec.sync)()
    assert seen == [True, False]


def test_timer_accumulates_and_syncs() -> None:
    rec = Recorder()
    timer = Timer("cuda", clock=rec.clock, sync=rec.sync)
    for _ in range(2):
        with timer:
            rec.fn()
    assert timer.total == 2.0 and timer.laps == [1.0, 1.0]
    assert rec.log[:4] == ["sync:cuda", "clock", "fn", "sync:cuda"]
    with pytest.raises(RuntimeError):
        Timer().stop()


def test_latency_stats() -> None:
    stats = latency_stats([1.0, 2.0, 3.0, 4.0, 100.0], warmup=0)
    assert stats.median == 3.0 and stats.min == 1.0 and stats.max == 100.0
    assert stats.iqr > 0


def test_synchronize_cpu_is_noop() -> None:
    synchronize("cpu")
    synchronize(None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_synchronize_cuda_waits() -> None:
    a = torch.randn(2048, 2048, device="cuda")
    stats = measure_latency(lambda: a @ a, "cuda", warmup=2, iters=5)
    assert stats.median > 0
