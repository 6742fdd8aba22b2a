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
from torch_geometric.nn import CorrectAndSmooth as PyGCorrectAndSmooth
from torch_geometric.nn import GATConv, GCN2Conv, GCNConv, Linear, SAGEConv, SGConv
from torch_geometric.nn import LabelPropagation as PyGLabelPropagation
from torch_geometric.nn import models as pyg_models
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from gnn.config import Config, ModelConfig, did_you_mean, show
from gnn.errors import ConfigError
from gnn.kernels import (
    FastDropout,
    GraphCache,
    SparseAwareLinear,
    adjacency_operator,
    feature_dropout,
    gcn_operator,
    linear,
    mean_operator,
    personalized_pagerank,
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
    #: Whether ``model.input_dropout`` (dropout on the input features while training, as
    #: Kipf & Welling's and Shchur et al.'s implementations do) applies to this model.
    takes_input_dropout: ClassVar[bool] = False

    def __init__(self, *args: Any, fast: bool = True, input_dropout: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast, self.input_dropout = fast, input_dropout
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
        if cls.takes_input_dropout:
            kwargs["input_dropout"] = cfg.input_dropout
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
    """Features only: the edge index is accepted and ignored. ``input_dropout`` also drops
    input features while training (PyG's ``MLP`` drops only between layers; Shchur et al.'s
    MLP drops the input of every layer)."""

    uses_graph: ClassVar[bool] = False
    takes_input_dropout: ClassVar[bool] = True

    @classmethod
    def extra_kwargs(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {"norm": None}

    def forward(self, x: Tensor, edge_index: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return super().forward(feature_dropout(x, self.input_dropout, self.training))


class CSRGCNConv(GCNConv):
    """GCNConv that, given the normalised CSR operator, is ``A (X W) + b`` in two calls:
    :func:`propagate` (cached transpose) without ``MessagePassing.propagate``'s per-call
    bookkeeping, which on Cora costs as much as the arithmetic."""

    def forward(self, x: Tensor, edge_index: Any, edge_weight: Tensor | None = None) -> Tensor:
        if not (isinstance(edge_index, Tensor) and edge_index.layout == torch.sparse_csr):
            return super().forward(x, edge_index, edge_weight)
        return propagate(edge_index, self.lin(x), self.bias)


class GCN(FromConfig, pyg_models.GCN):
    """Kipf & Welling GCN; the normalisation is computed here, once per graph when ``fast``.
    PyG's ``GCN`` drops only between layers; ``input_dropout`` drops the features too, as Kipf
    & Welling's implementation does."""

    uses_graph: ClassVar[bool] = True
    takes_input_dropout: ClassVar[bool] = True

    def init_conv(self, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
        return CSRGCNConv(in_channels, out_channels, normalize=False, **kwargs)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:  # type: ignore[override]
        x = feature_dropout(x, self.input_dropout, self.training)
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
    takes_input_dropout: ClassVar[bool] = False  # ``dropout`` drops its features too

    def __init__(self, *args: Any, K: int = 10, alpha: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Klicpera et al. drop the features with the hidden layer's rate: the MLP's own input
        # dropout (PyG's MLP keeps one rate per layer)
        self.input_dropout = self.dropout[0] if isinstance(self.dropout, list) else self.dropout
        self.prop = APPNPPropagation(K, alpha, normalize=False)

    @classmethod
    def extra_kwargs(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {**super().extra_kwargs(cfg), "K": cfg.K, "alpha": cfg.alpha}

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:  # type: ignore[override]
        h = super().forward(x)
        if self.fast:
            adj = self.graph_cache.get(edge_index, gcn_operator, x.size(0))
            return personalized_pagerank(adj, h, self.prop.K, self.prop.alpha)
        ei, w = gcn_norm(edge_index, None, x.size(0), add_self_loops=True)
        return self.prop(h, ei, w)


def label_matrix(labels: Tensor) -> tuple[Tensor, Tensor]:
    """The labelled nodes (mask) and their one-hot rows, from the ``[N, C]`` one-hot training
    labels (zero rows for every other node) that label-using models receive."""
    mask = labels.sum(-1) > 0
    return mask, labels[mask]


def probabilities_to_logits(p: Tensor) -> Tensor:
    """Logits whose softmax is ``p`` normalised per row (argmax unchanged); a row with no mass
    (a node no label reaches) becomes uniform."""
    p = p.clamp(min=0.0)
    total = p.sum(-1, keepdim=True)
    q = torch.where(total > 0, p / total.clamp(min=1e-30), 1.0 / p.size(-1))
    return q.clamp(min=1e-12).log()


class LabelPropagation(nn.Module):
    """Zhou et al.'s label propagation (PyG's ``LabelPropagation``): the one-hot training labels
    spread ``K`` steps over the symmetric-normalised graph, each step returning a fraction
    ``alpha`` to them. It has no parameters and does not train: its fit is this propagation
    (:func:`gnn.training.fit` times it as the training loop). Features are ignored."""

    uses_graph: ClassVar[bool] = True
    uses_labels: ClassVar[bool] = True
    trains: ClassVar[bool] = False

    def __init__(self, K: int = 50, alpha: float = 0.1, fast: bool = True) -> None:
        super().__init__()
        self.prop = PyGLabelPropagation(K, 1.0 - alpha)  # PyG's alpha keeps the propagated part
        self.fast = fast
        self.graph_cache = GraphCache()

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
        return cls(K=cfg.K, alpha=cfg.alpha, fast=cfg.fast)

    def reset_parameters(self) -> None:
        self.graph_cache.clear()

    def forward(self, x: Tensor, edge_index: Tensor, labels: Tensor) -> Tensor:
        adj = self.graph_cache.get(edge_index, adjacency_operator, x.size(0)) if self.fast \
            else edge_index
        return probabilities_to_logits(self.prop(labels, adj))


class CorrectAndSmooth(MLP):
    """Huang et al.'s Correct and Smooth on an MLP: the MLP trains on features alone; its
    predictions (in eval mode) are corrected by the propagated training residuals and then
    smoothed by propagating them with the training labels clamped (PyG's
    ``CorrectAndSmooth``, ``K`` steps each, fixed scale 1). Model selection therefore sees the
    whole pipeline's validation accuracy."""

    uses_labels: ClassVar[bool] = True

    def __init__(self, *args: Any, K: int = 50, correction_alpha: float = 1.0,
                 smoothing_alpha: float = 0.8, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.post = PyGCorrectAndSmooth(K, correction_alpha, K, smoothing_alpha,
                                        autoscale=False, scale=1.0)

    @classmethod
    def extra_kwargs(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {**super().extra_kwargs(cfg), "K": cfg.K,
                "correction_alpha": cfg.correction_alpha,
                "smoothing_alpha": cfg.smoothing_alpha}

    def forward(self, x: Tensor, edge_index: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        logits = super().forward(x)
        if self.training:
            return logits
        adj = self.graph_cache.get(edge_index, adjacency_operator, x.size(0)) if self.fast \
            else edge_index
        mask, y_train = label_matrix(labels)
        y_soft = self.post.correct(logits.float().softmax(-1), y_train, mask, adj)
        return probabilities_to_logits(self.post.smooth(y_soft, y_train, mask, adj))


class SGC(nn.Module):
    """Wu et al.'s SGC (PyG's ``SGConv``): ``K`` propagation steps over the GCN-normalised
    graph, then one linear layer. With ``fast`` the propagated features are computed once per
    graph and features (training reads the same ones every epoch): a linear model."""

    uses_graph: ClassVar[bool] = True

    def __init__(self, in_channels: int, out_channels: int, K: int = 2,
                 fast: bool = True) -> None:
        super().__init__()
        self.conv = SGConv(in_channels, out_channels, K=K, cached=False)
        self.fast = fast
        self.graph_cache, self.feature_cache = GraphCache(), GraphCache()

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
        return cls(in_channels, out_channels, K=cfg.K, fast=cfg.fast)

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        self.graph_cache.clear()
        self.feature_cache.clear()

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        if not self.fast:
            return self.conv(x.to_dense() if x.layout == torch.sparse_csr else x, edge_index)
        adj = self.graph_cache.get(edge_index, gcn_operator, x.size(0))
        return self.conv.lin(sgc_features(self.feature_cache, x, adj, edge_index, self.conv.K))


def sgc_features(cache: GraphCache, x: Tensor, adj: Tensor, edge_index: Tensor,
                 K: int) -> Tensor:
    """SGC's features ``adj^K x`` (dense), computed once per graph and features in ``cache``:
    keyed on the graph and on where the features live, not on their version counter (torch
    bumps a CSR tensor's version when it is read densely under inference_mode)."""
    h, _ = cache.get(edge_index, lambda *_: (_propagated(x, adj, K), x), *_storage_key(x))
    return h


def _propagated(x: Tensor, adj: Tensor, K: int) -> Tensor:
    # a normal tensor even when first computed for an evaluation, so training can use it
    with torch.inference_mode(False), torch.no_grad():
        h = x.to_dense() if x.layout == torch.sparse_csr else x
        for _ in range(K):
            h = propagate(adj, h)
    return h


def _storage_key(x: Tensor) -> tuple[Any, ...]:
    """Where a (CSR or dense) tensor's data lives, and its shape (the cache holds the tensor,
    so the memory cannot be reused by another one while the key is kept)."""
    parts = (x.crow_indices(), x.col_indices(), x.values()) if x.layout == torch.sparse_csr \
        else (x,)
    return (*(p.data_ptr() for p in parts), tuple(x.shape), x.device)


class CSRGCN2Conv(GCN2Conv):
    """GCN2Conv (shared weights) that, given the normalised CSR operator, propagates with
    :func:`propagate` (cached transpose for the backward)."""

    def forward(self, x: Tensor, x_0: Tensor, edge_index: Any,  # type: ignore[override]
                edge_weight: Tensor | None = None) -> Tensor:
        if not (isinstance(edge_index, Tensor) and edge_index.layout == torch.sparse_csr) \
                or self.weight2 is not None:
            return super().forward(x, x_0, edge_index, edge_weight)
        out = (1 - self.alpha) * propagate(edge_index, x) + self.alpha * x_0
        return torch.addmm(out, out, self.weight1, beta=1.0 - self.beta, alpha=self.beta)


class GCNII(nn.Module):
    """Chen et al.'s GCNII: a linear layer in, ``num_layers`` ``GCN2Conv`` layers (initial
    residual ``alpha``, identity mapping ``theta / layer``), a linear layer out; dropout before
    every layer. :meth:`param_groups` applies ``weight_decay`` to the linear layers and
    ``conv_weight_decay`` to the convolutions, as the paper's recipe does."""

    uses_graph: ClassVar[bool] = True

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int,
                 num_layers: int = 64, alpha: float = 0.1, theta: float = 0.5,
                 dropout: float = 0.6, fast: bool = True) -> None:
        super().__init__()
        self.lins = nn.ModuleList([Linear(in_channels, hidden_channels),
                                   Linear(hidden_channels, out_channels)])
        self.convs = nn.ModuleList([
            CSRGCN2Conv(hidden_channels, alpha, theta, layer + 1, shared_weights=True,
                        normalize=not fast) for layer in range(num_layers)])
        self.dropout, self.fast = nn.Dropout(dropout), fast
        self.graph_cache = GraphCache()
        _sparse_aware(self)  # FastDropout: drawing dropout masks was a third of an epoch

    @classmethod
    def from_config(cls, cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
        return cls(in_channels, cfg.hidden_channels, out_channels, num_layers=cfg.num_layers,
                   alpha=cfg.alpha, theta=cfg.theta, dropout=cfg.dropout, fast=cfg.fast)

    def reset_parameters(self) -> None:
        for module in (*self.lins, *self.convs):
            module.reset_parameters()
        self.graph_cache.clear()

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        adj = self.graph_cache.get(edge_index, gcn_operator, x.size(0)) if self.fast \
            else edge_index
        h = x_0 = torch.relu(self.lins[0](feature_dropout(x, self.dropout.p, self.training)))
        for conv in self.convs:
            h = torch.relu(conv(self.dropout(h), x_0, adj))
        return self.lins[1](self.dropout(h))

    def param_groups(self, weight_decay: float, conv_weight_decay: float) -> list[dict[str, Any]]:
        return [{"params": list(self.lins.parameters()), "weight_decay": weight_decay},
                {"params": list(self.convs.parameters()), "weight_decay": conv_weight_decay}]


MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "gcn": GCN,
    "sage": GraphSAGE,
    "gat": GAT,
    "appnp": APPNP,
    "sgc": SGC,
    "lp": LabelPropagation,
    "cs": CorrectAndSmooth,
    "gcnii": GCNII,
}


def check_model_config(cfg: Config) -> None:
    """The model name is one of the registry's, and sampling and input dropout are only asked
    of a model that has them."""
    name = cfg.model.name
    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model {show(name)}{did_you_mean(name, MODELS)}; "
                          f"choose from {', '.join(sorted(MODELS))}")
    if cfg.model.input_dropout and not getattr(MODELS[name], "takes_input_dropout", False):
        able = sorted(n for n, m in MODELS.items() if getattr(m, "takes_input_dropout", False))
        raise ConfigError(f"model.input_dropout: model {name!r} has no input dropout of its "
                          f"own; use it with {', '.join(able)}")
    if cfg.sampler.enabled and not getattr(MODELS[name], "supports_sampling", False):
        able = sorted(n for n, m in MODELS.items() if getattr(m, "supports_sampling", False))
        raise ConfigError(f"sampler.enabled: model {name!r} does not train on sampled "
                          f"mini-batches; use one of {', '.join(able)}")


def build_model(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    return MODELS[cfg.name].from_config(cfg, in_channels, out_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["APPNP", "GAT", "GCN", "GCNII", "MLP", "MODELS", "SGC", "CorrectAndSmooth", "GraphSAGE",
           "LabelPropagation", "build_model", "check_model_config", "count_parameters",
           "sgc_features"]
