"""Batched training: M independent members of one configuration in one run.

On Cora a fit is almost all per-operation overhead, so training M members side by side makes
every operation M times wider for a fraction of M times the cost. Each member has its own
parameters (stacked on a member axis), its own initialisation (member ``m`` starts from exactly
the weights a standalone :func:`gnn.training.fit` with its seed would draw), its own dropout
masks, its own train/val/test masks (``[M, N]``), and its own best-validation epoch and selected
weights. The shared work is shared: the first layer is one CSR product ``X @ [W_1 | ... | W_M]``
and each propagation one sparse product ``A @ [H_1 | ... | H_M]``. Adam and weight decay are
element-wise, so one optimiser over the stacked parameters is exactly M optimisers, and the
loss is the sum of the members' own mean losses, so each member gets exactly its own gradient.

Activations are laid out ``[N, M * width]`` (member-major columns), the layout the sparse
products need; the per-member dense layers run as one ``bmm`` over the member axis.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import psutil
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.index import index2ptr
from torch_geometric.utils import add_self_loops, remove_self_loops, softmax, sort_edge_index

from gnn.batching import labels_on, node_features
from gnn.config import Config
from gnn.data import (
    SplitMasks,
    load_dataset,
    num_classes,
    split_masks,
    training_view,
    with_split,
)
from gnn.errors import ConfigError, TrainingError
from gnn.kernels import (
    GraphCache,
    PageRankRows,
    adjacency_operator,
    csr_rows,
    gcn_operator,
    linear,
    mean_operator,
    pattern_transpose,
    personalized_pagerank,
    propagate,
    transpose_values,
    with_transpose,
)
from gnn.metrics import member_metrics
from gnn.models import (
    MODELS,
    build_model,
    count_parameters,
    label_matrix,
    probabilities_to_logits,
    sgc_features,
)
from gnn.timing import Timer
from gnn.training import FitResult, History, fit, resolve_device, set_seed, versions
from gnn.workers import Workers, worker_state

#: Models whose members train batched; the others (sampled GraphSAGE, GCNII, label
#: propagation) train their members one after the other. SGC batches as the one linear layer
#: it is, on the propagated features it computes once; C&S as its MLP, each member's
#: evaluation post-processed with its own training labels; GAT as :class:`StackedGAT`.
BATCHABLE = ("mlp", "gcn", "sage", "appnp", "sgc", "cs", "gat")
#: Batched models whose layers read no graph (each row on its own: only the rows read are
#: computed), and those whose standalone module is PyG's ``MLP`` (weights in ``lins``).
ROW_WISE = ("mlp", "sgc", "cs")
MLP_MODULES = ("mlp", "appnp", "cs")
MAX_MEMBERS = 1_000_000
#: ``auto`` keeps ``members x hidden_channels`` at most this wide on a CPU. Measured on the
#: 2-core development CPU (Cora, 20 seeds of 200 epochs, two threads, against 20 standalone
#: fits): GCN (16 hidden) 6.3x at 20 members; MLP (64 hidden, only the rows read) 8.2x at 5
#: and 13.1x at 20; GraphSAGE (64) 3.0x at 5 and at 20. APPNP (64, member-major, its first
#: layer compiled), per member-epoch (steps with evaluation): 1.96 ms at 4, 1.68-1.78 ms at 8,
#: 1.58-1.64 ms at 16 and 20, 1.53 ms at 32. Wider stacked activations leave the caches: the
#: first layer's CSR product then reads a long row of the stacked weights per stored feature;
#: the MLP's product has 140 rows. GAT (8 heads of 8: 64 wide a member), steps with
#: evaluation per member-epoch: 3.6-4.0 ms from 5 to 40 members; 20 fits 5.4-6.2x at 20.
AUTO_WIDTH = {"mlp": 1280, "appnp": 1280, "cs": 1280, "gat": 1280}
DEFAULT_AUTO_WIDTH = 320
#: ``auto``'s members per run for SGC on a CPU: its one layer, ``members x classes`` wide,
#: reads the training or validated rows alone.
SGC_AUTO_MEMBERS = 20


def sequential_reason(cfg: Config) -> str | None:
    """Why members of this config train one after the other, or ``None`` when they batch."""
    if cfg.model.name not in BATCHABLE or cfg.sampler.enabled:
        return f"model {cfg.model.name}{' (sampled)' * cfg.sampler.enabled} does not batch"
    if cfg.train.compile:
        return "train.compile: true does not batch"
    if cfg.model.input_dropout:
        return "model.input_dropout does not batch"
    if cfg.train.select != "val_acc" or cfg.train.patience:
        return "batched members select on the best validation accuracy, without patience"
    return None


def can_batch(cfg: Config) -> bool:
    return sequential_reason(cfg) is None


def member_bytes(cfg: Config, data: Data) -> int:
    """Memory one more member needs (bytes): its activations and their gradients (about ten
    ``N x hidden`` and six ``N x classes`` float tensors per layer pair, as ``gnn scale``
    measured), its parameters with gradient, Adam's two moments and the best copy; GAT's
    attention adds per edge four weights per head (softmax, dropout, gradient, evaluation)
    and, as tensor operations, four messages as wide as its hidden layer."""
    n, h, c = data.num_nodes, member_width(cfg), num_classes(data)
    widths = 10 * h * max(cfg.model.num_layers - 1, 1) + 6 * c * (1 + cfg.model.K
                                                                   * (cfg.model.name == "appnp"))
    params = data.num_features * h + h * h * max(cfg.model.num_layers - 2, 0) + h * c
    edges = 0
    if cfg.model.name == "gat":  # the edges with a self-loop per node
        edges = (data.edge_index.size(1) + n) * 4 * (cfg.model.heads + h)
    return 4 * (n * widths + edges) + 4 * 5 * params * (2 if cfg.model.name == "sage" else 1)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def _auto_cap(cfg: Config) -> int:
    """The most members ``auto`` stacks on a CPU (see :data:`AUTO_WIDTH`)."""
    if cfg.model.name == "sgc":
        return SGC_AUTO_MEMBERS
    return max(1, AUTO_WIDTH.get(cfg.model.name, DEFAULT_AUTO_WIDTH) // member_width(cfg))


def member_width(cfg: Config) -> int:
    """A member's hidden width: ``hidden_channels``, times the heads for GAT."""
    return cfg.model.hidden_channels * (cfg.model.heads if cfg.model.name == "gat" else 1)


def resolve_members(requested: str | int, runs: int, cfg: Config, data: Data,
                    workers: int = 1) -> int:
    """How many members to train at once: ``auto`` fills half the free memory, a number is
    checked against it (one line naming the need, before any training); with ``workers``
    processes training at once, each has its share of the free memory."""
    per_member = member_bytes(cfg, data)
    free = available_bytes(torch.device(cfg.train.device)) // workers
    if requested == "auto":
        cap = min(free // 2 // max(per_member, 1), _auto_cap(cfg))
        if cfg.train.device != "cpu":  # a GPU step is launch-bound: as many as fit
            cap = free // 2 // max(per_member, 1)
        groups = math.ceil(runs / max(1, min(cap, MAX_MEMBERS)))
        return max(1, math.ceil(runs / groups))  # balanced runs, none much smaller
    members = int(requested)
    if not 1 <= members <= MAX_MEMBERS:
        raise ConfigError(f"--members: must be auto or 1..{MAX_MEMBERS}, got {members}")
    if members * per_member > free:
        raise ConfigError(f"--members: {members} members of {cfg.model.name} need about "
                          f"{members * per_member / 2**30:.1f} GiB; "
                          f"{free / 2**30:.1f} GiB is free"
                          + (f" for each of {workers} workers" if workers > 1 else ""))
    return members


# --------------------------------------------------------------------------------------------
# The stacked model


class MemberStack(nn.Module):
    """What every stack of M members shares: the members' own standalone modules, handed out
    once each by :meth:`release` with their weights (:meth:`member_state`)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = len(models)
        # a plain list, not submodules (their parameters are not the stacked ones)
        self.shells: list[nn.Module | None] = [model.cpu() for model in models]

    def member_state(self, m: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def clear_caches(self) -> None:
        """Drop what was built for the graph trained on (the final evaluation may read
        another: an inductive run's whole graph)."""

    def release(self, m: int) -> nn.Module:
        """Member ``m`` as a standalone model, in the module it was built as (a copy of a
        PyG model costs milliseconds of Python, 100 of them more than a GPU run's steps);
        each member is released once."""
        model, self.shells[m] = self.shells[m], None
        if model is None:
            raise RuntimeError(f"member {m} was already released")
        model.load_state_dict(self.member_state(m), strict=False)
        return model


class StackedModel(MemberStack):
    """M members of one MLP / GCN / GraphSAGE / APPNP, built from M standalone models.

    Layer 0's weight is stored ``[in, M * out]`` (what the CSR product reads; APPNP's, which
    runs member-major, ``[M, in, out]``); later layers' ``[M, in, out]`` (what ``bmm`` reads);
    biases ``[M * out]``. :meth:`release` gives member ``m`` back as a standalone model with
    its weights.
    """

    def __init__(self, cfg: Config, models: Sequence[nn.Module]) -> None:
        super().__init__(models)
        self.name = cfg.model.name
        self.dropout = cfg.model.dropout
        self.K, self.alpha = cfg.model.K, cfg.model.alpha
        # APPNP runs member-major (see _appnp): its layer 0 is stored like the later layers
        self.member_major = self.name == "appnp"
        layers = [_layer_tensors(self.name, m) for m in models]
        self.weights = nn.ParameterList()
        self.roots = nn.ParameterList()  # GraphSAGE's root weights (lin_r), same layouts
        self.biases = nn.ParameterList()
        for i in range(len(layers[0])):
            w, b, r = zip(*(member_layers[i] for member_layers in layers), strict=True)
            self.weights.append(nn.Parameter(_stack(w, first=self._side_by_side(i))))
            self.biases.append(nn.Parameter(torch.stack(b).reshape(-1)))
            if r[0] is not None:
                self.roots.append(nn.Parameter(_stack(r, first=self._side_by_side(i))))
        # the graph's operator and the input pattern's transpose, built once per graph; the
        # operator's and the input's rows that training and evaluation read
        self.graph_cache, self.pattern_cache = GraphCache(), GraphCache()
        self.row_caches = {True: GraphCache(), False: GraphCache()}
        self.pagerank_caches = {True: GraphCache(), False: GraphCache()}  # APPNP's PageRankRows
        self.input_caches = {True: GraphCache(), False: GraphCache()}
        self.plan_caches = {True: GraphCache(), False: GraphCache()}
        self.kernel_cache = GraphCache()  # the compiled first layer's view of the features
        self.feature_cache = GraphCache()  # SGC's propagated features
        # C&S's post-processing (PyG's CorrectAndSmooth: no parameters), the members' own
        self.post = getattr(models[0], "post", None)

    def forward(self, x: Tensor, edge_index: Tensor, rows: Tensor | None = None,
                labels: Tensor | None = None) -> Tensor:
        """Logits ``[N, M, classes]``, or ``[len(rows), M, classes]`` for the nodes ``rows``
        alone: an MLP then computes only those rows, a GCN or GraphSAGE each layer only the
        rows the next one reads (:class:`ReceptiveRows`), and APPNP's last propagation reaches
        those rows only; the loss's gradient is not scattered back into all N rows. C&S in
        evaluation reads ``labels``, each member's one-hot training labels ``[M, N, C]``."""
        if self.name == "appnp":
            return self._appnp(x, edge_index, rows)
        if self.name == "cs" and not self.training:
            out = self._correct_and_smooth(self._layers(x, edge_index, None), edge_index,
                                           labels)
            return out if rows is None else out.index_select(0, rows)
        return self._layers(x, edge_index, rows)

    def _layers(self, x: Tensor, edge_index: Tensor, rows: Tensor | None) -> Tensor:
        """The layers of an MLP (C&S's too), GCN, GraphSAGE or SGC (see :meth:`forward`)."""
        n = x.size(0)
        if self.name == "sgc":  # a linear layer on the propagated features
            adj = self.graph_cache.get(edge_index, self._build_operator, n)
            x = sgc_features(self.feature_cache, x, adj, edge_index, self.K)
        if self.name in ROW_WISE and rows is not None:
            x, n, rows = self._rows(x, rows), len(rows), None
        plan = None
        if rows is not None and self.name in ("gcn", "sage"):
            adj = self.graph_cache.get(edge_index, self._build_operator, n)
            plan = self.plan_caches[self.training].get(adj, ReceptiveRows.build, rows, x,
                                                       len(self.weights), self.name == "sage")
        h = x
        last = len(self.weights) - 1
        for i in range(len(self.weights)):
            h = self._layer(i, h, edge_index, n) if plan is None else \
                self._planned_layer(i, h, plan)
            if i < last:
                h = _relu_dropout(h, self.dropout, self.training)
        return h.view(h.size(0), self.members, -1)

    def _correct_and_smooth(self, logits: Tensor, edge_index: Tensor,
                            labels: Tensor | None) -> Tensor:
        """Each member's MLP logits ``[N, M, C]`` through C&S with its own training labels,
        one member after another (PyG's ``CorrectAndSmooth``, as the standalone model: the
        members' splits may differ)."""
        post = self.post
        if labels is None or post is None:
            raise ValueError("C&S members evaluate with their training labels")
        # C&S's MLP reads no operator: the cache holds the unweighted adjacency C&S normalises
        adj = self.graph_cache.get(edge_index, adjacency_operator, logits.size(0))
        probs = logits.float().softmax(-1)
        out = torch.empty_like(probs)
        for m in range(self.members):
            mask, y_train = label_matrix(labels[m])
            y_soft = post.correct(probs[:, m].contiguous(), y_train, mask, adj)
            out[:, m] = probabilities_to_logits(post.smooth(y_soft, y_train, mask, adj))
        return out

    def _side_by_side(self, i: int) -> bool:
        """Whether layer ``i``'s weights are stored ``[in, M * out]`` (else ``[M, in, out]``)."""
        return i == 0 and not self.member_major

    def _appnp(self, x: Tensor, edge_index: Tensor, rows: Tensor | None) -> Tensor:
        """APPNP's members member-major: the MLP's activations ``[M, N, hidden]``, so that
        each member's first-layer product writes, and its backward reads, one contiguous
        block, and ReLU, dropout and the next layer's ``baddbmm`` read them in place (side by
        side, ``[N, M * hidden]``, the transposes around ``bmm`` copied the widest tensor of
        the step several times). The logits then go side by side, ``[N, M * classes]``, for
        the propagation's sparse products (:class:`_SideBySideLinear`)."""
        n, members = x.size(0), self.members
        logits = self._mlp(x)
        adj = self._operator(edge_index, n, None)
        if rows is not None and logits.dtype == adj.dtype and PageRankRows.pays(adj, rows,
                                                                                 self.K):
            propagation = self.pagerank_caches[self.training].get(adj, PageRankRows, rows,
                                                                  self.K, self.alpha)
            out = propagation(logits)
        else:
            last = None if rows is None else self._operator(edge_index, n, rows)
            out = personalized_pagerank(adj, logits, self.K, self.alpha, rows, last)
        return out.view(out.size(0), members, -1)

    def _mlp(self, x: Tensor) -> Tensor:
        """APPNP's MLP, member-major, its logits side by side ``[N, M * classes]``: a hidden
        layer and the output compiled together (:mod:`gnn.member_kernel`) for CSR features on
        the CPU, else the first layer (:meth:`_activated_first_layer`), the later ones with
        ``baddbmm`` and the output as :class:`_SideBySideLinear`."""
        n, members = x.size(0), self.members
        output = len(self.weights) - 1  # the output layer's index
        if output == 1 and _compiled_first_layer(x, self.weights[0]):
            layer, p, seed = self._compiled_first_layer(x)
            return _CompiledFirstLayer.apply(layer, self.weights[0], self.biases[0], p, seed,
                                             self.weights[1], self.biases[1])
        h = self._activated_first_layer(x)
        for i in range(1, output):  # hidden layers after the first
            h = torch.baddbmm(self.biases[i].view(members, 1, -1), h, self.weights[i])
            h = _relu_dropout(h, self.dropout, self.training)
        if output == 0:
            return h.transpose(0, 1).reshape(n, -1)
        return _SideBySideLinear.apply(h, self.weights[output], self.biases[output])

    def _activated_first_layer(self, x: Tensor) -> Tensor:
        """Layer 0 of a member-major MLP with its input dropout, ReLU and dropout: compiled
        (:mod:`gnn.member_kernel`) for CSR features on the CPU, else as tensor operations."""
        hidden = len(self.weights) > 1  # one layer: layer 0 is the output, with no ReLU
        if not (hidden and _compiled_first_layer(x, self.weights[0])):
            h = member_first_layer(_member_dropout(x, self.dropout, self.training,
                                                   self.members),
                                   self.weights[0], self.biases[0], self.pattern_cache)
            return _relu_dropout(h, self.dropout, self.training) if hidden else h
        layer, p, seed = self._compiled_first_layer(x)
        return _CompiledFirstLayer.apply(layer, self.weights[0], self.biases[0], p, seed)

    def _compiled_first_layer(self, x: Tensor) -> tuple[Any, float, int]:
        """The compiled first layer over ``x``, and this step's drop probability and seed."""
        p = self.dropout if self.training else 0.0
        seed = int(torch.randint(2**62, ())) if p > 0 else 0
        return self.kernel_cache.get(x, _first_layer_kernel), p, seed

    def _layer(self, i: int, h: Tensor, edge_index: Tensor, n: int) -> Tensor:
        """Layer ``i`` for every node."""
        bias = self.biases[i]
        if self.name in ROW_WISE:
            return self._linear(i, h, self.weights) + bias
        adj = self._operator(edge_index, n, None)
        out = propagate(adj, self._linear(i, h, self.weights), bias)
        if self.name == "sage":  # mean aggregation + root weight
            out = out + self._linear(i, h, self.roots)
        return out

    def _planned_layer(self, i: int, h: Tensor, plan: ReceptiveRows) -> Tensor:
        """Layer ``i`` for its rows of ``plan`` alone, from the previous layer's rows (layer 0:
        from the features aggregated once per run, or from every node's features)."""
        if i == 0 and plan.aggregated is not None:
            out = propagate(plan.aggregated, self.weights[0], self.biases[0])
        else:
            out = propagate(plan.operators[i], self._linear(i, h, self.weights), self.biases[i])
        if self.name == "sage":
            if i > 0:
                own = self._linear(i, h.index_select(0, plan.own[i]), self.roots)
            elif plan.own_features is not None:
                own = propagate(plan.own_features, self.roots[0])
            else:
                own = self._linear(0, self._rows(h, plan.rows[0]), self.roots)
            out = out + own
        return out

    def _build_operator(self, edge_index: Tensor, n: int) -> Tensor:
        return (mean_operator if self.name == "sage" else gcn_operator)(edge_index, n)

    def _operator(self, edge_index: Tensor, n: int, rows: Tensor | None) -> Tensor:
        """The model's propagation operator, or its rows ``rows`` (cached per mode: training
        and evaluation read different rows)."""
        adj = self.graph_cache.get(edge_index, self._build_operator, n)
        if rows is None:
            return adj
        return self.row_caches[self.training].get(adj, _operator_rows, rows)

    def _rows(self, x: Tensor, rows: Tensor) -> Tensor:
        """Rows ``rows`` of an input (CSR or dense), cached per mode."""
        return self.input_caches[self.training].get(x, _input_rows, rows)

    def _linear(self, i: int, h: Tensor, weights: nn.ParameterList) -> Tensor:
        """Every member's ``h_m @ W_m``: one (CSR) product for layer 0, one bmm after."""
        w = weights[i]
        if i == 0:
            return linear(h, w.t(), None, self) if h.layout == torch.sparse_csr \
                else h @ w
        n = h.size(0)
        return _SideBySideLinear.apply(h.view(n, self.members, -1).transpose(0, 1), w, None)

    def member_state(self, m: int) -> dict[str, Tensor]:
        """Member ``m``'s weights as the standalone model's state dict."""
        state = {}
        for i, (w_name, b_name, r_name) in enumerate(_names(self.name, len(self.weights))):
            state[w_name] = _unstack(self.weights[i], m, self.members,
                                     self._side_by_side(i)).t()
            state[b_name] = self.biases[i].view(self.members, -1)[m]
            if r_name is not None:
                state[r_name] = _unstack(self.roots[i], m, self.members,
                                         self._side_by_side(i)).t()
        return {k: v.detach().clone().contiguous() for k, v in state.items()}

    def clear_caches(self) -> None:
        for cache in (self.graph_cache, self.feature_cache, *self.row_caches.values(),
                      *self.pagerank_caches.values(),
                      *self.input_caches.values()):
            cache.clear()


class StackedGAT(MemberStack):
    """M members of one GAT, built from M standalone ones. Layer ``i`` stores its weight
    ``[M, in, heads * C]``, its attention vectors ``[M, heads, C]`` and its bias
    ``[M * heads * C]`` (the layouts the per-member selection reads). The first layer is one
    CSR product per member (each member drops its own input features); the attention runs
    compiled on the CPU (:mod:`gnn.attention_kernel`: as tensor operations 20 members cost
    about as much per member as one PyG GAT each) and as tensor operations elsewhere."""

    def __init__(self, cfg: Config, models: Sequence[nn.Module]) -> None:
        super().__init__(models)
        self.dropout, self.attn_dropout = cfg.model.dropout, cfg.model.attn_dropout
        first = models[0].convs
        self.heads = [conv.heads for conv in first]
        self.slope = float(first[0].negative_slope)
        self.weights, self.att_src = nn.ParameterList(), nn.ParameterList()
        self.att_dst, self.biases = nn.ParameterList(), nn.ParameterList()
        for i in range(len(first)):
            convs = [model.convs[i] for model in models]
            self.weights.append(_stacked(c.lin.weight.t() for c in convs))
            self.att_src.append(_stacked(c.att_src[0] for c in convs))
            self.att_dst.append(_stacked(c.att_dst[0] for c in convs))
            self.biases.append(nn.Parameter(torch.stack([c.bias.detach() for c in convs])
                                            .reshape(-1)))
        self.graph_cache, self.pattern_cache = GraphCache(), GraphCache()

    def forward(self, x: Tensor, edge_index: Tensor, rows: Tensor | None = None,
                labels: Tensor | None = None) -> Tensor:
        """Logits ``[N, M, classes]``, or their rows ``rows``. After the first layer the
        features are node-major, ``[N, M * heads * C]`` (each node's row is what the attention
        reads per edge), as the later layers' per-member products take them."""
        n, members = x.size(0), self.members
        graph = self.graph_cache.get(edge_index, AttentionGraph.build, n)
        h = member_first_layer(_member_dropout(x, self.dropout, self.training, members),
                               self.weights[0], None, self.pattern_cache)
        h = h.transpose(0, 1).reshape(n, -1)
        last = len(self.weights) - 1
        for i in range(last + 1):
            if i > 0:
                h = _SideBySideLinear.apply(h.view(n, members, -1).transpose(0, 1),
                                            self.weights[i], None)
            h = self._attend(i, h.view(n, members * self.heads[i], -1), graph)
            if i < last:  # heads concatenated
                h = _relu_dropout(h.view(n, -1) + self.biases[i], self.dropout, self.training)
        bias = self.biases[last].view(members, -1)
        logits = h.view(n, members, self.heads[last], -1).mean(2) + bias  # heads averaged
        return logits if rows is None else logits.index_select(0, rows)

    def _attend(self, i: int, h: Tensor, graph: AttentionGraph) -> Tensor:
        """Layer ``i``'s attention (GATConv's, per member) over ``h [N, M * heads, C]``."""
        shape = (self.members * self.heads[i], -1)
        att_src, att_dst = self.att_src[i].view(shape), self.att_dst[i].view(shape)
        p = self.attn_dropout if self.training else 0.0
        if graph.kernel is None or h.dtype != torch.float32:
            return attention(h, att_src, att_dst, graph, self.slope, p)
        seed = int(torch.randint(2**62, ())) if p > 0 else 0
        return _CompiledAttention.apply(graph.kernel, h, att_src, att_dst, self.slope, p, seed)

    def member_state(self, m: int) -> dict[str, Tensor]:
        """Member ``m``'s weights as the standalone model's state dict."""
        state = {}
        for i in range(len(self.weights)):
            state[f"convs.{i}.lin.weight"] = self.weights[i][m].t()
            state[f"convs.{i}.att_src"] = self.att_src[i][m].unsqueeze(0)
            state[f"convs.{i}.att_dst"] = self.att_dst[i][m].unsqueeze(0)
            state[f"convs.{i}.bias"] = self.biases[i].view(self.members, -1)[m]
        return {k: v.detach().clone().contiguous() for k, v in state.items()}

    def clear_caches(self) -> None:
        self.graph_cache.clear()


def _stacked(tensors: Iterable[Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach() for t in tensors]).contiguous())


@dataclass
class AttentionGraph:
    """GATConv's graph (self-loops removed, then one per node added) as incoming edges sorted
    by target: ``src``/``dst`` per edge, and on the CPU the compiled attention over it."""

    src: Tensor
    dst: Tensor
    kernel: Any  # gnn.attention_kernel.Attention, or None

    @classmethod
    def build(cls, edge_index: Tensor, n: int) -> AttentionGraph:
        edge_index, _ = remove_self_loops(edge_index)
        edge_index, _ = add_self_loops(edge_index, num_nodes=n)
        src, dst = sort_edge_index(edge_index, num_nodes=n, sort_by_row=False)
        kernel = None
        from gnn.attention_kernel import Attention, available
        if src.device.type == "cpu" and available():
            by_src = torch.argsort(src, stable=True)  # outgoing edges, by source then target
            kernel = Attention(index2ptr(dst, n).numpy(), src.to(torch.int32).numpy(),
                               index2ptr(src[by_src], n).numpy(), by_src.numpy(),
                               dst.to(torch.int32).numpy(), torch.get_num_threads())
        return cls(src, dst, kernel)


def attention(h: Tensor, att_src: Tensor, att_dst: Tensor, graph: AttentionGraph,
              slope: float, p: float) -> Tensor:
    """GATConv's attention for every member and head as tensor operations (any device):
    ``h [N, K, C]`` summed over each node's incoming edges with the softmax of
    ``leaky_relu(a_src[j] + a_dst[i])`` (dropout ``p``) as weights, ``a_* = (h * att_*).sum(-1)``
    for the attention vectors ``att_* [K, C]``."""
    src, dst = graph.src, graph.dst
    a_src, a_dst = (h * att_src).sum(-1), (h * att_dst).sum(-1)
    alpha = softmax(F.leaky_relu(a_src[src] + a_dst[dst], slope), dst, num_nodes=h.size(0))
    alpha = F.dropout(alpha, p, training=p > 0)
    return torch.zeros_like(h).index_add_(0, dst, h[src] * alpha.unsqueeze(-1))


class _CompiledAttention(torch.autograd.Function):
    """:func:`attention` through :class:`gnn.attention_kernel.Attention` (float32, CPU)."""

    @staticmethod
    def forward(ctx: Any, kernel: Any, h: Tensor, att_src: Tensor, att_dst: Tensor,
                slope: float, p: float, seed: int) -> Tensor:
        h, att_src, att_dst = (t.detach().contiguous() for t in (h, att_src, att_dst))
        out, saved = kernel.forward(h.numpy(), att_src.numpy(), att_dst.numpy(), slope, p, seed)
        ctx.kernel, ctx.slope, ctx.kept = kernel, slope, (h, att_src, att_dst, saved)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        h, att_src, att_dst, saved = ctx.kept
        del ctx.kept
        grads = ctx.kernel.backward(h.numpy(), att_src.numpy(), att_dst.numpy(), saved,
                                    grad.contiguous().numpy(), ctx.slope)
        return (None, *(torch.from_numpy(g) for g in grads), None, None, None)


@dataclass
class ReceptiveRows:
    """The rows each layer of a GCN or GraphSAGE must compute so that the last one yields
    ``rows``: layer ``i`` computes ``rows[i]`` (the last: the requested rows), and layer
    ``i - 1`` the nodes that layer ``i``'s rows aggregate from (and, for GraphSAGE's root
    weight, those rows themselves). On Cora the 140 training nodes read 3-4x fewer hidden rows
    than the graph has, and every element-wise step of the hidden layer (bias, ReLU, dropout,
    their gradients, the next layer's product) shrinks with them. Row for row the products
    are the full ones: each row's sum runs over the same entries in the same order."""

    rows: list[Tensor]  # rows[i]: the global ids of layer i's output rows
    operators: list[Tensor]  # layer i's operator: rows[i] x rows[i-1] (layer 0: x every node)
    own: list[Tensor | None]  # rows[i]'s positions in rows[i-1] (GraphSAGE's root term)
    # CSR features: layer 0's operator times the features, when it has fewer entries than the
    # features (A X W computed as (A X) W: no N-row product, no propagation, and a smaller
    # weight gradient), and GraphSAGE's own features at rows[0]; each with its transpose
    aggregated: Tensor | None = None
    own_features: Tensor | None = None

    @classmethod
    def build(cls, adj: Tensor, rows: Tensor, x: Tensor, layers: int,
              with_own: bool) -> ReceptiveRows:
        fields = [rows]
        for _ in range(layers - 1):
            needed = csr_rows(adj, fields[0]).col_indices()
            if with_own:
                needed = torch.cat([needed, fields[0]])
            fields.insert(0, torch.unique(needed))
        operators = [with_transpose(csr_rows(adj, fields[0]))]
        own: list[Tensor | None] = [None]
        for i in range(1, layers):
            position = torch.full((adj.size(1),), -1, dtype=torch.long, device=adj.device)
            position[fields[i - 1]] = torch.arange(len(fields[i - 1]), device=adj.device)
            part = csr_rows(adj, fields[i])
            operators.append(with_transpose(torch.sparse_csr_tensor(
                part.crow_indices(), position[part.col_indices()], part.values(),
                (len(fields[i]), len(fields[i - 1])))))
            own.append(position[fields[i]] if with_own else None)
        plan = cls(fields, operators, own)
        if x.layout == torch.sparse_csr:
            aggregated = torch.sparse.mm(operators[0], x)
            if aggregated.values().numel() < x.values().numel():
                plan.aggregated = with_transpose(aggregated)
            if with_own:
                plan.own_features = with_transpose(csr_rows(x, fields[0]))
        return plan


def _operator_rows(adj: Tensor, rows: Tensor) -> Tensor:
    return with_transpose(csr_rows(adj, rows))


def _input_rows(x: Tensor, rows: Tensor) -> Tensor:
    return csr_rows(x, rows) if x.layout == torch.sparse_csr else x.index_select(0, rows)


def _names(model: str, layers: int) -> list[tuple[str, str, str | None]]:
    if model in MLP_MODULES:
        return [(f"lins.{i}.weight", f"lins.{i}.bias", None) for i in range(layers)]
    if model == "gcn":
        return [(f"convs.{i}.lin.weight", f"convs.{i}.bias", None) for i in range(layers)]
    if model == "sgc":
        return [("conv.lin.weight", "conv.lin.bias", None)]
    return [(f"convs.{i}.lin_l.weight", f"convs.{i}.lin_l.bias", f"convs.{i}.lin_r.weight")
            for i in range(layers)]


def _layer_tensors(model: str, module: nn.Module) -> list[tuple[Tensor, Tensor, Tensor | None]]:
    """Per layer: weight ``[in, out]``, bias ``[out]``, root weight or None."""
    state = module.state_dict()
    layers = len(module.lins) if model in MLP_MODULES else 1 if model == "sgc" \
        else len(module.convs)
    return [(state[w].t(), state[b], None if r is None else state[r].t())
            for w, b, r in _names(model, layers)]


def _stack(tensors: Sequence[Tensor], first: bool) -> Tensor:
    stacked = torch.stack([t.detach() for t in tensors])  # [M, in, out]
    if first:
        return stacked.permute(1, 0, 2).reshape(stacked.size(1), -1).contiguous()
    return stacked.contiguous()


def _unstack(weight: Tensor, m: int, members: int, first: bool) -> Tensor:
    if first:
        return weight.view(weight.size(0), members, -1)[:, m]
    return weight[m]


def _relu_dropout(h: Tensor, p: float, training: bool) -> Tensor:
    """ReLU, then dropout, as one mask: ``h * ((h > 0) & keep) / (1 - p)`` is what the two
    give, and it costs one element-wise product forward and one backward where the pair cost
    three (a ReLU, its backward and the mask's product with its backward, each a pass over
    the widest tensor of the step). The mask comes from random bytes, seven per 64-bit draw:
    drawing the random numbers was the largest cost of a batched step (``bernoulli_`` 8.5 ms,
    ``rand`` 2.9 ms for Cora's 20 x 16 hidden columns, bytes 1.3 ms). The drop probability is
    therefore ``p`` rounded to a multiple of 1/256 (0.5 exactly). Members' columns get
    independent masks."""
    if not training or p == 0.0:
        return torch.relu(h)
    keep, scale = _keep_mask(h.shape, p, h.device)
    return h * (keep & (h > 0)).to(h.dtype).mul_(scale)


def _keep_mask(shape: torch.Size | tuple[int, ...], p: float,
               device: torch.device) -> tuple[Tensor, float]:
    """A dropout mask of ``shape`` from random bytes (each kept unless its byte falls below
    ``p`` rounded to a multiple of 1/256) and the scale that keeps the expectation."""
    threshold = round(p * 256)
    keep = _random_bytes(math.prod(shape), device).view(shape) >= threshold
    return keep, 256.0 / (256 - threshold)


def _random_bytes(count: int, device: torch.device) -> Tensor:
    """``count`` uniform random bytes: the seven low bytes of 63-bit random integers (the top
    byte holds only seven random bits)."""
    words = torch.empty(count // 7 + 1, 8, dtype=torch.uint8, device=device)
    words.view(torch.int64).random_()
    return words[:, :7].reshape(-1)[:count]


def _member_dropout(x: Tensor, p: float, training: bool, members: int) -> Tensor | MemberCSR:
    """Input-feature dropout with its own mask per member (:func:`_keep_mask`, as the hidden
    layers'): for a CSR input the members' values ``[M, nnz]`` (:class:`MemberCSR`); a dense
    input becomes ``[M, N, F]``."""
    if not training or p == 0.0:
        return x
    values = x.values() if x.layout == torch.sparse_csr else x
    keep, scale = _keep_mask((members, *values.shape), p, values.device)
    dropped = values * keep.to(values.dtype).mul_(scale)
    return MemberCSR(x, dropped) if x.layout == torch.sparse_csr else dropped


@dataclass
class MemberCSR:
    """One sparsity pattern with a value vector per member (input dropout on CSR features)."""

    pattern: Tensor  # the CSR matrix whose structure every member shares
    values: Tensor  # [M, nnz]


class _MemberCSRProduct(torch.autograd.Function):
    """Every member's ``X_m @ W_m + b_m``, member-major ``[M, N, out]``, for CSR ``X_m``
    sharing one pattern: one sparse product per member, forward and backward, each reading
    its member's contiguous weight and writing a contiguous block. One product with every
    member's weights side by side (``[in, M * out]``) reads rows too long to stay in cache:
    on Cora at 20 x 64 it took 3.5 ms against 20 x 0.09 ms. The backward's transposes are
    the pattern's cached transpose with the member's values permuted, not a transpose per
    member and step."""

    @staticmethod
    def forward(ctx: Any, x: MemberCSR, transpose: tuple[Tensor, Tensor, Tensor],
                weight: Tensor, bias: Tensor) -> Tensor:
        members = weight.size(0)
        crow, col = x.pattern.crow_indices(), x.pattern.col_indices()
        out = weight.new_empty(members, x.pattern.size(0), weight.size(2))
        biases = bias.view(members, -1)
        for m in range(members):
            member_x = torch.sparse_csr_tensor(crow, col, x.values[m], x.pattern.shape)
            torch.addmm(biases[m], member_x, weight[m], out=out[m])
        ctx.x, ctx.transpose = x, transpose
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor, Tensor]:
        x, grad = ctx.x, grad.contiguous()
        members = grad.size(0)
        shape = (x.pattern.size(1), x.pattern.size(0))
        grad_weight = grad.new_empty(members, shape[0], grad.size(2))
        for m in range(members):
            member_t = transpose_values(x.values[m], ctx.transpose, shape)
            torch.mm(member_t, grad[m], out=grad_weight[m])
        return None, None, grad_weight, grad.sum(1).view(-1)


def member_first_layer(x: Tensor | MemberCSR, weight: Tensor, bias: Tensor | None,
                       pattern_cache: GraphCache) -> Tensor:
    """Member-major layer 0, ``[M, N, out]``, from ``weight [M, in, out]`` and ``bias [M * out]``
    (``None``: none), for CSR features (with or without each member's dropout) or dense ones
    (``[N, F]``, or ``[M, N, F]`` with dropout). ``pattern_cache`` keeps the CSR pattern's
    transpose for the backward."""
    members = weight.size(0)
    if bias is None:
        bias = weight.new_zeros(members * weight.size(2))
    bias = bias.view(members, 1, -1)
    if isinstance(x, Tensor) and x.layout == torch.sparse_csr:
        x = MemberCSR(x, x.values().expand(members, -1))
    if isinstance(x, MemberCSR):
        transpose = pattern_cache.get(x.pattern, pattern_transpose)
        return _MemberCSRProduct.apply(x, transpose, weight, bias.view(-1))
    if x.dim() == 3:  # each member's own (dropped) dense features
        return torch.baddbmm(bias, x, weight)
    # shared dense features: one GEMM with the members side by side, seen member-major
    side = torch.addmm(bias.view(-1), x, weight.transpose(0, 1).reshape(x.size(1), -1))
    return side.view(x.size(0), members, -1).transpose(0, 1)


def _compiled_first_layer(x: Tensor, weight: Tensor) -> bool:
    """Whether a member-major hidden first layer can run compiled: CSR float32 features on
    the CPU, and numba installed."""
    if x.layout != torch.sparse_csr or x.device.type != "cpu" or weight.dim() != 3:
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    from gnn.member_kernel import available
    return available()


def _first_layer_kernel(x: Tensor) -> Any:
    """The compiled first layer over ``x``'s entries, on as many threads as torch uses."""
    from gnn.member_kernel import FirstLayer
    return FirstLayer(x.crow_indices().numpy(), x.col_indices().to(torch.int32).numpy(),
                      x.values().contiguous().numpy(), x.size(1), torch.get_num_threads())


class _CompiledFirstLayer(torch.autograd.Function):
    """``dropout(relu(dropout(X) @ W_m + b_m))`` member-major ``[M, N, hidden]`` through
    :class:`gnn.member_kernel.FirstLayer`. As tensor operations this layer drew a random byte
    per entry and unit, multiplied the entries dropout had zeroed, and passed over the
    activations once per operation: on Cora at 8 x 64 (two threads), forward and backward
    cost about 11 ms a step, compiled about 3 ms.

    Given the output layer's weight ``[M, hidden, classes]`` and bias, that layer runs in the
    same compiled member loop (:class:`gnn.member_kernel.Output`) and the result is its logits
    side by side, ``[N, M * classes]`` (what :class:`_SideBySideLinear` gives): each member's
    rows go on to the output while in cache, forward and backward, and torch's batched
    product, slow in this narrow shape, is not called (20 APPNP members on Cora, one thread:
    about 3.4 ms a forward there, about 1.5 ms here)."""

    @staticmethod
    def forward(ctx: Any, layer: Any, weight: Tensor, bias: Tensor, p: float, seed: int,
                out_weight: Tensor | None = None, out_bias: Tensor | None = None) -> Tensor:
        from gnn.member_kernel import Output
        if (out_weight is None) != (out_bias is None):
            raise ValueError("the output layer needs its weight and its bias, both")
        members = weight.size(0)
        weight, bias = weight.detach().contiguous(), bias.detach().view(members, -1)
        hidden = weight.new_empty(members, len(layer.crow) - 1, weight.size(2))
        result, output, saved = hidden, None, [hidden]
        if out_weight is not None:
            weight_t = out_weight.detach().transpose(1, 2).contiguous()
            result = weight.new_empty(hidden.size(1), members * out_weight.size(2))
            output = Output(weight_t.numpy(), out_bias.detach().view(members, -1).numpy(),
                            result.numpy())
            saved.append(weight_t)
        layer.forward(weight.numpy(), bias.numpy(), hidden.numpy(), p, seed, output)
        ctx.layer, ctx.p = layer, p
        ctx.save_for_backward(*saved)
        return result

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        from gnn.member_kernel import Output
        hidden, *output_weight = ctx.saved_tensors
        members, units = hidden.size(0), hidden.size(2)
        grad_weight = grad.new_empty(members, ctx.layer.features, units)
        grad_bias = grad.new_empty(members, units)
        grad = grad.contiguous()
        if not output_weight:
            ctx.layer.backward(hidden.numpy(), grad.numpy(), grad_weight.numpy(),
                               grad_bias.numpy(), ctx.p)
            return None, grad_weight, grad_bias.view(-1), None, None, None, None
        weight_t = output_weight[0]
        grad_weight_t = torch.empty_like(weight_t)
        grad_out_bias = grad.new_empty(members, weight_t.size(1))
        output = Output(weight_t.numpy(), None, grad.numpy(), grad_weight_t.numpy(),
                        grad_out_bias.numpy())
        ctx.layer.backward(hidden.numpy(), None, grad_weight.numpy(), grad_bias.numpy(), ctx.p,
                           output)
        return (None, grad_weight, grad_bias.view(-1), None, None,
                grad_weight_t.transpose(1, 2), grad_out_bias.view(-1))


class _SideBySideLinear(torch.autograd.Function):
    """Every member's ``h_m @ W_m (+ b_m)`` from ``h [M, N, in]`` (member-major, or a view of
    side-by-side activations), returned side by side, ``[N, M * out]``. It computes the
    transposed product ``W_m^T h_m^T``, ``[M, out, N]``, and the weight gradient as ``g_m^T
    h_m``: for a narrow output the CPU's ``bmm`` is about 4x faster in that orientation (Cora,
    20 members, 64 hidden, 7 classes, two threads: forward 0.6 against 2.5 ms, weight gradient
    0.55 against 3.3 ms). The price is one reordering of the ``[N, M * out]`` result each way
    (0.1 ms)."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        members, n, out = h.size(0), h.size(1), weight.size(2)
        if bias is None:
            transposed = torch.bmm(weight.transpose(1, 2), h.transpose(1, 2))
        else:
            transposed = torch.baddbmm(bias.view(members, out, 1), weight.transpose(1, 2),
                                       h.transpose(1, 2))
        ctx.save_for_backward(h, weight)
        return transposed.permute(2, 0, 1).reshape(n, members * out).contiguous()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        h, weight = ctx.saved_tensors
        members, n, out = h.size(0), h.size(1), weight.size(2)
        transposed = grad.reshape(n, members, out).permute(1, 2, 0).contiguous()
        grad_h = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.bmm(transposed.transpose(1, 2), weight.transpose(1, 2))
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(transposed, h).transpose(1, 2).contiguous()
        if ctx.needs_input_grad[2]:  # False where there is no bias
            grad_bias = grad.sum(0)
        return grad_h, grad_weight, grad_bias


# --------------------------------------------------------------------------------------------
# Training M members


@dataclass
class MemberMasks:
    """Each member's split, ``[M, N]`` booleans."""

    train: Tensor
    val: Tensor
    test: Tensor

    @classmethod
    def of_splits(cls, masks: SplitMasks, splits: Sequence[int]) -> MemberMasks:
        """Member ``m`` on split ``splits[m]`` (rows of :func:`gnn.data.split_masks`)."""
        rows = torch.tensor([masks.index(s) for s in splits], dtype=torch.long)
        return cls(masks.train[rows], masks.val[rows], masks.test[rows])

    def member_data(self, data: Data, m: int) -> Data:
        """``data`` with member ``m``'s masks (a shallow copy sharing features and edges)."""
        out = copy.copy(data)
        out.train_mask, out.val_mask, out.test_mask = self.train[m], self.val[m], self.test[m]
        return out

    @classmethod
    def shared(cls, data: Data, members: int) -> MemberMasks:
        """The graph's own split for every member (an inductive training view has no test
        mask: an empty one stands in)."""
        empty = torch.zeros(data.num_nodes, dtype=torch.bool)
        return cls(*(getattr(data, f"{s}_mask", empty).unsqueeze(0).expand(members, -1)
                     for s in ("train", "val", "test")))


@dataclass
class MemberSelection:
    """Per member: history, best validation accuracy and epoch, and the best weights."""

    members: int
    best_val: Tensor = field(init=False)
    best_epoch: list[int] = field(init=False)
    best_state: list[Tensor] = field(default_factory=list)
    histories: list[History] = field(init=False)

    def __post_init__(self) -> None:
        self.best_val = torch.full((self.members,), -1.0)
        self.best_epoch = [0] * self.members
        self.histories = [History() for _ in range(self.members)]


def member_losses(logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Each member's mean cross-entropy over its own training nodes, ``[M]``. Callers may pass
    only the rows some member trains on (``logits [R, M, C]``, ``y [R]``, ``mask [M, R]``)."""
    logp = torch.log_softmax(logits, dim=-1)
    members = logits.size(1)
    nll = -logp.gather(2, y.view(-1, 1, 1).expand(-1, members, 1)).squeeze(2)  # [N, M]
    weights = mask.t().to(nll.dtype)
    return (nll * weights).sum(0) / weights.sum(0).clamp(min=1)


def member_accuracy(pred: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """``[M]`` accuracies of ``pred [N, M]`` on each member's ``mask [M, N]``."""
    hits = ((pred == y.unsqueeze(1)) & mask.t()).sum(0).double()
    return (hits / mask.sum(1).clamp(min=1)).float()


def fit_members(cfg: Config, seeds: Sequence[int], data: Data | None = None,
                masks: MemberMasks | None = None,
                splits: Sequence[int] | None = None) -> list[FitResult]:
    """Train one member per seed of ``cfg`` in one batched run; one :class:`FitResult` per
    member, as :func:`gnn.training.fit` would give it (times are the run's share per member;
    ``members`` and ``run_time_s`` say how it ran).

    ``splits`` gives member ``m`` the split id ``splits[m]`` and, unless ``masks`` are given,
    that split's masks (:func:`gnn.data.split_masks`); without it every member trains on the
    masks ``data`` carries, as split ``data.split_seed``. An inductive run trains on one
    split's training graph, so its members share one split."""
    if not can_batch(cfg):
        raise ConfigError(f"members cannot train batched: {sequential_reason(cfg)}")
    device = resolve_device(cfg.train.device)
    data = load_dataset(cfg.data) if data is None else data
    ids = [cfg.data.split_seed] * len(seeds) if splits is None else [int(s) for s in splits]
    if len(ids) != len(seeds):
        raise ValueError(f"{len(seeds)} seeds but {len(ids)} split ids")
    inductive = cfg.data.split_mode == "inductive"
    if splits is not None and masks is None:
        data, masks = _on_splits(cfg, data, ids)
    seen = training_view(data) if inductive else data
    masks = masks or MemberMasks.shared(seen, len(seeds))
    model = _initial_members(cfg, data, seeds).to(device)
    # capturable: the CUDA path replays Adam's step inside a graph (its step count on device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                                 weight_decay=cfg.train.weight_decay, fused=True,
                                 capturable=device.type == "cuda")
    run_timer = Timer(device).start()
    sel, loop = _train_members(cfg, model, optimizer, seen, masks, device)
    final = MemberMasks.shared(data, len(seeds)) if seen is not data else masks
    logits = _final_member_logits(cfg, model, sel, data, member_labels(cfg, data.y, final.train),
                                  device)
    run_time = run_timer.stop()
    metrics = _split_metrics(logits, data.y, final)
    return [_member_result(cfg, data, seen, model, sel, m, (ids[m], seed), metrics[m],
                           final, str(logits.device), run_time, loop)
            for m, seed in enumerate(seeds)]


def _on_splits(cfg: Config, data: Data, ids: Sequence[int]) -> tuple[Data, MemberMasks | None]:
    """The graph and member masks for members on split ids ``ids``: each member's own masks
    on the shared graph (transductive), or the one split's graph (inductive: its training view
    is the graph the run trains on, so one run cannot mix splits)."""
    split_rows = split_masks(data, cfg.data, sorted(set(ids)))
    if cfg.data.split_mode != "inductive":
        return data, MemberMasks.of_splits(split_rows, ids)
    if len(set(ids)) > 1:
        raise ConfigError("data.split_mode: inductive members of one run share one split "
                          f"(one training graph), got splits {sorted(set(ids))}")
    return with_split(data, split_rows, ids[0]), None


def _initial_members(cfg: Config, data: Data, seeds: Sequence[int]) -> MemberStack:
    """Member ``m`` starts from the weights ``fit`` with seed ``seeds[m]`` would draw."""
    models = []
    for seed in seeds:
        set_seed(seed)
        models.append(build_model(cfg.model, data.num_features, num_classes(data)))
    set_seed(seeds[0])
    return (StackedGAT if cfg.model.name == "gat" else StackedModel)(cfg, models)


@dataclass
class MemberBatch:
    """What every step of a batched run reads, on its device: the features and graph, and
    only the rows some member trains or validates on (they alone enter the loss and the
    accuracies)."""

    x: Tensor
    edge_index: Tensor
    rows: Tensor  # nodes some member trains on
    y_train: Tensor
    train: Tensor  # [M, len(rows)]
    seen_rows: Tensor  # nodes some member trains or validates on
    y_seen: Tensor
    train_seen: Tensor  # [M, len(seen_rows)]
    val_seen: Tensor
    labels: Tensor | None  # each member's one-hot training labels, for a model that reads them

    @classmethod
    def build(cls, cfg: Config, seen: Data, masks: MemberMasks,
              device: torch.device) -> MemberBatch:
        y = seen.y.to(device)
        rows = masks.train.any(0).nonzero().view(-1).to(device)
        seen_rows = (masks.train.any(0) | masks.val.any(0)).nonzero().view(-1).to(device)
        width = masks.train.size(0) * member_width(cfg)
        return cls(node_features(seen, cfg, width).to(device), seen.edge_index.to(device), rows,
                   y[rows], masks.train.to(device)[:, rows], seen_rows, y[seen_rows],
                   *(m.to(device)[:, seen_rows] for m in (masks.train, masks.val)),
                   member_labels(cfg, y, masks.train.to(device)))


def member_labels(cfg: Config, y: Tensor, train: Tensor) -> Tensor | None:
    """Each member's one-hot training labels ``[M, N, C]`` (zero rows for its other nodes), as
    :func:`gnn.batching.training_labels` gives a standalone model that reads labels; ``None``
    for a model that does not."""
    if not getattr(MODELS[cfg.model.name], "uses_labels", False):
        return None
    return labels_on(y, train)


def _train_members(cfg: Config, model: MemberStack, optimizer: torch.optim.Optimizer,
                   seen: Data, masks: MemberMasks, device: torch.device,
                   ) -> tuple[MemberSelection, Timer]:
    """The run's epochs: a training step each, an evaluation on the evaluation epochs. The
    steps keep their logs and the selection on the device (:class:`DeviceSteps`), so on a GPU
    they are captured once in CUDA graphs and replayed; elsewhere they run as they are."""
    steps = DeviceSteps(cfg, model, optimizer, MemberBatch.build(cfg, seen, masks, device))
    train, evaluate = steps.train_step, steps.eval_step
    # C&S's evaluation selects each member's labelled rows (a size the graph cannot hold)
    if device.type == "cuda" and cfg.train.cuda_graph and steps.b.labels is None:
        try:
            train, evaluate = capture_steps(steps)
        except RuntimeError as exc:  # an operation the graph cannot hold: run eagerly
            warnings.warn(f"train.cuda_graph: capture failed, members train eagerly "
                          f"({str(exc).splitlines()[0]})", stacklevel=2)
            torch.cuda.synchronize(device)
            steps.reset()
    evals, loop = set(steps.eval_epochs), Timer(device)
    for epoch in range(1, cfg.train.epochs + 1):
        with loop:
            train()
        if epoch in evals:
            evaluate()
    return steps.selection(), loop


def _eval_epochs(cfg: Config) -> range | list[int]:
    """Epochs after which the members are validated: every ``eval_every`` and the last."""
    every, last = cfg.train.eval_every, cfg.train.epochs
    if every == 1:
        return range(1, last + 1)
    return [*range(every, last, every), last]


# --------------------------------------------------------------------------------------------
# The steps as device work alone (on a GPU captured in CUDA graphs)


class DeviceSteps:
    """A batched run's training step and evaluation as device work alone. The epoch counter,
    the logs and the selection (best validation accuracy, epoch and weights) live on the
    device and nothing is read back before the run ends, so on a GPU both steps can be
    captured once in CUDA graphs and replayed (an eager step is a few hundred kernel launches,
    bound by the host, whatever the member count); a CPU runs the same steps as they are."""

    def __init__(self, cfg: Config, model: MemberStack, optimizer: torch.optim.Optimizer,
                 batch: MemberBatch) -> None:
        self.model, self.optimizer, self.b = model, optimizer, batch
        self.eval_epochs = list(_eval_epochs(cfg))
        device, members = batch.x.device, model.members
        self.epoch = torch.zeros((), dtype=torch.long, device=device)
        self.evals = torch.zeros((), dtype=torch.long, device=device)
        self.loss_log = torch.zeros(cfg.train.epochs, members, device=device)
        self.acc_log = torch.zeros(len(self.eval_epochs), 2, members, device=device)
        self.best_val = torch.full((members,), -1.0, device=device)
        self.best_epoch = torch.zeros(members, dtype=torch.long, device=device)
        self.initial = [p.detach().clone() for p in model.parameters()]
        # where reading a flag back costs nothing (not a GPU, whose captured graph cannot
        # branch on one), an evaluation copies the weights of the members that improved alone,
        # and none when none did: late in a run that is most evaluations (copying every
        # member at every evaluation made 400 MLP fits 18% slower)
        self.reads_flags = device.type != "cuda"
        self.best_state = [p.clone() for p in self.initial]

    def train_step(self) -> None:
        b, model = self.b, self.model
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses = member_losses(model(b.x, b.edge_index, b.rows), b.y_train, b.train)
        losses.sum().backward()
        self.optimizer.step()
        self.epoch += 1
        self.loss_log.index_copy_(0, self.epoch.view(1) - 1, losses.detach().unsqueeze(0))

    def eval_step(self) -> None:
        b, model = self.b, self.model
        model.eval()
        with torch.inference_mode():
            pred = model(b.x, b.edge_index, b.seen_rows, b.labels).argmax(-1)
            val_acc = member_accuracy(pred, b.y_seen, b.val_seen)
            accs = torch.stack([member_accuracy(pred, b.y_seen, b.train_seen), val_acc])
            self.acc_log.index_copy_(0, self.evals.view(1), accs.unsqueeze(0))
            self.evals += 1
            improved = val_acc > self.best_val
            self.best_val.copy_(torch.where(improved, val_acc, self.best_val))
            self.best_epoch.copy_(torch.where(improved, self.epoch, self.best_epoch))
            if self.reads_flags:  # copy the improved members' weights alone
                chosen = improved.nonzero().view(-1)
                if len(chosen):
                    for best, p in zip(self.best_state, model.parameters(), strict=True):
                        _by_member(best, model.members).index_copy_(
                            1, chosen, _by_member(p, model.members).index_select(1, chosen))
                return
            keep = improved.view(1, -1, 1)
            for best, p in zip(self.best_state, model.parameters(), strict=True):
                ours = _by_member(best, model.members)
                torch.where(keep, _by_member(p, model.members), ours, out=ours)

    def reset(self) -> None:
        """Back to the state before any step (after the warm-up and capture ran steps): the
        initial weights, a fresh optimiser, empty logs and selection - all in place, since
        the captured graphs read and write these very tensors."""
        with torch.no_grad():
            for p, first, best in zip(self.model.parameters(), self.initial, self.best_state,
                                      strict=True):
                p.copy_(first)
                best.copy_(first)
            for state in self.optimizer.state.values():
                for value in state.values():
                    if isinstance(value, Tensor):
                        value.zero_()  # Adam's step and moments all start at zero
            for log in (self.epoch, self.evals, self.loss_log, self.acc_log, self.best_epoch):
                log.zero_()
            self.best_val.fill_(-1.0)

    def selection(self) -> MemberSelection:
        """The run's logs and selection, read back once."""
        losses, accs = self.loss_log.cpu(), self.acc_log.cpu()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            raise TrainingError(f"non-finite loss at epoch {int(bad[0, 0]) + 1} "
                                f"(member {int(bad[0, 1])})")
        sel = MemberSelection(self.model.members)
        at = torch.tensor(self.eval_epochs) - 1
        columns = (losses[at].t().tolist(), accs[:, 0].t().tolist(), accs[:, 1].t().tolist())
        for history, loss, train_acc, val_acc in zip(sel.histories, *columns, strict=True):
            history.epoch, history.train_loss = list(self.eval_epochs), loss
            history.train_acc, history.val_acc = train_acc, val_acc
        sel.best_val, sel.best_epoch = self.best_val.cpu(), self.best_epoch.tolist()
        sel.best_state = self.best_state
        return sel


def capture_steps(steps: DeviceSteps) -> tuple[Any, Any]:
    """The two steps captured as CUDA graphs (their ``replay`` methods). Two warm-up rounds on
    a side stream fill the caches (graph operators, cuBLAS/cuSPARSE workspaces, Adam's state),
    as capture requires; :meth:`DeviceSteps.reset` then undoes every step taken."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            steps.train_step()
            steps.eval_step()
    torch.cuda.current_stream().wait_stream(side)
    train, evaluate = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(train):
        steps.train_step()
    with torch.cuda.graph(evaluate):
        steps.eval_step()
    steps.reset()
    return train.replay, evaluate.replay


def _predict(model: MemberStack, x: Tensor, edge_index: Tensor,
             rows: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
    model.eval()
    with torch.inference_mode():
        return model(x, edge_index, rows, labels)


def _by_member(p: Tensor, members: int) -> Tensor:
    """A view of parameter ``p`` with the member axis second: ``[rows, M, cols]``."""
    if p.dim() == 3:  # [M, in, out]
        return p.view(1, members, -1)
    if p.dim() == 2:  # layer 0 [in, M * out]
        return p.view(p.size(0), members, -1)
    return p.view(1, members, -1)  # biases [M * out]


def _final_member_logits(cfg: Config, model: MemberStack, sel: MemberSelection, data: Data,
                         labels: Tensor | None, device: torch.device) -> Tensor:
    """Every member's selected weights on the whole graph, ``[N, M, C]`` (a model that reads
    labels reads each member's training labels ``labels``)."""
    with torch.no_grad():
        for best, p in zip(sel.best_state, model.parameters(), strict=True):
            p.copy_(best)
    model.clear_caches()
    x = node_features(data, cfg, model.members * member_width(cfg)).to(device)
    return _predict(model, x, data.edge_index.to(device), None,
                    None if labels is None else labels.to(device)).float()


def _member_result(cfg: Config, data: Data, seen: Data, model: MemberStack,
                   sel: MemberSelection, m: int, split_seed: tuple[int, int],
                   metrics: dict[str, float], masks: MemberMasks, device: str, run_time: float,
                   loop: Timer) -> FitResult:
    split_id, seed = split_seed
    members = model.members
    trained = model.release(m)
    config = copy.deepcopy(cfg.to_dict())
    config["train"]["seed"], config["data"]["split_seed"] = seed, split_id
    return FitResult(
        model=cfg.model.name, dataset=str(getattr(data, "name", None)), seed=seed,
        device=device, sampled=False, split_mode=cfg.data.split_mode,
        num_nodes=int(data.num_nodes), num_edges=int(data.num_edges),
        train_graph_nodes=int(seen.num_nodes), train_graph_edges=int(seen.num_edges),
        num_params=count_parameters(trained), epochs=cfg.train.epochs,
        best_epoch=sel.best_epoch[m], **metrics, total_train_time_s=run_time / members,
        train_loop_time_s=loop.total / members,
        epoch_times_s=[lap / members for lap in loop.laps], history=sel.histories[m],
        config=config, versions=versions(), threads=torch.get_num_threads(),
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"), members=members, run_time_s=run_time,
        split=split_id, trained=trained, data=masks.member_data(data, m))


T = TypeVar("T")


def member_groups(cfg: Config, items: Sequence[T], size: int,
                  split_of: Callable[[T], int]) -> list[list[T]]:
    """``items`` (runs in split-major order) in batched runs of at most ``size`` members. A
    transductive run may mix splits (each member has its own masks); an inductive run never
    does: each split has its own training graph."""
    if cfg.data.split_mode != "inductive":
        return [list(items[i:i + size]) for i in range(0, len(items), size)]
    by_split: dict[int, list[T]] = {}
    for item in items:
        by_split.setdefault(split_of(item), []).append(item)
    return [group[i:i + size] for group in by_split.values()
            for i in range(0, len(group), size)]


def _split_metrics(logits: Tensor, y: Tensor, masks: MemberMasks) -> list[dict[str, float]]:
    """Every member's accuracy and macro F1 on its train, val and test nodes (on the CPU:
    ``[N, M]`` predictions are small)."""
    pred, y = logits.argmax(-1).cpu(), y.cpu()
    columns = {}
    for split in ("train", "val", "test"):
        acc, f1 = member_metrics(pred, y, getattr(masks, split).cpu())
        columns[f"{split}_acc"], columns[f"{split}_macro_f1"] = acc.tolist(), f1.tolist()
    return [{key: values[m] for key, values in columns.items()} for m in range(pred.size(1))]


def fit_many(cfg: Config, seeds: Sequence[int], data: Data | None = None,
             members: int | None = None, splits: Sequence[int] | None = None,
             workers: int = 1) -> list[FitResult]:
    """One result per (split, seed) pair, split-major: batched in runs of ``members`` (default:
    ``auto``, :func:`resolve_members`) where the model batches, else one
    :func:`gnn.training.fit` after another. Without ``splits`` every run trains on the masks
    ``data`` carries (split ``data.split_seed``); with it, on each split id's masks
    (:func:`gnn.data.split_masks`: ``data.split: public`` has only split 0). With ``workers``
    above 1 the batched runs on the CPU go to that many processes (:func:`_fit_in_workers`);
    a GPU's stay in this process, which has used CUDA by then (``auto`` asks it for free
    memory) and so cannot fork a child that uses it."""
    data = load_dataset(cfg.data) if data is None else data
    split_rows = None if splits is None else split_masks(data, cfg.data, splits)
    ids = [cfg.data.split_seed] if split_rows is None else list(split_rows.ids)
    pairs = [(split, seed) for split in ids for seed in seeds]
    if not can_batch(cfg) or members == 1:
        return [fit(cfg.override({"train.seed": seed, "data.split_seed": split}),
                    data if split_rows is None else with_split(data, split_rows, split))
                for split, seed in pairs]
    workers = workers if resolve_device(cfg.train.device).type == "cpu" else 1
    size = members or resolve_members("auto", len(pairs), cfg, data, workers)
    runs = [([seed for _, seed in group], None if splits is None else [s for s, _ in group])
            for group in member_groups(cfg, pairs, size, split_of=lambda pair: pair[0])]
    if workers > 1 and len(runs) > 1:
        return _fit_in_workers(cfg, runs, data, workers)
    results: list[FitResult] = []
    for run_seeds, run_splits in runs:
        results += fit_members(cfg, run_seeds, data, splits=run_splits)
    return results


def _worker_run(run: tuple[Config, list[int], list[int] | None]) -> list[FitResult]:
    """One batched run in a worker (on the graph its parent handed over); its results come
    back as records: the members' trained models and data views stay in the worker."""
    cfg, seeds, splits = run
    return [replace(result, trained=None, data=None)
            for result in fit_members(cfg, seeds, worker_state(), splits=splits)]


def _fit_in_workers(cfg: Config, runs: list[tuple[list[int], list[int] | None]], data: Data,
                    workers: int) -> list[FitResult]:
    """The batched runs ``runs`` on ``workers`` forked processes (:class:`gnn.workers.Workers`),
    results in the order of ``runs``."""
    with Workers(workers, data) as pool:
        done = pool.in_order(_worker_run, [(cfg, seeds, splits) for seeds, splits in runs])
    return [result for results in done for result in results]
