"""Training: one loop for every model, full-batch or on sampled mini-batches.

Adam with weight decay, cross-entropy on training nodes only, validation every epoch, model
selection on the best validation accuracy. The test mask is read once, at the end, with the
selected weights.
"""

from __future__ import annotations

import contextlib
import math
import platform
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
import torch_geometric
from torch import Tensor, nn
from torch_geometric.data import Data

from gnn.config import Config, ConfigError
from gnn.data import load_dataset, num_classes, training_view
from gnn.metrics import classification_metrics
from gnn.models import build_model, count_parameters
from gnn.timing import Timer, synchronize


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss)."""


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


def node_features(data: Data, cfg: Config) -> Tensor:
    """Features as the first layer will read them: CSR when sparse enough and allowed. ``auto``
    picks CSR on the CPU only: on a GPU the dense product is one fast GEMM, and cuSPARSE made
    the MLP forward on Cora 1.3x slower than the dense reference (H200, measured)."""
    x = data.x
    mode = cfg.data.sparse_features
    if cfg.sampler.enabled or mode == "never":
        return x
    if mode == "auto" and cfg.train.device != "cpu":
        return x
    density = float(torch.count_nonzero(x)) / max(x.numel(), 1)
    if mode == "always" or (cfg.model.fast and density < 0.1):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return x.to_sparse_csr()
    return x


def inference_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``dtype`` for evaluation, or nothing for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


class Batching(Protocol):
    """How an epoch feeds the model: the whole graph at once, or sampled mini-batches (on one
    process, or on this rank's share of the seeds in a distributed run)."""

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module that training calls: the model itself, or e.g. a DDP wrapper of it."""
        return model

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> float: ...

    def predict(self, model: nn.Module) -> Tensor: ...


BatchingFactory = Callable[[Config, Data, torch.device], Batching]


@dataclass
class FullBatch(Batching):
    x: Tensor
    edge_index: Tensor
    y: Tensor
    train_mask: Tensor
    inference_dtype: str = "float32"

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        out = model(self.x, self.edge_index)
        loss = F.cross_entropy(out[self.train_mask], self.y[self.train_mask])
        loss.backward()
        optimizer.step()
        return loss.item()

    def predict(self, model: nn.Module) -> Tensor:
        model.eval()
        with torch.inference_mode(), inference_context(self.x.device, self.inference_dtype):
            return model(self.x, self.edge_index).float()


def make_batching(cfg: Config, data: Data, device: torch.device) -> Batching:
    if cfg.sampler.enabled:
        from gnn.sampling import SampledBatching

        return SampledBatching.from_config(cfg, data, device)
    return FullBatch(node_features(data, cfg).to(device), data.edge_index.to(device),
                     data.y.to(device), data.train_mask.to(device), cfg.train.inference_dtype)


@dataclass
class History:
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)


def fit(cfg: Config, data: Data | None = None,
        on_epoch: Callable[[int, float, float], None] | None = None,
        batching: BatchingFactory = make_batching,
        on_batching: Callable[[Batching], Batching] | None = None) -> dict[str, Any]:
    """Train one model as configured and return the full result record.

    ``batching`` builds how epochs feed the model (``gnn.distributed`` passes its per-rank
    one); ``on_batching`` may wrap it (``gnn scale`` measures memory per batch that way).
    With ``data.split_mode: inductive`` training and validation run on
    :func:`gnn.data.training_view` (no test node, no edge touching one); the full graph is
    handed to the model only for the final evaluation. Validation (and ``on_epoch``) runs
    every ``train.eval_every`` epochs and after the last.
    """
    device = resolve_device(cfg.train.device)
    if data is None:
        data = load_dataset(cfg.data)
    inductive = cfg.data.split_mode == "inductive"
    seen = training_view(data) if inductive else data
    set_seed(cfg.train.seed)
    model = build_model(cfg.model, data.num_features, num_classes(data)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                                 weight_decay=cfg.train.weight_decay)
    feed = batching(cfg, seen, device)
    if on_batching is not None:
        feed = on_batching(feed)
    forward_model = feed.wrap(model)
    if cfg.train.compile:
        forward_model = torch.compile(forward_model)
    y = seen.y.to(device)
    train_mask, val_mask = seen.train_mask.to(device), seen.val_mask.to(device)

    history = History()
    best_val, best_epoch, best_state = -1.0, 0, None
    last_logits: Tensor | None = None
    loop_timer = Timer(device)
    total_timer = Timer(device).start()
    epochs = range(1, cfg.train.epochs + 1)
    if cfg.train.progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=f"{cfg.model.name} seed {cfg.train.seed}", leave=False)
    for epoch in epochs:
        with loop_timer:
            loss = feed.train_epoch(forward_model, optimizer)
        if not math.isfinite(loss):
            raise TrainingError(f"non-finite loss ({loss}) at epoch {epoch}")
        if epoch % cfg.train.eval_every and epoch != cfg.train.epochs:
            continue
        logits = feed.predict(forward_model)
        pred = logits.argmax(dim=-1)
        train_acc = float((pred[train_mask] == y[train_mask]).float().mean())
        val_acc = float((pred[val_mask] == y[val_mask]).float().mean())
        history.epoch.append(epoch)
        history.train_loss.append(loss)
        history.train_acc.append(train_acc)
        history.val_acc.append(val_acc)
        if val_acc > best_val:
            best_val, best_epoch = val_acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        last_logits = logits if best_epoch == epoch else None
        if on_epoch is not None:
            on_epoch(epoch, loss, val_acc)
    synchronize(device)
    total_time = total_timer.stop()

    assert best_state is not None
    model.load_state_dict(best_state)
    if inductive:  # test nodes and their edges appear now, for evaluation only
        del feed, last_logits
        feed = batching(cfg, data, device)
        y = data.y.to(device)
        train_mask, val_mask = data.train_mask.to(device), data.val_mask.to(device)
        logits = feed.predict(forward_model)
    else:  # the last evaluation already used the selected weights: no need to repeat it
        logits = last_logits if last_logits is not None else feed.predict(forward_model)
    result: dict[str, Any] = {
        "model": cfg.model.name, "dataset": data.name, "seed": cfg.train.seed,
        "device": str(device), "sampled": cfg.sampler.enabled,
        "split_mode": cfg.data.split_mode,
        "num_nodes": int(data.num_nodes), "num_edges": int(data.num_edges),
        "train_graph_nodes": int(seen.num_nodes), "train_graph_edges": int(seen.num_edges),
        "num_params": count_parameters(model), "epochs": cfg.train.epochs,
        "best_epoch": best_epoch,
    }
    for split, mask in (("train", train_mask), ("val", val_mask),
                        ("test", data.test_mask.to(device))):
        metrics = classification_metrics(logits[mask], y[mask])
        result[f"{split}_acc"] = metrics["acc"]
        result[f"{split}_macro_f1"] = metrics["macro_f1"]
    result.update({
        "total_train_time_s": total_time,
        "train_loop_time_s": loop_timer.total,
        "epoch_times_s": loop_timer.laps,
        "history": history.__dict__,
        "config": cfg.to_dict(),
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    result["_model"] = model  # stripped before writing; lets callers reuse the trained model
    result["_data"] = data  # what the model was trained on (checkpoints store its identity)
    return result


def summary_line(result: dict[str, Any]) -> str:
    return (f"{result['model']:<14} {result['dataset']} seed={result['seed']} "
            f"split={result['split_mode']} device={result['device']} "
            f"test_acc={result['test_acc']:.4f} "
            f"test_macro_f1={result['test_macro_f1']:.4f} "
            f"total_train_time_s={result['total_train_time_s']:.3f} "
            f"train_loop_time_s={result['train_loop_time_s']:.3f}"
            + (f" world_size={result['world_size']}" if "world_size" in result else ""))


def public_record(result: dict[str, Any]) -> dict[str, Any]:
    """The result without in-memory objects, ready for JSON."""
    return {k: v for k, v in result.items() if not k.startswith("_")}
