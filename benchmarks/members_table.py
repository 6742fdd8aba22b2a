"""The batched-members table of docs/results.md: 20 seeds as standalone fits against the same
seeds as batched runs (auto member count, then 20), two interleaved blocks, median ratio.

    python3 -m benchmarks.members_table THREADS MODEL [MODEL ...]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from gnn.config import load_config
from gnn.data import load_dataset
from gnn.members import fit_many, resolve_members
from gnn.memory import keep_freed_memory
from gnn.training import fit


def main(threads: int, names: list[str]) -> None:
    keep_freed_memory()  # as the gnn command does
    torch.set_num_threads(threads)
    data = load_dataset(load_config("configs/gcn.yaml").data)
    for name in names:
        cfg = load_config(f"configs/{name}.yaml")
        seeds = list(range(20))
        for members in (resolve_members("auto", 20, cfg, data), 20):
            fit_many(cfg.override({"train.epochs": 3}), seeds[:4], data,
                     members=min(members, 4))
            alone, batched = [], []
            for _ in range(2):
                started = time.perf_counter()
                ref = [fit(cfg.override({"train.seed": s}), data) for s in seeds]
                alone.append(time.perf_counter() - started)
                started = time.perf_counter()
                res = fit_many(cfg, seeds, data, members=members)
                batched.append(time.perf_counter() - started)
            ratio = statistics.median(a / b for a, b in zip(alone, batched, strict=True))
            print(f"{name} threads={threads} members={members}: 20 fits alone "
                  f"{statistics.median(alone):.2f} s, batched {statistics.median(batched):.2f} s,"
                  f" ratio {ratio:.2f}x; mean test acc alone "
                  f"{statistics.fmean(r.test_acc for r in ref):.4f}, batched "
                  f"{statistics.fmean(r.test_acc for r in res):.4f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
