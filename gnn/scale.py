"""``gnn scale``: the measured cost curve of full-batch and neighbour-sampled training.

For each graph size a CSBM graph is generated once (:mod:`gnn.synthetic`) and every model is
trained on it with :func:`gnn.training.fit` for a fixed number of epochs. Recorded per model and
size: median time per training epoch, peak memory per training step (one mini-batch for a
sampled model, the whole graph for a full-batch one) and over the whole run (training and the
full-graph evaluations), and accuracy. Before anything is allocated, the memory a model will need
is predicted from N, E, feature, hidden and class sizes; a model whose prediction exceeds the
budget is skipped and reported "over budget", so the machine is never pushed into swapping or the
OOM killer. :func:`sweep` yields one :class:`ScaleRow` at a time; the command line writes the
report (:mod:`gnn.report`, :mod:`gnn.plots`) after each.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Data

from gnn.config import Config, load_config, shipped_configs_dir, shipped_models
from gnn.data import load_dataset
from gnn.errors import ConfigError
from gnn.memory import PeakWindow, StepPeaks, trim_heap
from gnn.synthetic import csbm_bytes, num_pairs
from gnn.training import check_config, fit

GIB = 1024**3
#: Allocations of any run whatever its size (optimiser, autograd bookkeeping, allocator slack):
#: the measured peak of the smallest graphs.
RUN_OVERHEAD = 32 * 1024**2
#: A sampled model's batch size here, whatever its config says, so that per-batch memory
#: compares across graph sizes (five full mini-batches per epoch with :data:`SCALE_DATA`).
SCALE_BATCH_SIZE = 256
MAX_SIZE = 2**31 - 1

#: Split used unless ``--config`` gives a data section: 256 training nodes per class make
#: five full mini-batches of 256 per epoch for the sampled model.
SCALE_DATA: dict[str, Any] = {"data.train_per_class": 256, "data.num_val": 1000,
                              "data.num_test": 1000}


# --------------------------------------------------------------------------------------------
# Memory prediction (bytes), from sizes only


def predict_bytes(cfg: Config, num_nodes: int, num_edges: int, num_features: int,
                  num_classes: int) -> int:
    """Peak memory a training run allocates beyond the graph itself (which
    :func:`gnn.synthetic.csbm_bytes` gives), comparable with the measured run peak.

    Counted for float32 values and int64 indices, with coefficients checked against the
    measured peaks that ``gnn scale`` prints beside the prediction:

    * full-batch GCN/GraphSAGE: the cached CSR operator and its transpose
      (``24 (E + N) + 16 N`` bytes) and, while it is built, the edge list copied with self-loops,
      sorted and coalesced (about ``100 (E + N)`` bytes at the peak); activations and their
      gradients, about 10 tensors of ``N x hidden`` and 6 of ``N x classes`` per layer pair;
    * sampled: the sampler's CSC (``16 E + 8 N``) and node table (``8 N``), layer-wise
      full-graph evaluation (three ``N x hidden`` buffers), and a mini-batch of at most
      ``batch_size (1 + f1 + f1 f2 + ...)`` nodes with their features and activations, which
      depends on batch size and fanout only.
    """
    n, e = num_nodes, num_edges
    h, c = cfg.model.hidden_channels, num_classes
    if cfg.sampler.enabled:
        reach, batch_nodes = 1, 1  # nodes per seed: 1 + f1 + f1 f2 + ...
        for k in cfg.sampler.fanout:
            reach *= k if k > 0 else max(1, round(e / max(n, 1)))
            batch_nodes += reach
        batch = cfg.sampler.batch_size * batch_nodes * (4 * (num_features + 4 * h) + 64)
        return RUN_OVERHEAD + 16 * e + 16 * n + 3 * 4 * n * h + batch
    layers = cfg.model.num_layers
    activations = 4 * n * (10 * h * (layers - 1) + 6 * c)
    if cfg.model.name == "mlp":
        return RUN_OVERHEAD + activations
    e_loops = e + n
    operator = 24 * e_loops + 16 * n
    build = 100 * e_loops
    return RUN_OVERHEAD + max(operator + build, operator + activations + 4 * n * num_features)


# --------------------------------------------------------------------------------------------
# Measuring one run


@dataclasses.dataclass
class ScaleRow:
    """One model at one graph size: what was measured, or why it was skipped."""

    model: str
    num_nodes: int
    num_edges: int
    status: str
    graph_gib: float
    predicted_gib: float
    epoch_s: float = math.nan
    step_peak_gib: float = math.nan
    run_peak_gib: float = math.nan
    test_acc: float = math.nan
    val_acc: float = math.nan
    fit_s: float = math.nan
    generate_s: float = math.nan


def measure(cfg: Config, data: Data) -> dict[str, float]:
    """Train with :func:`fit` inside a whole-run memory window and per-step windows."""
    meter = StepPeaks(torch.device(cfg.train.device))
    gc.collect()
    trim_heap()
    started = time.perf_counter()
    with PeakWindow(meter.probe) as run:
        result = fit(cfg, data, meter=meter)
    laps = result.epoch_times_s
    return {
        "epoch_s": statistics.median(laps[1:] if len(laps) > 2 else laps),
        # a model that does not train (label propagation) has no training step to measure
        "step_peak_gib": max(meter.peaks) / GIB if meter.peaks else math.nan,
        "run_peak_gib": run.peak / GIB,
        "test_acc": result.test_acc, "val_acc": result.val_acc,
        "fit_s": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------------------------
# The sweep


def model_configs(base: Config, models: Sequence[str]) -> dict[str, Config]:
    """Shipped model names (their ``configs/NAME.yaml`` model and sampler sections) or YAML
    paths -> configs on ``base``'s data and training; bad names exit 2 before any work."""
    out = {}
    for name in models:
        if name in shipped_models():
            path = shipped_configs_dir() / f"{name}.yaml"
        elif name.endswith((".yaml", ".yml")):
            path = Path(name)
        else:
            raise ConfigError(f"--models: unknown model {name!r}; use one of "
                              f"{', '.join(shipped_models())} or a YAML config path")
        cfg = dataclasses.replace(load_config(path), data=base.data, train=base.train)
        if cfg.sampler.enabled and name in shipped_models():
            cfg = cfg.override({"sampler.batch_size": SCALE_BATCH_SIZE,
                                "sampler.inference": "layerwise"})
        out[Path(name).stem] = check_config(cfg)
    return out


@dataclasses.dataclass
class ScalePlan:
    """A checked sweep: sizes, model configs, budget; nothing allocated yet."""

    sizes: list[int]
    configs: dict[str, Config]
    budget_gib: float
    base: Config


def plan_scale(sizes: Sequence[float], models: Sequence[str], budget_gib: float, epochs: int,
               config: str | None = None, device: str = "cpu") -> ScalePlan:
    """Every input checked (sizes, models, budget, each size's CSBM parameters) before any
    work, so bad input exits 2 with nothing written."""
    if not (math.isfinite(budget_gib) and budget_gib > 0):
        raise ConfigError(f"--memory-budget: must be a finite number > 0 GiB, got {budget_gib}")
    checked = []
    for size in sizes:
        if not math.isfinite(size) or size != int(size) or not 2 <= size <= MAX_SIZE:
            raise ConfigError(f"--sizes: node counts must be whole numbers 2..{MAX_SIZE}, got "
                              f"{size:g}")
        checked.append(int(size))
    base = load_config(config) if config else Config().override(SCALE_DATA)
    base = base.override({"data.name": "csbm", "train.epochs": epochs, "train.device": device,
                          "train.eval_every": epochs, "data.split_mode": "transductive"})
    configs = model_configs(base, models)
    for n in checked:
        check_config(base.override({"data.num_nodes": n}))
    return ScalePlan(checked, configs, budget_gib, base)


def sweep(plan: ScalePlan) -> Iterator[ScaleRow]:
    """Measure every model at every size, smallest first; one row at a time."""
    budget = plan.budget_gib * GIB
    for n in plan.sizes:
        dcfg = plan.base.override({"data.num_nodes": n})
        e = 2 * num_pairs(n, dcfg.data.avg_degree)
        graph = csbm_bytes(n, dcfg.data.avg_degree, dcfg.data.num_features)
        predictions = {name: predict_bytes(cfg.override({"data.num_nodes": n}), n, e,
                                           dcfg.data.num_features, dcfg.data.num_classes)
                       for name, cfg in plan.configs.items()}
        if graph > budget:
            for name in plan.configs:
                yield ScaleRow(name, n, e, "over budget (graph)", graph / GIB,
                               predictions[name] / GIB)
            continue
        started = time.perf_counter()
        data = load_dataset(dcfg.data)
        generate_s = time.perf_counter() - started
        for name, cfg in plan.configs.items():
            row = ScaleRow(name, n, data.num_edges, "ok", graph / GIB, predictions[name] / GIB,
                           generate_s=generate_s)
            if graph + predictions[name] > budget:
                row.status = "over budget"
            else:
                measured = measure(cfg.override({"data.num_nodes": n}), data)
                row = dataclasses.replace(row, **measured)
            yield row
        del data
        gc.collect()
        trim_heap()


def row_line(row: ScaleRow) -> str:
    """The terminal line of one row."""
    if row.status != "ok":
        return (f"{row.model:<14} N={row.num_nodes:>9} E={row.num_edges:>10} {row.status} "
                f"(graph {row.graph_gib:.2f} GiB + predicted {row.predicted_gib:.2f} GiB)")
    return (f"{row.model:<14} N={row.num_nodes:>9} E={row.num_edges:>10} "
            f"epoch={row.epoch_s:.3f}s step_peak={row.step_peak_gib:.3f}GiB "
            f"run_peak={row.run_peak_gib:.3f}GiB predicted={row.predicted_gib:.3f}GiB "
            f"test_acc={row.test_acc:.3f}")
