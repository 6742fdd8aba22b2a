"""Sparse kernels behind the fast model paths: cached graph operators and CSR products.

On Cora a training step is mostly per-operation overhead, not arithmetic, so the models keep
what depends only on the graph (the normalised CSR adjacency and its transpose) in a
:class:`GraphCache` and run their layers as single sparse products (:func:`propagate`,
:func:`linear`) with hand-written backwards that reuse the cached transposes; torch would
otherwise re-sort the sparse matrix into its transpose in every backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import Linear
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_torch_csr_tensor

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
        self._source: tuple[Tensor, tuple[Any, ...]] | None = None

    @torch.compiler.disable  # a Python-side cache: torch.compile runs it eagerly
    def get(self, tensor: Tensor, build: Any, *args: Any) -> Any:
        """``build(tensor, *args)``, rebuilt when ``tensor`` or an argument changes (tensor
        arguments are compared by identity and version, like ``tensor``, and held too)."""
        key = (*_tensor_key(tensor),
               *(_tensor_key(a) if isinstance(a, Tensor) else a for a in args))
        if key != self._key:
            self._value, self._key, self._source = build(tensor, *args), key, (tensor, args)
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


def pattern_transpose(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The CSR transpose of ``x``'s pattern and, for each of its entries, the position of the
    same entry in ``x``: a matrix of that pattern with other values (``x`` after dropout, a
    member's features) transposes by one gather (:func:`transpose_values`)."""
    return _transpose_pattern(x.col_indices(), x.crow_indices(), x.size(0), x.size(1))


def _transpose_pattern(col: Tensor, crow: Tensor, rows: int,
                       cols: int) -> tuple[Tensor, Tensor, Tensor]:
    positions = torch.arange(col.numel(), dtype=torch.float64, device=col.device)
    marked = torch.sparse_csr_tensor(crow, col, positions, (rows, cols))
    t = marked.t().to_sparse_csr()
    return t.crow_indices(), t.col_indices(), t.values().long()


def transpose_values(values: Tensor, transpose: tuple[Tensor, Tensor, Tensor],
                     shape: tuple[int, int]) -> Tensor:
    """The CSR transpose, of shape ``shape``, of a matrix with the pattern ``transpose`` was
    made from (:func:`pattern_transpose`) and the values ``values``."""
    crow, col, order = transpose
    return torch.sparse_csr_tensor(crow, col, values[order], shape)


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


class _PersonalizedPageRank(torch.autograd.Function):
    """``K`` steps of ``out = (1 - alpha) A out + alpha h`` (the last one through ``last``, the
    operator's rows that are read) as one autograd node: each step, forward and backward, is
    one fused ``addmm``, and nothing is saved between steps. Unrolled under autograd every step
    was a product, two scalings and an add with their own backward nodes: about 2.5x the cost.

    The backward is the same recurrence with the transposes: with ``u = (1 - alpha)
    last^T g``, ``K - 1`` steps of ``t = (1 - alpha) A^T t + alpha u`` give the gradient that
    reaches ``h`` through the steps (Horner's scheme for ``alpha (I + B + ... + B^(K-2)) u +
    B^(K-1) u`` with ``B = (1 - alpha) A^T``), to which the last step's own ``alpha g`` is
    added at ``rows``."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, adj: Tensor, last: Tensor, rows: Tensor | None, K: int,
                alpha: float) -> Tensor:
        out = h
        for _ in range(K - 1):
            out = torch.addmm(h, adj, out, beta=alpha, alpha=1 - alpha)
        teleport = h if rows is None else h.index_select(0, rows)
        ctx.adj, ctx.last, ctx.rows, ctx.K, ctx.alpha = adj, last, rows, K, alpha
        return torch.addmm(teleport, last, out, beta=alpha, alpha=1 - alpha)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None, None]:
        alpha, grad = ctx.alpha, grad.contiguous()
        u = torch.sparse.mm(ctx.last.gnn_transpose, grad).mul_(1 - alpha)
        t = u
        for _ in range(ctx.K - 1):
            t = torch.addmm(u, ctx.adj.gnn_transpose, t, beta=alpha, alpha=1 - alpha)
        if ctx.rows is None:
            return t.add_(grad, alpha=alpha), None, None, None, None, None
        return t.index_add_(0, ctx.rows, grad, alpha=alpha), None, None, None, None, None


def personalized_pagerank(adj: Tensor, h: Tensor, K: int, alpha: float,
                          rows: Tensor | None = None, last: Tensor | None = None) -> Tensor:
    """APPNP's propagation of ``h [N, C]`` over the CSR operator ``adj`` (its transpose
    attached by :func:`with_transpose`): ``K`` steps of personalised PageRank with teleport
    ``alpha``. With ``rows`` only those rows of the result are computed, the last step reading
    ``last``, the operator's rows ``rows`` (with their transpose attached)."""
    if K == 0:
        return h if rows is None else h.index_select(0, rows)
    return _PersonalizedPageRank.apply(h, adj, adj if last is None else last, rows, K, alpha)


#: The largest dense propagation matrix :class:`PageRankRows` keeps (it keeps its transpose
#: too): Cora's training rows take 1.5 MB.
MAX_DENSE_ROWS_BYTES = 64 * 2**20


class PageRankRows:
    """Rows ``rows`` of APPNP's ``K``-step propagation as one dense matrix ``P [R, N]`` (and
    its transpose for the backward), computed once: the propagation of logits ``h [N, C]`` to
    those rows is then ``P @ h``, one dense product each way instead of ``K`` sparse ones. On
    Cora's 140 training rows and 20 members (140 columns), forward and backward take 3.5 ms on
    one thread and 1.9 ms on two, against 7.0 and 4.9 ms for the steps: the dense product does
    more arithmetic (``R N`` against ``K nnz(A)`` a column) at several times the rate.
    :meth:`pays` says when the matrix is small enough to be worth it.

    ``P = sum_k c_k A^k``, so ``P[rows]^T`` is the same recurrence over ``A^T`` started from the
    rows' unit vectors; the result equals the steps' to float32 rounding, summed in another
    order."""

    def __init__(self, adj: Tensor, rows: Tensor, K: int, alpha: float) -> None:
        units = torch.zeros(adj.size(0), len(rows), dtype=adj.dtype, device=adj.device)
        units[rows, torch.arange(len(rows), device=adj.device)] = 1.0
        out = personalized_pagerank(adj.gnn_transpose, units, K, alpha)
        self.transpose, self.matrix = out, out.t().contiguous()

    @staticmethod
    def pays(adj: Tensor, rows: Tensor, K: int) -> bool:
        """Whether the dense product (``R N`` multiply-adds a column) is cheaper than the steps
        (``K nnz(A)``). Measured on Cora (forward and backward, 140 columns, one and two
        threads): at 2.9 times their count it took 0.4-0.5 of their time, at 5.7 times
        0.75-0.93, at 8.6 times 1.1-1.4; so up to 6 times, and at most
        :data:`MAX_DENSE_ROWS_BYTES`, for a large graph's sake."""
        size = len(rows) * adj.size(0)
        return hasattr(adj, "gnn_transpose") and size <= 6 * K * adj.values().numel() \
            and size * adj.element_size() <= MAX_DENSE_ROWS_BYTES

    def __call__(self, h: Tensor) -> Tensor:
        return _DenseRowsProduct.apply(h, self.matrix, self.transpose)


class _DenseRowsProduct(torch.autograd.Function):
    """``matrix @ h`` whose backward reads the stored transpose (``matrix.t() @ grad`` on a
    strided view cost 1.6x the contiguous product)."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, matrix: Tensor, transpose: Tensor) -> Tensor:
        ctx.transpose = transpose
        return matrix @ h

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return ctx.transpose @ grad, None, None


def _contiguous_transpose(weight: Tensor) -> Tensor:
    return weight.t().contiguous()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, owner: nn.Module) -> Tensor:
    """``F.linear`` that also serves sparse CSR input (features 98.7% zeros on Cora) with a
    cheap backward. ``owner`` keeps two caches: the transpose of ``x`` (for the weight
    gradient, while ``x`` stays the same) and, for inference, the weight transposed into the
    row-major layout the sparse kernel reads (while the weight stays the same)."""
    if x.layout != torch.sparse_csr:
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and weight.requires_grad:
        out = _CSRMatmulT.apply(x, _input_transpose(x, owner), weight)
    else:
        w_cache = owner.__dict__.setdefault("_w_transpose", GraphCache())
        out = sparse_mm(x, w_cache.get(weight, _contiguous_transpose))
    return out if bias is None else out + bias


@torch.compiler.disable  # builds a sparse tensor from a Python-side cache: run eagerly
def _input_transpose(x: Tensor, owner: nn.Module) -> Tensor:
    """``x``'s CSR transpose. Its pattern's transpose is cached in ``owner`` while the
    pattern stays the same: input dropout gives new values every step, not a new pattern,
    and a transpose rebuilt every step cost about a tenth of a GAT epoch on Cora."""
    cache = owner.__dict__.setdefault("_x_pattern_transpose", GraphCache())
    transpose = cache.get(x.col_indices(), _transpose_pattern, x.crow_indices(), x.size(0),
                          x.size(1))
    return transpose_values(x.values(), transpose, (x.size(1), x.size(0)))


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


def csr_rows(a: Tensor, rows: Tensor) -> Tensor:
    """Rows ``rows`` of CSR matrix ``a`` as a CSR matrix, each row's entries in their order."""
    crow, col, values = a.crow_indices(), a.col_indices(), a.values()
    starts, counts = crow[rows], crow[rows + 1] - crow[rows]
    new_crow = torch.zeros(len(rows) + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(counts, 0, out=new_crow[1:])
    total = int(new_crow[-1])
    index = torch.repeat_interleave(starts - new_crow[:-1], counts, output_size=total) \
        + torch.arange(total, dtype=crow.dtype, device=crow.device)
    return torch.sparse_csr_tensor(new_crow, col[index], values[index], (len(rows), a.size(1)))


def gcn_operator(edge_index: Tensor, num_nodes: int) -> Tensor:
    """D^-1/2 (A + I) D^-1/2 as a CSR matrix indexed [target, source]."""
    ei, w = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    return with_transpose(to_torch_csr_tensor(ei.flip(0), w, size=(num_nodes, num_nodes)))


def adjacency_operator(edge_index: Tensor, num_nodes: int) -> Tensor:
    """The unweighted adjacency [target, source] as a CSR matrix (multi-edges summed), the
    transposed operator PyG's sparse message passing reads; label propagation normalises it."""
    ones = torch.ones(edge_index.size(1), device=edge_index.device)  # without values PyG
    # keeps one copy of a repeated edge; with them the copies are summed, as scatter does
    return to_torch_csr_tensor(edge_index.flip(0), ones, size=(num_nodes, num_nodes))


def mean_operator(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Row-normalised adjacency [target, source]: A @ x is the mean over in-neighbours,
    multi-edges counted as often as they occur (as PyG's scatter mean does)."""
    target = edge_index[1]
    deg = torch.zeros(num_nodes, dtype=torch.float, device=edge_index.device)
    deg.index_add_(0, target, torch.ones_like(target, dtype=torch.float))
    weight = 1.0 / deg[target]
    return with_transpose(to_torch_csr_tensor(edge_index.flip(0), weight,
                                              size=(num_nodes, num_nodes)))


def feature_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout on input features that may be a sparse CSR matrix (``F.dropout`` rejects those):
    dropping stored values only is the same as dense dropout, since zeros stay zero."""
    if not training or p == 0.0:
        return x
    if x.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(),
                                       F.dropout(x.values(), p, training), x.size())
    return F.dropout(x, p, training)
