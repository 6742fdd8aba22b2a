"""Models: thin subclasses of PyG's ready models, one registry.

Every model takes ``forward(x, edge_index)`` with a ``[2, E]`` edge index (edges point
source -> target, as in PyG) and has ``reset_parameters``. A model with ``fast=True`` turns the
edge index once into the sparse CSR operator its convolution needs (normalised adjacency for GCN,
row-normalised adjacency for GraphSAGE, the propagation matrix of APPNP) and keeps it until a
different graph comes in; the result equals the plain PyG path up to float rounding
(``tests/test_models.py`` checks it). GAT has no such operator and always runs the PyG path.

Adding a model: one class with ``from_config`` (or the default one) and one line in ``MODELS``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import APPNP as APPNPPropagation
from torch_geometric.nn import GATConv, SAGEConv
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
        kwargs: dict[str, Any] = {
            "in_channels": in_channels, "hidden_channels": cfg.hidden_channels,
            "num_layers": cfg.num_layers, "out_channels": out_channels,
            "dropout": cfg.dropout, "fast": cfg.fast}
        kwargs.update(cls.extra_kwargs(cfg))  # a model may also override the defaults
        return cls(**kwargs)

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


def feature_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout on input features that may be a sparse CSR matrix (``F.dropout`` rejects those):
    dropping stored values only is the same as dense dropout, since zeros stay zero."""
    if not training or p == 0.0:
        return x
    if x.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(),
                                       F.dropout(x.values(), p, training), x.size())
    return F.dropout(x, p, training)


class GAT(FromConfig, pyg_models.GAT):
    """Velickovic et al.'s GAT: ``heads`` concatenated heads of ``hidden_channels`` each, one
    output head; dropout on every layer's input and, separately, on the attention weights.

    ``fast`` changes nothing here: ``GATConv`` has no precomputable operator (attention weights
    depend on the features), so both settings run the plain PyG path.
    """

    uses_graph: ClassVar[bool] = True

    @classmethod
    def extra_kwargs(cls, cfg: ModelConfig) -> dict[str, Any]:
        # hidden_channels is per head, so any head count is valid (no divisibility rule).
        return {"hidden_channels": cfg.hidden_channels * cfg.heads, "heads": cfg.heads,
                "attn_dropout": cfg.attn_dropout}

    def init_conv(self, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
        heads, attn_dropout = kwargs.pop("heads", 1), kwargs.pop("attn_dropout", 0.0)
        if getattr(self, "_is_conv_to_out", False):  # set by BasicGNN before the last layer
            return GATConv(in_channels, out_channels, heads=1, concat=False,
                           dropout=attn_dropout, **kwargs)
        return GATConv(in_channels, out_channels // heads, heads=heads, dropout=attn_dropout,
                       **kwargs)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:  # type: ignore[override]
        # BasicGNN drops out hidden features only; the GAT recipe also drops the input's.
        return super().forward(feature_dropout(x, self.dropout.p, self.training), edge_index)


def _gcn_operator_pair(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """The GCN operator and its transpose, both CSR (for :class:`SparseMatmul`)."""
    ei, w = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    size = (num_nodes, num_nodes)
    return to_torch_csr_tensor(ei.flip(0), w, size=size), to_torch_csr_tensor(ei, w, size=size)


class SparseMatmul(torch.autograd.Function):
    """``adj @ h`` for a constant CSR ``adj`` whose backward uses a precomputed transpose:
    torch transposes the CSR matrix on every backward otherwise, which on Cora costs about 100
    times the product itself (2.5 ms against 0.02 ms), once per propagation step."""

    @staticmethod
    def forward(ctx: Any, adj: Tensor, adj_t: Tensor, h: Tensor) -> Tensor:
        ctx.save_for_backward(adj_t)
        return adj @ h

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor]:
        (adj_t,) = ctx.saved_tensors
        return None, None, adj_t @ grad


class APPNP(MLP):
    """Klicpera et al.'s APPNP: an MLP predicts, then ``K`` steps of personalised PageRank with
    teleport ``alpha`` propagate the predictions over the GCN-normalised graph. With ``fast``
    the operator and its transpose are cached per graph and the steps run as
    :class:`SparseMatmul` products (the same sums as PyG's ``APPNP``, a fraction of its
    backward time)."""

    uses_graph: ClassVar[bool] = True

    def __init__(self, *args: Any, K: int = 10, alpha: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prop = APPNPPropagation(K, alpha, normalize=False)

    @classmethod
    def extra_kwargs(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {**super().extra_kwargs(cfg), "K": cfg.K, "alpha": cfg.alpha}

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:  # type: ignore[override]
        dropout = self.dropout[0] if isinstance(self.dropout, list) else self.dropout
        h = super().forward(feature_dropout(x, dropout, self.training))
        if self.fast:
            adj, adj_t = self.graph_cache.get(edge_index, x.size(0), _gcn_operator_pair)
            out, alpha = h, self.prop.alpha
            for _ in range(self.prop.K):
                out = (1 - alpha) * SparseMatmul.apply(adj, adj_t, out) + alpha * h
            return out
        ei, w = gcn_norm(edge_index, None, x.size(0), add_self_loops=True)
        return self.prop(h, ei, w)


MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "gcn": GCN,
    "sage": GraphSAGE,
    "gat": GAT,
    "appnp": APPNP,
}


def build_model(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    return MODELS[cfg.name].from_config(cfg, in_channels, out_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["APPNP", "GAT", "GCN", "MLP", "GraphSAGE", "MODELS", "build_model", "count_parameters"]
