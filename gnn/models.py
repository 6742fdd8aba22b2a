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
from torch_geometric.nn import GATConv, GCNConv, Linear, SAGEConv
from torch_geometric.nn import models as pyg_models
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from gnn.config import Config, ModelConfig, did_you_mean, show
from gnn.errors import ConfigError
from gnn.kernels import (
    FastDropout,
    GraphCache,
    SparseAwareLinear,
    feature_dropout,
    gcn_operator,
    linear,
    mean_operator,
    propagate,
)


def _sparse_aware(module: nn.Module) -> None:
    for sub in module.modules():
        if type(sub) is Linear:
            sub.__class__ = SparseAwareLinear  # same parameters, one extra input layout
        elif type(sub) is nn.Dropout:
            sub.__class__ = FastDropout


class FromConfig:
    """Default constructor from a :class:`ModelConfig` for PyG's ``BasicGNN``-style models."""

    #: Whether ``forward`` accepts PyG's per-hop trimming arguments and ``inference`` works
    #: layer-wise on sampled one-hop subgraphs (needed for neighbour-sampled training).
    supports_sampling: ClassVar[bool] = False

    def __init__(self, *args: Any, fast: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast = fast
        self.graph_cache = GraphCache()
        # BasicGNN stacks without norm layers or jumping knowledge can skip its general loop
        self.plain_stack = hasattr(self, "convs") and not (
            hasattr(self, "jk") or hasattr(self, "lin") or self.act_first) and all(
            isinstance(norm, nn.Identity) for norm in self.norms)
        _sparse_aware(self)

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

    def _stack(self, x: Tensor, adj: Tensor) -> Tensor:
        """``BasicGNN.forward`` for a plain stack (no norm layers, no jumping knowledge) on a
        prepared sparse operator, without the per-layer checks of the general loop: on Cora
        they cost a fifth of a whole forward pass."""
        if not self.plain_stack:
            return super().forward(x, adj)
        last = self.num_layers - 1
        for i, conv in enumerate(self.convs):
            x = conv(x, adj)
            if i < last:
                x = self.dropout(self.act(x))
        return x

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


class CSRGCNConv(GCNConv):
    """GCNConv that, given the normalised CSR operator, is ``A (X W) + b`` in two calls:
    :func:`propagate` (cached transpose) without ``MessagePassing.propagate``'s per-call
    bookkeeping, which on Cora costs as much as the arithmetic."""

    def forward(self, x: Tensor, edge_index: Any, edge_weight: Tensor | None = None) -> Tensor:
        if not (isinstance(edge_index, Tensor) and edge_index.layout == torch.sparse_csr):
            return super().forward(x, edge_index, edge_weight)
        return propagate(edge_index, self.lin(x), self.bias)


class GCN(FromConfig, pyg_models.GCN):
    """Kipf & Welling GCN; the normalisation is computed here, once per graph when ``fast``."""

    uses_graph: ClassVar[bool] = True

    def init_conv(self, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
        return CSRGCNConv(in_channels, out_channels, normalize=False, **kwargs)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:  # type: ignore[override]
        if self.fast:
            return self._stack(x, self.graph_cache.get(edge_index, gcn_operator, x.size(0)))
        ei, w = gcn_norm(edge_index, None, x.size(0), add_self_loops=True)
        return super().forward(x, ei, edge_weight=w)


class MeanSAGEConv(SAGEConv):
    """SAGEConv that also takes a row-normalised CSR adjacency (the mean becomes one sparse
    product) and then applies ``lin_l`` before aggregating when that is cheaper (sparse or wide
    input): ``A (X W) + b`` equals ``(A X) W + b``, with far less arithmetic."""

    def forward(self, x: Any, edge_index: Any, size: Any = None) -> Tensor:
        csr = isinstance(edge_index, Tensor) and edge_index.layout == torch.sparse_csr
        if not (csr and isinstance(x, Tensor) and not self.project):
            return super().forward(x, edge_index, size)
        if x.layout != torch.strided or self.in_channels > self.out_channels:
            out = propagate(edge_index, linear(x, self.lin_l.weight, None, self.lin_l),
                            self.lin_l.bias)
        else:
            out = self.lin_l(propagate(edge_index, x))
        if self.root_weight:
            out = out + self.lin_r(x)
        if self.normalize:
            out = F.normalize(out, p=2.0, dim=-1)
        return out


class GraphSAGE(FromConfig, pyg_models.GraphSAGE):
    """GraphSAGE with mean aggregation; trains on sampled mini-batches too."""

    uses_graph: ClassVar[bool] = True
    supports_sampling: ClassVar[bool] = True

    def init_conv(self, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
        return MeanSAGEConv(in_channels, out_channels, aggr="mean", **kwargs)

    def forward(self, x: Tensor, edge_index: Tensor, **kwargs: Any) -> Tensor:  # type: ignore[override]
        if self.fast and not kwargs:
            return self._stack(x, self.graph_cache.get(edge_index, mean_operator, x.size(0)))
        return super().forward(x, edge_index, **kwargs)

    @torch.no_grad()
    def inference_per_layer(self, layer: int, x: Tensor, edge_index: Tensor,
                            batch_size: int) -> Tensor:
        """In a layer-wise batch every edge points into the first ``batch_size`` nodes, so the
        layer is applied to those targets only (a bipartite call), not to every sampled node
        and then sliced: about ``fanout`` times less work in full-graph inference."""
        return super().inference_per_layer(layer, (x, x[:batch_size]), edge_index, batch_size)


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


class APPNP(MLP):
    """Klicpera et al.'s APPNP: an MLP predicts, then ``K`` steps of personalised PageRank with
    teleport ``alpha`` propagate the predictions over the GCN-normalised graph. With ``fast``
    the operator and its transpose are cached per graph and the steps run as
    :func:`propagate` products (the same sums as PyG's ``APPNP``; torch would otherwise transpose
    the sparse matrix in every step's backward, about 100 times the product's cost)."""

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
            adj = self.graph_cache.get(edge_index, gcn_operator, x.size(0))
            out, alpha = h, self.prop.alpha
            for _ in range(self.prop.K):
                out = (1 - alpha) * propagate(adj, out) + alpha * h
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


def check_model_config(cfg: Config) -> None:
    """The model name is one of the registry's, and sampling is only asked of a model that
    trains on sampled mini-batches."""
    name = cfg.model.name
    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model {show(name)}{did_you_mean(name, MODELS)}; "
                          f"choose from {', '.join(sorted(MODELS))}")
    if cfg.sampler.enabled and not getattr(MODELS[name], "supports_sampling", False):
        able = sorted(n for n, m in MODELS.items() if getattr(m, "supports_sampling", False))
        raise ConfigError(f"sampler.enabled: model {name!r} does not train on sampled "
                          f"mini-batches; use one of {', '.join(able)}")


def build_model(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    return MODELS[cfg.name].from_config(cfg, in_channels, out_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["APPNP", "GAT", "GCN", "MLP", "MODELS", "GraphSAGE", "build_model", "check_model_config",
           "count_parameters"]
