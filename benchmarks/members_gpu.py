"""The GPU rows of the batched-members tables in docs/results.md (needs CUDA).

    python3 -m benchmarks.members_gpu [--quick] [MODEL ...]

1. One training step of 100 GCN members three ways: the device-side step launched eagerly,
   the same step replayed from a CUDA graph, and ``torch.compile(mode="reduce-overhead")``
   of the step (CUDA graphs made by the compiler); median per-step times.
2. Wall time of one standalone fit against one batched run of 100 members (200 epochs,
   validation every epoch), and 20 sequential fits against 20 members, per model.
3. 2,000 GCN fits (2,000 seeds, 200 epochs each) as batched runs of the ``auto`` size.
"""

from __future__ import annotations

import statistics
import sys
import time
import traceback
from collections.abc import Callable

import torch

from gnn.config import load_config
from gnn.data import load_dataset
from gnn.members import (
    DeviceSteps,
    MemberBatch,
    MemberMasks,
    _initial_members,
    capture_steps,
    fit_many,
    fit_members,
    resolve_members,
)
from gnn.training import fit


def _wall(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _per_step(step: Callable[[], object], steps: int = 200) -> float:
    for _ in range(3):
        step()
    return _wall(lambda: [step() for _ in range(steps)]) / steps


def step_table(data, members: int = 100, compile_too: bool = True) -> None:
    # room in the step logs for every step timed here (warm-ups and three rounds of 200)
    cfg = load_config("configs/gcn.yaml").override({"train.device": "cuda",
                                                    "train.epochs": 10_000})
    device = torch.device("cuda")

    def fresh() -> DeviceSteps:
        model = _initial_members(cfg, data, list(range(members))).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4, fused=True,
                               capturable=True)
        batch = MemberBatch.build(cfg, data, MemberMasks.shared(data, members), device)
        return DeviceSteps(cfg, model, opt, batch)

    eager = _per_step(fresh().train_step)
    train, _ = capture_steps(fresh())
    graphed = _per_step(train)
    print(f"GCN step, {members} members: eager {eager * 1e6:.0f} us, CUDA graph "
          f"{graphed * 1e6:.0f} us ({eager / graphed:.1f}x)", flush=True)
    if not compile_too:
        return
    try:
        steps = fresh()
        compiled = torch.compile(steps.train_step, mode="reduce-overhead")
        started = time.perf_counter()
        compiled()
        torch.cuda.synchronize()
        first = time.perf_counter() - started
        print(f"  torch.compile(reduce-overhead): first call {first:.1f} s, step "
              f"{_per_step(compiled) * 1e6:.0f} us", flush=True)
    except Exception as exc:  # a measurement: say why it did not run, go on
        line = traceback.format_exception_only(exc)[-1].strip()
        print(f"  torch.compile(reduce-overhead) failed: {line[:300]}", flush=True)


def fit_table(data, names: list[str], quick: bool) -> None:
    """With ``quick``: the 100-member run with CSR and with dense features against one fit
    (no eager-step run, no sequential fits)."""
    for name in names:
        cfg = load_config(f"configs/{name}.yaml").override({"train.device": "cuda"})
        fit_members(cfg.override({"train.epochs": 3}), [0, 1], data)  # warm-up
        fit(cfg.override({"train.epochs": 3}), data)
        one = _wall(lambda cfg=cfg: fit(cfg, data))
        hundred = _wall(lambda cfg=cfg: fit_members(cfg, list(range(100)), data))
        if quick:
            dense = _wall(lambda cfg=cfg: fit_members(
                cfg.override({"data.sparse_features": "never"}), list(range(100)), data))
            print(f"{name}: one fit {one:.2f} s; 100 members {hundred:.2f} s "
                  f"({hundred / one:.2f}x one fit); with dense features {dense:.2f} s",
                  flush=True)
            continue
        eager = _wall(lambda cfg=cfg: fit_members(cfg.override({"train.cuda_graph": False}),
                                                  list(range(100)), data), repeat=1)
        seq20 = _wall(lambda cfg=cfg: [fit(cfg.override({"train.seed": s}), data)
                                       for s in range(20)], repeat=1)
        bat20 = _wall(lambda cfg=cfg: fit_members(cfg, list(range(20)), data))
        print(f"{name}: one fit {one:.2f} s; 100 members {hundred:.2f} s "
              f"({hundred / one:.2f}x one fit; eager steps {eager:.2f} s); 20 sequential "
              f"{seq20:.2f} s vs 20 members {bat20:.2f} s ({seq20 / bat20:.1f}x)", flush=True)


def protocol(data) -> None:
    cfg = load_config("configs/gcn.yaml").override({"train.device": "cuda"})
    seeds = list(range(2000))
    members = resolve_members("auto", len(seeds), cfg, data)
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    results = fit_many(cfg, seeds, data, members=members)
    wall = time.perf_counter() - started
    accs = torch.tensor([r.test_acc for r in results])
    print(f"2000 GCN fits in runs of {members}: {wall:.1f} s, test acc "
          f"{accs.mean():.4f} ± {accs.std():.4f}, peak GPU memory "
          f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)


def main(args: list[str]) -> None:
    quick = "--quick" in args
    names = [a for a in args if a != "--quick"] or ["gcn", "mlp", "sage", "appnp"]
    data = load_dataset(load_config("configs/gcn.yaml").data).to("cuda")
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    step_table(data, compile_too=not quick)
    protocol(data)
    fit_table(data, names, quick)


if __name__ == "__main__":
    main(sys.argv[1:])
