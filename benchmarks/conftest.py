"""pytest-benchmark fixtures: device parametrisation, warmup, synchronised timing, extra_info.

Every benchmarked callable goes through :func:`gnn.timing.synchronized`: warmup rounds run
untimed (pytest-benchmark's ``warmup_rounds``), inference runs under ``torch.inference_mode()``,
and the device is synchronised at the end of each timed call.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch_geometric

from gnn.timing import synchronized


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gnn benchmarks")
    group.addoption("--quick", action="store_true",
                    help="few rounds per benchmark (CI): ratios still gate, times are recorded")
    group.addoption("--inject-slowdown", type=float, default=0.0, metavar="SECONDS",
                    help="sleep this long inside every benchmarked call (to demonstrate "
                         "--benchmark-compare-fail)")


def bench_threads() -> int:
    return int(os.environ.get("GNN_BENCH_THREADS", os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def fixed_threads() -> int:
    threads = bench_threads()
    torch.set_num_threads(threads)
    return threads


@pytest.fixture(scope="session")
def data_root() -> Path:
    """Benchmarks never skip for missing data: a time for work that did not happen is worse."""
    env = os.environ.get("GNN_DATA_ROOT")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not any(root.glob("**/ind.cora.x")):
        pytest.fail(f"Cora raw files not found under {root}: set GNN_DATA_ROOT")
    return root


@pytest.fixture(scope="session")
def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--quick"))


class Bench:
    """Callable wrapper around pytest-benchmark's ``pedantic`` mode."""

    def __init__(self, benchmark: Any, quick: bool, slowdown: float, threads: int) -> None:
        self.benchmark = benchmark
        self.quick = quick
        self.slowdown = slowdown
        self.threads = threads

    def __call__(self, fn: Callable[[], Any], *, device: torch.device, group: str,
                 inference: bool = False, rounds: int = 30, warmup: int = 5,
                 **extra: Any) -> Any:
        target = synchronized(fn, device, inference=inference)
        if self.slowdown:
            inner = target

            def target() -> Any:
                time.sleep(self.slowdown)
                return inner()

        self.benchmark.group = group
        self.benchmark.extra_info.update({
            "device": str(device), "threads": self.threads, "torch": torch.__version__,
            "torch_geometric": torch_geometric.__version__,
            "python": platform.python_version(), "warmup_rounds": warmup,
            "inference_mode": inference, **extra,
        })
        if self.quick:
            rounds, warmup = max(3, rounds // 10), max(1, warmup // 5)
        return self.benchmark.pedantic(target, rounds=rounds, warmup_rounds=warmup,
                                       iterations=1)


@pytest.fixture
def bench(benchmark: Any, quick: bool, request: pytest.FixtureRequest,
          fixed_threads: int) -> Bench:
    return Bench(benchmark, quick, request.config.getoption("--inject-slowdown"), fixed_threads)
