"""How an epoch feeds the model: the whole graph at once, or sampled mini-batches.

A :class:`Batching` has three jobs: :meth:`~Batching.wrap` the model (a DDP wrapper in a
distributed run), run one training epoch, and predict every node for evaluation. Training
(:mod:`gnn.training`) only talks to this protocol, so full-batch, sampled and distributed
training share one loop. With a :class:`~gnn.memory.StepPeaks` meter every training step runs in
its own memory window (``gnn scale`` reports the largest).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Sampler
from torch_geometric.data import Data
from torch_geometric.loader import NeighborLoader

from gnn.config import Config
from gnn.memory import StepPeaks, free_memory
from gnn.models import MODELS
from gnn.sampling import layerwise_inference, make_neighbor_loader

#: On a GPU, ``auto`` reads features as CSR once the first layer is at least this many columns
#: wide (stacked members): one dense GEMM is then the largest cost of a step.
GPU_CSR_WIDTH = 256


def node_features(data: Data, cfg: Config, width: int | None = None) -> Tensor:
    """Features as the first layer will read them: CSR when sparse enough and allowed. ``auto``
    picks CSR on the CPU, and on a GPU only for a first layer ``width`` columns wide or more
    (the stacked layer of batched members): for one model the dense product is one fast
    GEMM, and cuSPARSE made the MLP forward on Cora 1.3x slower than the dense reference
    (H200, measured)."""
    x = data.x
    mode = cfg.data.sparse_features
    if cfg.sampler.enabled or mode == "never":
        return x
    if mode == "auto" and cfg.train.device != "cpu" and (width or 0) < GPU_CSR_WIDTH:
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


BatchingFactory = Callable[..., Batching]


def measured_step(meter: StepPeaks | None) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext() if meter is None else meter.step()


def measured_batches(loader: Iterable[Any], meter: StepPeaks | None) -> Iterator[Any]:
    return iter(loader) if meter is None else meter.batches(loader)


@dataclass
class FullBatch(Batching):
    x: Tensor
    edge_index: Tensor
    y: Tensor
    train_mask: Tensor
    inference_dtype: str = "float32"
    meter: StepPeaks | None = None
    #: ``[N, C]`` one-hot training labels (zero rows elsewhere), the third input of a model
    #: that reads labels (label propagation, C&S); ``None`` for the others
    labels: Tensor | None = None

    def _inputs(self) -> tuple[Tensor, ...]:
        inputs = (self.x, self.edge_index)
        return inputs if self.labels is None else (*inputs, self.labels)

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        with measured_step(self.meter):
            model.train()
            optimizer.zero_grad(set_to_none=True)
            out = model(*self._inputs())
            loss = F.cross_entropy(out[self.train_mask], self.y[self.train_mask])
            loss.backward()
            optimizer.step()
        return loss.item()

    def predict(self, model: nn.Module) -> Tensor:
        model.eval()
        with torch.inference_mode(), inference_context(self.x.device, self.inference_dtype):
            return model(*self._inputs()).float()


def training_labels(data: Data) -> Tensor:
    """One-hot labels of the training nodes, zero rows for every other node: all a label-using
    model may know of the labels (never a validation or test label)."""
    return labels_on(data.y, data.train_mask)


def labels_on(y: Tensor, train: Tensor) -> Tensor:
    """One-hot labels ``y`` on the nodes ``train`` marks, zero rows elsewhere: ``[N, C]`` for
    one mask ``[N]``, ``[M, N, C]`` for each of M members' masks ``[M, N]``."""
    classes = int(y.max()) + 1
    return F.one_hot(y, classes).float() * train.unsqueeze(-1)


def make_batching(cfg: Config, data: Data, device: torch.device, *,
                  meter: StepPeaks | None = None) -> Batching:
    """The batching a config asks for, on ``device``."""
    if cfg.sampler.enabled:
        return SampledBatching.from_config(cfg, data, device, meter=meter)
    uses_labels = getattr(MODELS[cfg.model.name], "uses_labels", False)
    return FullBatch(node_features(data, cfg).to(device), data.edge_index.to(device),
                     data.y.to(device), data.train_mask.to(device), cfg.train.inference_dtype,
                     meter, training_labels(data).to(device) if uses_labels else None)


def full_batch_bytes(data: Data, hidden_channels: int) -> int:
    """Memory one full-batch forward adds beyond the graph itself, estimated: the cached CSR
    mean operator and its transpose (a column index and a value per edge, a row pointer per
    node, each twice), and three float32 node x width activations alive at once (a layer's
    input, its output and one temporary). Layer-wise inference keeps node x hidden embeddings
    per layer as well, so the operator is the real difference."""
    nodes, edges = int(data.num_nodes), int(data.num_edges)
    width = max(int(data.num_features), hidden_channels)
    return 2 * (edges * 12 + (nodes + 1) * 8) + 3 * nodes * width * 4


def evaluate_full_batch(mode: str, data: Data, hidden_channels: int,
                        device: torch.device) -> bool:
    """Whether layer-wise evaluation runs as one full-batch forward (``sampler.full_batch_eval``):
    ``always``, ``never``, or ``auto``: when the estimate fits in half the free memory of the
    device, leaving room for training and for the estimate's error."""
    if mode != "auto":
        return mode == "always"
    return full_batch_bytes(data, hidden_channels) <= free_memory(device) // 2


@dataclass
class SampledBatching(Batching):
    """Mini-batch training on sampled subgraphs; evaluation without sampling noise or with it
    (``sampler.inference: sampled``). Without noise, full-neighbourhood layer-wise inference
    computes what one full-batch forward computes (the model's cached mean operator: one
    sparse product a layer), so where that fits (:func:`evaluate_full_batch`) evaluation is
    that forward and ``eval_loader`` is ``None``; graphs that do not fit keep the layer-wise
    loader, whose memory grows with the batch, not the graph."""

    data: Data
    train_loader: NeighborLoader
    eval_loader: NeighborLoader | None
    layerwise: bool
    trim: bool
    device: torch.device
    inference_dtype: str = "float32"
    meter: StepPeaks | None = None

    @classmethod
    def from_config(cls, cfg: Config, data: Data, device: torch.device, *,
                    seed: int | None = None, batch_sampler: Sampler[list[int]] | None = None,
                    transform: Callable[[Data], Data] | None = None,
                    **fields: Any) -> SampledBatching:
        """Loaders as configured. A distributed run passes its rank's ``seed`` for neighbour
        sampling and a ``batch_sampler`` over the training seeds (positions in the train mask);
        ``transform`` sees every training batch; ``fields`` fill a subclass's own fields.
        Worker processes (``sampler.num_workers``) persist across epochs: starting them costs
        far more than an epoch of Cora."""
        sc = cfg.sampler
        graph = Data(x=data.x, edge_index=data.edge_index, y=data.y, num_nodes=data.num_nodes)
        if device.type != "cpu":
            graph = graph.to(device)  # sample and gather features where the model runs
        common = {"backend": sc.backend, "seed": cfg.train.seed if seed is None else seed,
                  "replace": sc.replace, "num_workers": sc.num_workers,
                  "persistent_workers": sc.num_workers > 0}
        batches: dict[str, Any] = ({"batch_size": sc.batch_size, "shuffle": True}
                                   if batch_sampler is None else {"batch_sampler": batch_sampler})
        train_loader = make_neighbor_loader(graph, sc.fanout, input_nodes=data.train_mask,
                                            transform=transform, **batches, **common)
        layerwise = sc.inference == "layerwise"
        eval_loader = None
        if not (layerwise and evaluate_full_batch(sc.full_batch_eval, graph,
                                                  cfg.model.hidden_channels, device)):
            eval_loader = make_neighbor_loader(graph, [-1] if layerwise else sc.fanout,
                                               batch_size=sc.inference_batch_size, **common)
        return cls(graph, train_loader, eval_loader, layerwise, sc.trim, device,
                   inference_dtype=cfg.train.inference_dtype, **fields)

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        model.train()
        total_loss, total_seeds = 0.0, 0
        for batch in measured_batches(self.train_loader, self.meter):
            batch = batch.to(self.device)
            optimizer.zero_grad(set_to_none=True)
            kwargs = {}
            if self.trim and "num_sampled_nodes" in batch:  # torch-sparse reports no hops
                kwargs = {"num_sampled_nodes_per_hop": batch.num_sampled_nodes,
                          "num_sampled_edges_per_hop": batch.num_sampled_edges}
            out = model(batch.x, batch.edge_index, **kwargs)[:batch.batch_size]
            loss = F.cross_entropy(out, batch.y[:batch.batch_size])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * batch.batch_size
            total_seeds += batch.batch_size
        return total_loss / max(total_seeds, 1)

    def predict(self, model: nn.Module) -> Tensor:
        model.eval()
        with torch.inference_mode(), inference_context(self.device, self.inference_dtype):
            if self.eval_loader is None:  # full-batch: the layer-wise result in one forward
                return model(self.data.x, self.data.edge_index).float()
            if self.layerwise:
                return layerwise_inference(model, self.eval_loader).float()
            outs = [model(b.x.to(self.device), b.edge_index.to(self.device))[:b.batch_size]
                    for b in self.eval_loader]
            return torch.cat(outs).float()
