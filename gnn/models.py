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
from torch_geometric.utils import to_torch_csr_tensor

from gnn.config import ModelConfig

# Explicitly keep torch's default (no invariant checks on every sparse constructor): our CSR
# operators are built by PyG from coalesced indices. Saying so silences a per-call warning.
torch.sparse.check_sparse_tensor_invariants.disable()


def _version(t: Tensor) -> int | None:
    """In-place modification counter; tensors made under ``torch.inference_mode`` have none."""
    return None if t.is_inference() else t._version


def _tensor_key(t: Tensor) -> tuple[Any, ...]:
    """Identity of a tensor's current contents: storage, version, shape, device."""
    if t.layout == torch.sparse_csr:
        parts = (t.crow_indices(), t.col_indices(), t.values())
        return (*(p.data_ptr() for p in parts), _version(t.values()), tuple(t.shape), t.device)
    return (t.data_ptr(), _version(t), tuple(t.shape), t.device)


class GraphCache:
    """Keeps one derived sparse operator per graph; a new or modified edge index rebuilds it.

    The source tensor is held while cached, so its memory cannot be freed and handed to a new
    tensor of the same shape, which would otherwise match the key (address, version 0, shape).
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._value: Any = None
        self._source: Tensor | None = None

    @torch.compiler.disable  # a Python-side cache: torch.compile runs it eagerly
    def get(self, tensor: Tensor, build: Any, *args: Any) -> Any:
        key = (*_tensor_key(tensor), *args)
        if key != self._key:
            self._value, self._key, self._source = build(tensor, *args), key, tensor
        return self._value

    def clear(self) -> None:
        self._key = self._value = self._source = None


def sparse_mm(a: Tensor, b: Tensor) -> Tensor:
    """Sparse @ dense in the sparse matrix's precision: under autocast (half-precision
    inference) the dense layers run in bf16/fp16 while sparse kernels, which often lack those
    types, stay in float32."""
    if not torch.is_autocast_enabled(a.device.type):
        return torch.sparse.mm(a, b)
    with torch.autocast(device_type=a.device.type, enabled=False):
        return torch.sparse.mm(a, b.to(a.dtype))


class _CSRMatmulT(torch.autograd.Function):
    """``x @ w.T`` for a CSR ``x`` whose transpose is given: the weight gradient
    ``(x.T @ grad).T`` is then one sparse product instead of a transpose per step."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, x_t: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x_t)
        return torch.sparse.mm(x, weight.t())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor]:
        (x_t,) = ctx.saved_tensors
        return None, None, torch.sparse.mm(x_t, grad).t()


def _csr_transpose(x: Tensor) -> Tensor:
    return x.t().to_sparse_csr()


def with_transpose(adj: Tensor) -> Tensor:
    """Attach the CSR transpose to a CSR operator once, for the backward of :func:`propagate`."""
    adj.gnn_transpose = _csr_transpose(adj)
    return adj


def propagate(adj: Tensor, h: Tensor, bias: Tensor | None = None) -> Tensor:
    """``adj @ h (+ bias)`` for a CSR operator; with a transpose attached the backward is one
    sparse product (torch would otherwise re-sort the matrix into its transpose every step).
    Without autograd the bias is fused into the product (``addmm``)."""
    transpose = getattr(adj, "gnn_transpose", None)
    if transpose is not None and torch.is_grad_enabled() and (
            h.requires_grad or (bias is not None and bias.requires_grad)):
        out = _CSRMatmulT.apply(adj, transpose, h.t())
        return out if bias is None else out + bias
    if bias is None or torch.is_autocast_enabled(adj.device.type):
        out = sparse_mm(adj, h)
        return out if bias is None else out + bias
    return torch.addmm(bias, adj, h)


def _contiguous_transpose(weight: Tensor) -> Tensor:
    return weight.t().contiguous()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, owner: nn.Module) -> Tensor:
    """``F.linear`` that also serves sparse CSR input (features 98.7% zeros on Cora) with a
    cheap backward. ``owner`` keeps two caches: the transpose of ``x`` (for the weight
    gradient, while ``x`` stays the same) and, for inference, the weight transposed into the
    row-major layout the sparse kernel reads (while the weight stays the same)."""
    if x.layout != torch.sparse_csr:
        return F.linear(x, weight, bias)
    x_cache = owner.__dict__.setdefault("_x_transpose", GraphCache())
    if torch.is_grad_enabled() and weight.requires_grad:
        out = _CSRMatmulT.apply(x, x_cache.get(x, _csr_transpose), weight)
    else:
        w_cache = owner.__dict__.setdefault("_w_transpose", GraphCache())
        out = sparse_mm(x, w_cache.get(weight, _contiguous_transpose))
    return out if bias is None else out + bias


class SparseAwareLinear(Linear):
    """PyG's ``Linear`` whose forward also takes CSR input efficiently (see :func:`linear`)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self)


class FastDropout(nn.Dropout):
    """Dropout drawing its mask with ``rand`` instead of ``bernoulli_``: the same distribution,
    about ten times faster on CPU, where ``bernoulli_`` was 40% of a GCN training step on Cora."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return torch.zeros_like(x)
        keep = torch.rand_like(x) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


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


def _gcn_operator(edge_index: Tensor, num_nodes: int) -> Tensor:
    """D^-1/2 (A + I) D^-1/2 as a CSR matrix indexed [target, source]."""
    ei, w = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    return with_transpose(to_torch_csr_tensor(ei.flip(0), w, size=(num_nodes, num_nodes)))


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
            return self._stack(x, self.graph_cache.get(edge_index, _gcn_operator, x.size(0)))
        ei, w = gcn_norm(edge_index, None, x.size(0), add_self_loops=True)
        return super().forward(x, ei, edge_weight=w)


def _mean_operator(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Row-normalised adjacency [target, source]: A @ x is the mean over in-neighbours,
    multi-edges counted as often as they occur (as PyG's scatter mean does)."""
    target = edge_index[1]
    deg = torch.zeros(num_nodes, dtype=torch.float, device=edge_index.device)
    deg.index_add_(0, target, torch.ones_like(target, dtype=torch.float))
    weight = 1.0 / deg[target]
    return with_transpose(to_torch_csr_tensor(edge_index.flip(0), weight,
                                              size=(num_nodes, num_nodes)))


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
            return self._stack(x, self.graph_cache.get(edge_index, _mean_operator, x.size(0)))
        return super().forward(x, edge_index, **kwargs)

    @torch.no_grad()
    def inference_per_layer(self, layer: int, x: Tensor, edge_index: Tensor,
                            batch_size: int) -> Tensor:
        """In a layer-wise batch every edge points into the first ``batch_size`` nodes, so the
        layer is applied to those targets only (a bipartite call), not to every sampled node
        and then sliced: about ``fanout`` times less work in full-graph inference."""
        return super().inference_per_layer(layer, (x, x[:batch_size]), edge_index, batch_size)


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
            adj = self.graph_cache.get(edge_index, _gcn_operator, x.size(0))
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


def build_model(cfg: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    return MODELS[cfg.name].from_config(cfg, in_channels, out_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["APPNP", "GAT", "GCN", "MLP", "GraphSAGE", "MODELS", "build_model", "count_parameters"]
