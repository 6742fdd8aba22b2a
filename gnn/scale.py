"""``gnn scale``: the measured cost curve of full-batch and neighbour-sampled training.

For each graph size a CSBM graph is generated once (:mod:`gnn.synthetic`) and every model is
trained on it with :func:`gnn.training.fit` for a fixed number of epochs. Recorded per model and
size: median time per training epoch, peak memory per training step (one mini-batch for a
sampled model, the whole graph for a full-batch one) and over the whole run (training and the
full-graph evaluations), and accuracy. Before anything is allocated, the memory a model will need
is predicted from N, E, feature, hidden and class sizes; a model whose prediction exceeds the
budget is skipped and reported "over budget", so the machine is never pushed into swapping or the
OOM killer.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import io
import math
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Data

from gnn.config import Config, ConfigError, load_config
from gnn.data import load_dataset
from gnn.files import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from gnn.memory import PeakWindow, probe_for, trim_heap
from gnn.synthetic import csbm_bytes, num_pairs
from gnn.training import Batching, FullBatch, fit

GIB = 1024**3
#: Allocations of any run whatever its size (optimiser, autograd bookkeeping, allocator slack):
#: the measured peak of the smallest graphs.
RUN_OVERHEAD = 32 * 1024**2

#: Models by name: overrides of the default config. Hidden sizes and fanouts follow
#: configs/*.yaml; the sampled batch size is fixed so per-batch memory compares across sizes.
PRESETS: dict[str, dict[str, Any]] = {
    "gcn": {"model.name": "gcn", "model.hidden_channels": 16},
    "sage": {"model.name": "sage", "model.hidden_channels": 64},
    "mlp": {"model.name": "mlp", "model.hidden_channels": 64},
    "sage_sampling": {"model.name": "sage", "model.hidden_channels": 64,
                      "sampler.enabled": True, "sampler.fanout": [10, 10],
                      "sampler.batch_size": 256, "sampler.inference": "layerwise"},
}

#: Split used unless ``--config`` gives a data section: 256 training nodes per class make
#: five full mini-batches of 256 per epoch for the sampled model.
SCALE_DATA: dict[str, Any] = {"data.train_per_class": 256, "data.num_val": 1000,
                              "data.num_test": 1000}

FIELDS = ["model", "num_nodes", "num_edges", "status", "graph_gib", "predicted_gib", "epoch_s",
          "step_peak_gib", "run_peak_gib", "test_acc", "val_acc", "fit_s", "generate_s"]


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


class StepMeter:
    """Wraps a :class:`~gnn.training.Batching` so each training step runs in its own
    :class:`~gnn.memory.PeakWindow`: a sampled loader is wrapped batch by batch (sampling
    included), a full-batch epoch as a whole."""

    def __init__(self, device: torch.device) -> None:
        self.probe = probe_for(device)
        self.peaks: list[int] = []

    def __call__(self, batching: Batching) -> Batching:
        loader = getattr(batching, "train_loader", None)
        if loader is not None:
            batching.train_loader = _MeasuredLoader(loader, self)
        elif isinstance(batching, FullBatch):
            inner = batching.train_epoch

            def train_epoch(model: Any, optimizer: Any) -> float:
                with PeakWindow(self.probe) as window:
                    loss = inner(model, optimizer)
                self.peaks.append(window.peak)
                return loss

            batching.train_epoch = train_epoch  # type: ignore[method-assign]
        return batching


class _MeasuredLoader:
    """Iterates a loader with a memory window from fetching each batch (sampling) to the
    request for the next one (after the optimiser step)."""

    def __init__(self, loader: Any, meter: StepMeter) -> None:
        self.loader = loader
        self.meter = meter

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.loader)
        while True:
            window = PeakWindow(self.meter.probe).start()
            try:
                batch = next(batches)
            except StopIteration:
                window.stop()
                return
            yield batch
            self.meter.peaks.append(window.stop())


@dataclasses.dataclass
class Row:
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
    device = torch.device(cfg.train.device)
    meter = StepMeter(device)
    gc.collect()
    trim_heap()
    started = time.perf_counter()
    with PeakWindow(meter.probe) as run:
        result = fit(cfg, data, on_batching=meter)
    laps = result["epoch_times_s"]
    return {
        "epoch_s": statistics.median(laps[1:] if len(laps) > 2 else laps),
        "step_peak_gib": max(meter.peaks) / GIB, "run_peak_gib": run.peak / GIB,
        "test_acc": result["test_acc"], "val_acc": result["val_acc"],
        "fit_s": time.perf_counter() - started,
    }


# --------------------------------------------------------------------------------------------
# The sweep


def model_configs(base: Config, models: Sequence[str]) -> dict[str, Config]:
    """Preset names or YAML paths -> configs (bad names exit 2 before any work)."""
    out = {}
    for name in models:
        if name in PRESETS:
            out[name] = base.override(PRESETS[name])
        elif name.endswith((".yaml", ".yml")):
            cfg = load_config(name)
            out[Path(name).stem] = dataclasses.replace(cfg, data=base.data, train=base.train)
        else:
            raise ConfigError(f"--models: unknown model {name!r}; use one of "
                              f"{', '.join(PRESETS)} or a YAML config path")
    return out


def run_scale(sizes: Sequence[int], models: Sequence[str], budget_gib: float, epochs: int,
              out: Path, config: str | None = None, device: str = "cpu") -> list[Row]:
    """Measure every model at every size; write the report after each row."""
    base = load_config(config) if config else Config().override(SCALE_DATA)
    base = base.override({"data.name": "csbm", "train.epochs": epochs, "train.device": device,
                          "train.eval_every": epochs, "data.split_mode": "transductive"})
    configs = model_configs(base, models)
    for n in sizes:  # every size's parameters are checked before the first graph is built
        base.override({"data.num_nodes": n})
    ensure_writable_dir(out, "--out")
    budget = budget_gib * GIB
    rows: list[Row] = []
    for n in sizes:
        dcfg = base.override({"data.num_nodes": n})
        e = 2 * num_pairs(n, dcfg.data.avg_degree)
        graph = csbm_bytes(n, dcfg.data.avg_degree, dcfg.data.num_features)
        predictions = {name: predict_bytes(cfg.override({"data.num_nodes": n}), n, e,
                                           dcfg.data.num_features, dcfg.data.num_classes)
                       for name, cfg in configs.items()}
        if graph > budget:
            for name in configs:
                rows.append(Row(name, n, e, "over budget (graph)", graph / GIB,
                                predictions[name] / GIB))
                print(_line(rows[-1]), flush=True)
            _report(rows, out, budget_gib, base)
            continue
        started = time.perf_counter()
        data = load_dataset(dcfg.data)
        generate_s = time.perf_counter() - started
        for name, cfg in configs.items():
            cfg = cfg.override({"data.num_nodes": n})
            row = Row(name, n, data.num_edges, "ok", graph / GIB, predictions[name] / GIB,
                      generate_s=generate_s)
            if graph + predictions[name] > budget:
                row.status = "over budget"
            else:
                for key, value in measure(cfg, data).items():
                    setattr(row, key, value)
            rows.append(row)
            print(_line(row), flush=True)
            _report(rows, out, budget_gib, base)
        del data
        gc.collect()
        trim_heap()
    return rows


def _line(row: Row) -> str:
    if row.status != "ok":
        return (f"{row.model:<14} N={row.num_nodes:>9} E={row.num_edges:>10} {row.status} "
                f"(graph {row.graph_gib:.2f} GiB + predicted {row.predicted_gib:.2f} GiB)")
    return (f"{row.model:<14} N={row.num_nodes:>9} E={row.num_edges:>10} "
            f"epoch={row.epoch_s:.3f}s step_peak={row.step_peak_gib:.3f}GiB "
            f"run_peak={row.run_peak_gib:.3f}GiB predicted={row.predicted_gib:.3f}GiB "
            f"test_acc={row.test_acc:.3f}")


# --------------------------------------------------------------------------------------------
# Report: scale.csv, scale.md, scale.png (each written atomically)


def _fmt(value: float, spec: str) -> str:
    return "" if isinstance(value, float) and math.isnan(value) else format(value, spec)


def _report(rows: list[Row], out: Path, budget_gib: float, cfg: Config) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v
                         for k, v in dataclasses.asdict(row).items()})
    atomic_write_text(out / "scale.csv", buffer.getvalue())
    atomic_write_text(out / "scale.md", markdown(rows, budget_gib, cfg))
    atomic_write_bytes(out / "scale.png", plot(rows, budget_gib))


def markdown(rows: list[Row], budget_gib: float, cfg: Config) -> str:
    d = cfg.data
    probe = probe_for(cfg.train.device).name
    lines = [
        "# gnn scale", "",
        f"CSBM graphs: {d.num_classes} classes, average degree {d.avg_degree:g}, homophily "
        f"{d.homophily:g}, {d.num_features} {d.features} features (signal "
        f"{d.feature_signal:g}), {d.train_per_class} training nodes per class, graph seed "
        f"{d.graph_seed}. {cfg.train.epochs} epochs, lr {cfg.train.lr:g}, device "
        f"{cfg.train.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.machine()}. Memory budget {budget_gib:g} GiB; memory measured as {probe}.",
        "",
        "Each model trains for the epoch budget and is evaluated once, after it (full-graph "
        "evaluation: layer-wise for sampled models). "
        "epoch: median training time per epoch (evaluation excluded). step peak: peak memory "
        "above the level before the step, for one training step (a sampled model: one "
        "mini-batch, sampling included; full-batch: one epoch). run peak: the same over the "
        "whole run (all epochs and every full-graph evaluation). predicted: what the run "
        "allocates beyond the graph, predicted from sizes before allocating (compare with run "
        "peak); a model is skipped when graph + predicted exceeds the budget. fit: wall time "
        "of the run, evaluations included.",
        "",
        "| model | nodes | edges | status | epoch (s) | step peak (GiB) | run peak (GiB) "
        "| predicted (GiB) | graph (GiB) | test acc | fit (s) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.num_nodes:,} | {r.num_edges:,} | {r.status} | "
            f"{_fmt(r.epoch_s, '.3f')} | {_fmt(r.step_peak_gib, '.4f')} | "
            f"{_fmt(r.run_peak_gib, '.3f')} | {r.predicted_gib:.3f} | {r.graph_gib:.3f} | "
            f"{_fmt(r.test_acc, '.3f')} | {_fmt(r.fit_s, '.1f')} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], budget_gib: float) -> bytes:
    """Log-log time per epoch and memory against nodes, one line per model; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, model in enumerate(dict.fromkeys(r.model for r in rows)):
        color = colors[i % len(colors)]
        ok = [r for r in rows if r.model == model and r.status == "ok"]
        skipped = [r for r in rows if r.model == model and r.status != "ok"]
        xs = [r.num_nodes for r in ok]
        ax_t.plot(xs, [r.epoch_s for r in ok], "o-", color=color, label=model)
        ax_m.plot(xs, [r.step_peak_gib for r in ok], "o-", color=color,
                  label=f"{model}: per training step")
        ax_m.plot(xs, [r.run_peak_gib for r in ok], "s:", color=color, alpha=0.6,
                  label=f"{model}: whole run")
        if skipped:
            ax_m.plot([r.num_nodes for r in skipped], [r.predicted_gib for r in skipped], "x",
                      color=color, markersize=9,
                      label=f"{model}: skipped, predicted (budget {budget_gib:g} GiB)")
    for ax, title, ylabel in ((ax_t, "time per training epoch", "seconds"),
                              (ax_m, "peak memory above the loaded graph", "GiB")):
        if any(line.get_xydata()[:, 1].max(initial=0) > 0 for line in ax.get_lines()):
            ax.set_xscale("log")
            ax.set_yscale("log", nonpositive="mask")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        else:
            ax.text(0.5, 0.5, "nothing measured", ha="center", transform=ax.transAxes)
        ax.set_xlabel("nodes (average degree fixed)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()
