"""Training: one loop for every model, full-batch or on sampled mini-batches.

Adam with weight decay, cross-entropy on training nodes only, validation every
``train.eval_every`` epochs, model selection on the best validation accuracy. The test mask is
read once, at the end, with the selected weights. :func:`fit` reads top to bottom as four
steps: :func:`prepare` (device, data view, seed, model, optimiser, batching), :func:`train_loop`
(epochs and model selection), :func:`final_logits` (the selected weights on the full graph) and
:func:`make_result` (the typed :class:`FitResult`).
"""

from __future__ import annotations

import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch_geometric
from torch import Tensor, nn
from torch_geometric.data import Data

from gnn.batching import Batching, BatchingFactory, make_batching
from gnn.config import Config
from gnn.data import check_data_config, load_dataset, num_classes, training_view
from gnn.errors import ConfigError, TrainingError
from gnn.memory import StepPeaks
from gnn.metrics import classification_metrics
from gnn.models import build_model, check_model_config, count_parameters
from gnn.timing import Timer, synchronize


def check_config(cfg: Config) -> Config:
    """Names and combinations that need the registries (model, dataset, sampling), checked
    before any work; returns ``cfg`` for chaining."""
    check_model_config(cfg)
    check_data_config(cfg.data)
    return cfg


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but CUDA is not available "
                          "(no GPU or a CPU-only torch build)")
    return torch.device(name)


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torch_geometric": torch_geometric.__version__}


@dataclass
class History:
    """What each evaluated epoch looked like (``epoch`` says which epochs were evaluated)."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)


def _in_memory() -> Any:
    """Field metadata: kept on the result, left out of its JSON record."""
    return field(default=None, repr=False, compare=False, metadata={"record": False})


@dataclass
class FitResult:
    """Everything one training run produced: the JSON record (:meth:`to_record`) and, in
    memory only, the trained model (selected weights) and the data it was trained on."""

    model: str
    dataset: str
    seed: int
    device: str
    sampled: bool
    split_mode: str
    num_nodes: int
    num_edges: int
    train_graph_nodes: int
    train_graph_edges: int
    num_params: int
    epochs: int
    best_epoch: int
    train_acc: float
    val_acc: float
    test_acc: float
    train_macro_f1: float
    val_macro_f1: float
    test_macro_f1: float
    total_train_time_s: float
    train_loop_time_s: float
    epoch_times_s: list[float]
    history: History
    config: dict[str, Any]
    versions: dict[str, str]
    threads: int
    timestamp: str
    world_size: int = 1
    members: int = 1  # members trained together in one batched run (gnn.members)
    run_time_s: float = 0.0  # wall time of the whole run (all its members)
    split: int = 0  # split id: data.split_seed of a random split, 0 for the public split
    trained: nn.Module | None = _in_memory()
    data: Data | None = _in_memory()

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready record (``gnn train --json``, a row of ``gnn bench``)."""
        record = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.metadata.get("record", True)}
        record["history"] = asdict(self.history)
        return record

    def summary_line(self) -> str:
        return (f"{self.model:<14} {self.dataset} seed={self.seed} split={self.split_mode} "
                f"device={self.device} test_acc={self.test_acc:.4f} "
                f"test_macro_f1={self.test_macro_f1:.4f} "
                f"total_train_time_s={self.total_train_time_s:.3f} "
                f"train_loop_time_s={self.train_loop_time_s:.3f}"
                + (f" world_size={self.world_size}" if self.world_size > 1 else "")
                + (f" split_seed={self.split}" if self.config.get("data", {}).get("split")
                   == "random" else ""))


@dataclass
class Setup:
    """A run ready to train: the model, its optimiser, and how epochs feed it."""

    device: torch.device
    data: Data  # the whole graph
    seen: Data  # what training sees (the inductive view, or the whole graph)
    model: nn.Module
    optimizer: torch.optim.Optimizer | None  # None: a model that does not train (propagation)
    feed: Batching
    forward_model: nn.Module  # the model as training calls it (DDP, compiled)


@dataclass
class Selection:
    """The training loop's outcome: history, timings and the selected (best) epoch."""

    history: History = field(default_factory=History)
    best_val: float = -1.0  # validation accuracy of the selected epoch
    best_score: float = -math.inf  # what selection maximises: accuracy, or minus the loss
    stale: int = 0  # evaluations since the selected one
    best_epoch: int = 0
    best_state: dict[str, Tensor] | None = None
    best_logits: Tensor | None = None  # set while the best epoch is the last one evaluated
    loop_timer: Timer | None = None
    total_time: float = 0.0


def prepare(cfg: Config, data: Data | None, batching: BatchingFactory,
            meter: StepPeaks | None) -> Setup:
    """Device, data (the inductive view when asked for), seed, model, optimiser, batching."""
    device = resolve_device(cfg.train.device)
    if data is None:
        data = load_dataset(cfg.data)
    seen = training_view(data) if cfg.data.split_mode == "inductive" else data
    set_seed(cfg.train.seed)
    model = build_model(cfg.model, data.num_features, num_classes(data)).to(device)
    optimizer = make_optimizer(cfg, model)
    feed = batching(cfg, seen, device, meter=meter)
    forward_model = feed.wrap(model)
    if cfg.train.compile:
        forward_model = torch.compile(forward_model)
    return Setup(device, data, seen, model, optimizer, feed, forward_model)


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer | None:
    """Adam with weight decay over the model's parameters (a model with ``param_groups``, GCNII,
    gets its two weight-decay groups); ``None`` for a model that does not train."""
    if not getattr(model, "trains", True):
        return None
    decay = cfg.train.weight_decay
    conv_decay = decay if cfg.train.conv_weight_decay is None else cfg.train.conv_weight_decay
    params = model.param_groups(decay, conv_decay) if hasattr(model, "param_groups") \
        else model.parameters()
    return torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=decay)


def _accuracy(pred: Tensor, y: Tensor, mask: Tensor) -> float:
    return float((pred[mask] == y[mask]).float().mean())


def propagation_only(run: Setup) -> Selection:
    """The fit of a model that does not train (label propagation): one prediction, timed as
    the training loop is, logged as epoch 0 with its training loss and accuracies."""
    sel = Selection(loop_timer=Timer(run.device))
    total_timer = Timer(run.device).start()
    with sel.loop_timer:
        logits = run.feed.predict(run.forward_model)
    synchronize(run.device)
    sel.total_time = total_timer.stop()
    y = run.seen.y.to(run.device)
    train_mask, val_mask = run.seen.train_mask.to(run.device), run.seen.val_mask.to(run.device)
    pred = logits.argmax(dim=-1)
    loss = float(torch.nn.functional.cross_entropy(logits[train_mask], y[train_mask]))
    sel.best_val = _accuracy(pred, y, val_mask)
    _log(sel.history, 0, loss, _accuracy(pred, y, train_mask), sel.best_val)
    sel.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    sel.best_logits = logits
    return sel


def train_loop(cfg: Config, run: Setup,
               on_epoch: Callable[[int, float, float], None] | None = None) -> Selection:
    """Train for ``train.epochs``; evaluate every ``eval_every`` epochs and after the last,
    keeping the weights of the best validation accuracy (or loss: ``train.select``), and stop
    after ``train.patience`` evaluations without a better one."""
    y = run.seen.y.to(run.device)
    train_mask, val_mask = run.seen.train_mask.to(run.device), run.seen.val_mask.to(run.device)
    sel = Selection(loop_timer=Timer(run.device))
    total_timer = Timer(run.device).start()
    for epoch in _epochs(cfg):
        with sel.loop_timer:
            loss = run.feed.train_epoch(run.forward_model, run.optimizer)
        if not math.isfinite(loss):
            raise TrainingError(f"non-finite loss ({loss}) at epoch {epoch}")
        if epoch % cfg.train.eval_every and epoch != cfg.train.epochs:
            continue
        logits = run.feed.predict(run.forward_model)
        pred = logits.argmax(dim=-1)
        val_acc = _accuracy(pred, y, val_mask)
        _log(sel.history, epoch, loss, _accuracy(pred, y, train_mask), val_acc)
        score = val_acc if cfg.train.select == "val_acc" else \
            -float(torch.nn.functional.cross_entropy(logits[val_mask], y[val_mask]))
        if score > sel.best_score:
            sel.best_score, sel.best_val, sel.best_epoch, sel.stale = score, val_acc, epoch, 0
            sel.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        else:
            sel.stale += 1
        sel.best_logits = logits if sel.best_epoch == epoch else None
        if on_epoch is not None:
            on_epoch(epoch, loss, val_acc)
        if cfg.train.patience and sel.stale >= cfg.train.patience:
            break
    synchronize(run.device)
    sel.total_time = total_timer.stop()
    return sel


def _epochs(cfg: Config) -> Any:
    epochs = range(1, cfg.train.epochs + 1)
    if not cfg.train.progress:
        return epochs
    from tqdm.auto import tqdm

    return tqdm(epochs, desc=f"{cfg.model.name} seed {cfg.train.seed}", leave=False)


def _log(history: History, epoch: int, loss: float, train_acc: float, val_acc: float) -> None:
    history.epoch.append(epoch)
    history.train_loss.append(loss)
    history.train_acc.append(train_acc)
    history.val_acc.append(val_acc)


def final_logits(cfg: Config, run: Setup, sel: Selection, batching: BatchingFactory) -> Tensor:
    """Logits of the selected weights for every node of the whole graph. Transductive: the
    best epoch's own evaluation when it was the last one; inductive: test nodes and their
    edges reach the model only now."""
    assert sel.best_state is not None
    run.model.load_state_dict(sel.best_state)
    if cfg.data.split_mode == "inductive":
        run.feed = batching(cfg, run.data, run.device)
        return run.feed.predict(run.forward_model)
    if sel.best_logits is not None:
        return sel.best_logits
    return run.feed.predict(run.forward_model)


def make_result(cfg: Config, run: Setup, sel: Selection, logits: Tensor) -> FitResult:
    """Metrics on the three splits of the whole graph, plus what the run was."""
    data, device = run.data, run.device
    y = data.y.to(device)
    metrics = {}
    for split in ("train", "val", "test"):
        mask = getattr(data, f"{split}_mask").to(device)
        scores = classification_metrics(logits[mask], y[mask])
        metrics[f"{split}_acc"], metrics[f"{split}_macro_f1"] = scores["acc"], scores["macro_f1"]
    assert sel.loop_timer is not None
    return FitResult(
        model=cfg.model.name, dataset=str(getattr(data, "name", None)), seed=cfg.train.seed,
        device=str(device), sampled=cfg.sampler.enabled, split_mode=cfg.data.split_mode,
        num_nodes=int(data.num_nodes), num_edges=int(data.num_edges),
        train_graph_nodes=int(run.seen.num_nodes), train_graph_edges=int(run.seen.num_edges),
        num_params=count_parameters(run.model),
        epochs=sel.history.epoch[-1] if run.optimizer is not None else 0,
        best_epoch=sel.best_epoch, **metrics, total_train_time_s=sel.total_time,
        train_loop_time_s=sel.loop_timer.total, epoch_times_s=sel.loop_timer.laps,
        history=sel.history, config=cfg.to_dict(), versions=versions(),
        threads=torch.get_num_threads(), timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        run_time_s=sel.total_time, split=cfg.data.split_seed, trained=run.model, data=data)


def fit(cfg: Config, data: Data | None = None, *, batching: BatchingFactory = make_batching,
        meter: StepPeaks | None = None,
        on_epoch: Callable[[int, float, float], None] | None = None) -> FitResult:
    """Train one model as configured and return its :class:`FitResult`.

    ``batching`` builds how epochs feed the model (``gnn.distributed`` passes its per-rank
    one); ``meter`` records the peak memory of every training step (``gnn scale``);
    ``on_epoch(epoch, loss, val_acc)`` is told of every evaluated epoch. With
    ``data.split_mode: inductive`` training and validation run on
    :func:`gnn.data.training_view` (no test node, no edge touching one).
    """
    run = prepare(cfg, data, batching, meter)
    selection = train_loop(cfg, run, on_epoch) if run.optimizer is not None \
        else propagation_only(run)
    logits = final_logits(cfg, run, selection, batching)
    return make_result(cfg, run, selection, logits)
