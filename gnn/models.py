"""Models: thin subclasses of PyG's ready models, one registry.

Every model takes ``forward(x, edge_index)`` with a ``[2, E]`` edge index (edges point
source -> target, as in PyG) and has ``reset_parameters``. A model with ``fast=True`` turns the
edge index once into the sparse CSR operator its convolution needs (normalised adjacency for GCN,
row-normalised adjacency for GraphSAGE) and keeps it until a different graph comes in; the
result equals the plain PyG path up to float rounding (``tests/test_models.py`` checks it).

Adding a model: one class with ``from_config`` (or the default one) and one line in ``MODELS``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch_geometric.nn import SAGEConv
from torch_geometric.nn import models as pyg_models
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import spmm, to_torch_csr_tensor

from gnn.config import ModelConfig

# Explicitly keep torch's default (no invariant checks on every sparse constructor): our CSR
# operators are built by PyG from coalesced indices. Saying so silences a per-call warning.
torch.sparse.check_sparse_tensor_invariants.disable()


class GraphCache:
    """Keeps one derived sparse operator per graph; a new or modified edge index rebuilds it."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._value: Any = None

    def get(self, edge_index: Tensor, num_nodes: int, build: Any) -> Any:
        key = (edge_index.data_ptr(), edge_index._version, tuple(edge_index.shape), num_nodes,
               edge_index.device)
        if key != self._key:
            self._value, self._key = build(edge_index, num_nodes), key
        return self._value

    def clear(self) -> None:
        self._key = self._value = None


class FromConfig:
    """Default constructor from a :class:`ModelConfig` for PyG's ``BasicGNN``-style models."""

    def __init__(self, *args: Any, fast: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast = fast
        self.graph_cache = GraphCache()

    @classmethod
    def extra_kwargs(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
        return cls(in_channels=in_channels, hidden_channels=cfg.hidden_channels,
                   num_layers=cfg.num_layers, out_channels=out_channels, dropout=cfg.dropout,
                   fast=cfg.fast, **cls.extra_kwargs(cfg))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        cache = self.__dict__.get("graph_cache")  # absent while the base __init__ runs
        if cache is not None:
            cache.clear()


class MLP(FromConfig, pyg_models.MLP):
    """Features only: the edge index is accepted and ignored."""

    uses_graph: ClassVar[bool] = False

    @classmethod
    def extra_kwargs(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {"norm": None}

    def forward(self, x: Tensor, edge_index: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return super().forward(x)


def _gcn_operator(edge_index: Tensor, num_nodes: int) -> Tensor:
    """D^-1/2 (A + I) D^-1/2 as a CSR matrix indexed [target, source]."""
    ei, w = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    return to_torch_csr_tensor(ei.flip(0), w, size=(num_nodes, num_nodes))


class GCN(FromConfig, pyg_models.GCN):
    """Kipf & Welling GCN; the normalisation is computed here, once per graph when ``fast``."""

    uses_graph: ClassVar[bool] = True

    def init_conv(self, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
        return super().init_conv(in_channels, out_channels, normalize=False, **kwargs)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:  # type: ignore[override]
        if self.fast:
            adj = self.graph_cache.get(edge_index, x.size(0), _gcn_operator)
            return super().forward(x, adj)
        ei, w = gcn_norm(edge_index, None, x.size(0), add_self_loops=True)
        return super().forward(x, ei, edge_weight=w)


def _mean_operator(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Row-normalised adjacency [target, source]: A @ x is the mean over in-neighbours,
    multi-edges counted as often as they occur (as PyG's scatter mean does)."""
    target = edge_index[1]
    deg = torch.zeros(num_nodes, dtype=torch.float, device=edge_index.device)
    deg.index_add_(0, target, torch.ones_like(target, dtype=torch.float))
    weight = 1.0 / deg[target]
    return to_torch_csr_tensor(edge_index.flip(0), weight, size=(num_nodes, num_nodes))


class MeanSAGEConv(SAGEConv):
    """SAGEConv that takes a row-normalised CSR adjacency: the mean becomes one sparse product."""

    def message_and_aggregate(self, adj_t: Any, x: Any) -> Tensor:
        if isinstance(adj_t, Tensor) and adj_t.layout == torch.sparse_csr:
            return spmm(adj_t, x[0], reduce="sum")
        return super().message_and_aggregate(adj_t, x)


class GraphSAGE(FromConfig, pyg_models.GraphSAGE):
    """GraphSAGE with mean aggregation."""

    uses_graph: ClassVar[bool] = True

    def init_conv(self, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
        return MeanSAGEConv(in_channels, out_channels, aggr="mean", **kwargs)

    def forward(self, x: Tensor, edge_index: Tensor, **kwargs: Any) -> Tensor:  # type: ignore[override]
        if self.fast and not kwargs:
            adj = self.graph_cache.get(edge_index, x.size(0), _mean_operator)
            return super().forward(x, adj)
        return super().forward(x, edge_index, **kwargs)


MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "gcn": GCN,
    "sage": GraphSAGE,
}


def build_model(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    return MODELS[cfg.name].from_config(cfg, in_channels, out_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["GCN", "MLP", "GraphSAGE", "MODELS", "build_model", "count_parameters"]
