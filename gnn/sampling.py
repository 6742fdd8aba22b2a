"""Neighbour sampling for PyG's loaders, without pyg-lib or torch-sparse.

PyG's ``NeighborSampler`` needs ``pyg-lib`` or ``torch-sparse``, which a plain ``pip install``
does not bring. :class:`TorchNeighborSampler` implements PyG's ``BaseSampler`` without them
(CPU or CUDA: sampling runs where the graph's CSC lives; on the CPU uniform sampling runs as one
compiled loop, :mod:`gnn.sample_kernel`, else as tensor operations) and is handed to PyG's own
``NeighborLoader``, so mini-batches (``n_id``, ``e_id``, ``batch_size``, ``input_id``,
``num_sampled_nodes``) are built by PyG exactly as usual, and ``BasicGNN.inference`` accepts them.

Semantics follow PyG's directed sampling: a node's sampled neighbours are its in-neighbours, edges
point neighbour -> node, seed nodes come first and in order, each hop expands only the nodes first
reached in the previous hop, and without replacement a node of in-degree ``d`` gets
``min(d, fanout)`` distinct neighbours chosen uniformly (``-1``: all of them; ``0``: none).

PyG's homogeneous node-level options work as in PyG's own sampler: ``subgraph_type``
(``directional``, ``bidirectional``: every sampled edge also reversed, duplicates merged, as
``SamplerOutput.to_bidirectional``; ``induced``: every edge among the sampled nodes, as
torch-sparse returns it; the deprecated ``directed=False`` means induced), ``disjoint`` (one tree
per seed, with a ``batch`` vector), ``replace``, and ``weight_attr`` (neighbours drawn with
probability proportional to the edge weight, without replacement as successive draws, like
``torch.multinomial``; an edge of weight 0 is never part of a batch, whatever the fanout).
Temporal sampling, backward sampling, heterogeneous graphs, link-level sampling and remote
``(FeatureStore, GraphStore)`` backends are refused with one line naming the option.

Worker processes: the sampler pickles without its node table and generator; each process (a
forked or spawned ``DataLoader`` worker) builds its own table on its first batch, and a worker
seeds its own stream from the run's seed and the worker's torch seed (which ``DataLoader`` sets
to ``base_seed + worker_id``, ``base_seed`` drawn from the loader's generator per epoch), so
workers and epochs differ and the same seed gives the same run.
"""

from __future__ import annotations

import operator
import os
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import get_worker_info
from torch_geometric.data import Data, FeatureStore, GraphStore, HeteroData
from torch_geometric.loader import NeighborLoader
from torch_geometric.loader.base import DataLoaderIterator
from torch_geometric.sampler import BaseSampler, NodeSamplerInput, SamplerOutput
from torch_geometric.sampler.base import NumNeighbors, SubgraphType

from gnn.errors import ConfigError

NAME = "TorchNeighborSampler"


def compiled_sampler_available() -> bool:
    """Whether the compiled hop loop can run (numba importable); imported on first use."""
    from gnn.sample_kernel import available

    return available()


def pyg_sampler_available() -> bool:
    """True when PyG's own ``NeighborSampler`` can run (pyg-lib or torch-sparse installed)."""
    import torch_geometric.typing as pyg_typing

    return bool(pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE)


# ---- options: what is implemented, what is refused (one line naming the option) ---------------
def check_direction(sample_direction: Any) -> None:
    if sample_direction == "backward":
        raise NotImplementedError(f"sample_direction: 'backward' sampling is not supported by "
                                  f"{NAME}")
    if sample_direction != "forward":
        raise ValueError(f"sample_direction: must be 'forward' or 'backward', got "
                         f"{sample_direction!r}")


def check_temporal(time_attr: Any, temporal_strategy: Any) -> None:
    if time_attr is not None:
        raise NotImplementedError(f"time_attr: temporal sampling is not supported by {NAME}")
    if temporal_strategy not in ("uniform", "last"):
        raise ValueError(f"temporal_strategy: must be 'uniform' or 'last', got "
                         f"{temporal_strategy!r}")
    if temporal_strategy != "uniform":
        raise NotImplementedError(f"temporal_strategy: temporal sampling is not supported by "
                                  f"{NAME}")


def subgraph_kind(subgraph_type: Any, directed: bool, disjoint: bool) -> SubgraphType:
    """The subgraph type asked for; ``directed=False`` is PyG's deprecated spelling of induced."""
    if not directed:
        warnings.warn(f"The 'directed' argument of '{NAME}' is deprecated; use "
                      f"subgraph_type='induced' instead", stacklevel=3)  # UserWarning, as PyG
        subgraph_type = SubgraphType.induced
    try:
        kind = SubgraphType(subgraph_type)
    except (ValueError, TypeError):
        raise ValueError(f"subgraph_type: must be 'directional', 'bidirectional' or 'induced', "
                         f"got {subgraph_type!r}") from None
    if disjoint and kind is SubgraphType.induced:
        raise ValueError("disjoint: not supported with subgraph_type='induced' (nor by PyG)")
    return kind


def fanouts(num_neighbors: Any) -> list[int]:
    """The per-hop fanouts: ``-1`` (all neighbours), ``0`` (none) or a positive count."""
    values = num_neighbors.values if isinstance(num_neighbors, NumNeighbors) else num_neighbors
    if isinstance(values, dict):
        raise NotImplementedError(f"num_neighbors: per-edge-type fanouts (a dict) are for "
                                  f"heterogeneous graphs, which {NAME} does not support")
    try:
        result = [operator.index(k) for k in values]
    except TypeError:
        raise ValueError(f"num_neighbors: expected a list of integers, got "
                         f"{num_neighbors!r}") from None
    if any(k < -1 for k in result):
        raise ValueError(f"num_neighbors: entries must be -1 (all neighbours), 0 or positive, "
                         f"got {result}")
    return result


def graph_parts(data: Any) -> tuple[Tensor, int | None, Data | None]:
    """(edge_index, number of nodes if known, the ``Data`` holding edge attributes if any). A
    ``Data`` without ``edge_index`` is a graph without edges, as in PyG."""
    if isinstance(data, HeteroData):
        raise NotImplementedError(f"data: heterogeneous graphs (HeteroData) are not supported "
                                  f"by {NAME}")
    if (isinstance(data, (tuple, list)) and len(data) == 2
            and isinstance(data[0], FeatureStore) and isinstance(data[1], GraphStore)):
        raise NotImplementedError(f"data: remote backends ((FeatureStore, GraphStore) pairs) "
                                  f"are not supported by {NAME}")
    if isinstance(data, Tensor):
        return data, None, None
    if not isinstance(data, Data):
        raise ValueError(f"data: expected a Data graph or an edge_index tensor, got "
                         f"{type(data).__name__}")
    if "adj_t" in data or "adj" in data:
        raise NotImplementedError(f"data: SparseTensor adjacencies (adj_t) are not supported by "
                                  f"{NAME}; give the graph as edge_index")
    if data.num_nodes is None:
        raise ValueError("data: the graph has neither edge_index nor a number of nodes")
    edge_index = data.edge_index
    if edge_index is None:
        edge_index = torch.empty(2, 0, dtype=torch.long)
    return edge_index, int(data.num_nodes), data


def edge_weights(graph: Data | None, weight_attr: Any, num_edges: int) -> Tensor:
    """The graph's ``weight_attr`` as one float32 weight per edge, checked finite and >= 0."""
    if graph is None:
        raise ValueError("weight_attr: needs a Data graph holding the weights, got an "
                         "edge_index tensor")
    weight = graph[weight_attr] if isinstance(weight_attr, str) and weight_attr in graph else None
    if (not isinstance(weight, Tensor) or weight.numel() != num_edges
            or weight.dim() > 2 or (weight.dim() == 2 and weight.size(1) != 1)):
        raise ValueError(f"weight_attr: {weight_attr!r} is not an edge attribute of the graph "
                         f"(one weight per edge)")
    weight = weight.reshape(-1).float()
    if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
        raise ValueError(f"weight_attr: edge weights {weight_attr!r} must be finite and "
                         f"non-negative")
    return weight


def worker_seed(seed: int, torch_seed: int) -> int:
    """A 63-bit seed mixed from the run's seed and a worker's torch seed (splitmix64), so that
    two samplers seeded alike still draw apart in one worker, and nearby seeds spread."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + torch_seed + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) >> 1


class TorchNeighborSampler(BaseSampler):
    """Vectorised neighbour sampler over a CSC view of ``edge_index``, taking the arguments of
    PyG's ``NeighborSampler`` (see the module docstring for which options are implemented).

    Memory: the CSC (``O(E)``) and one ``O(N)`` node -> local-id table per process are built
    once; each batch allocates only in proportion to the nodes and edges it samples.
    """

    def __init__(self, data: Data | Tensor, num_neighbors: Sequence[int] | NumNeighbors,
                 subgraph_type: SubgraphType | str = "directional", replace: bool = False,
                 disjoint: bool = False, temporal_strategy: str = "uniform",
                 time_attr: str | None = None, weight_attr: str | None = None,
                 is_sorted: bool = False, share_memory: bool = False, directed: bool = True,
                 sample_direction: str = "forward", *, num_nodes: int | None = None,
                 device: torch.device | str | None = None, seed: int | None = None) -> None:
        # ``is_sorted`` needs no action: the stable sort below leaves a sorted edge_index as is
        check_direction(sample_direction)
        check_temporal(time_attr, temporal_strategy)
        self.subgraph_type = subgraph_kind(subgraph_type, directed, bool(disjoint))
        self.num_neighbors = fanouts(num_neighbors)
        edge_index, graph_nodes, graph = graph_parts(data)
        if num_nodes is None:
            num_nodes = graph_nodes if graph_nodes is not None else (
                int(edge_index.max()) + 1 if edge_index.numel() else 0)
        self.replace, self.disjoint = bool(replace), bool(disjoint)
        self.num_nodes = int(num_nodes)
        self.device = torch.device(device) if device is not None else edge_index.device
        edge_index = edge_index.to(self.device, torch.long)
        weight = None
        if weight_attr is not None:
            weight = edge_weights(graph, weight_attr, edge_index.size(1)).to(self.device)
        self._build_csc(edge_index, weight)
        if share_memory and self.device.type == "cpu":
            for t in (self.row, self.edge_id, self.colptr, self.deg, self.weight):
                if t is not None:
                    t.share_memory_()
        self.seed = int(torch.randint(0, 2**62, (1,))) if seed is None else int(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self._pid: int | None = os.getpid()
        self._local = self._new_node_table()
        #: Sample with the compiled hop loop (:mod:`gnn.sample_kernel`): on the CPU, uniform
        #: draws into one shared subgraph; the vectorised code does the rest (weights, disjoint
        #: trees, CUDA).
        self.compiled = (self.use_compiled and self.device.type == "cpu" and weight is None
                         and not self.disjoint and compiled_sampler_available())

    def _build_csc(self, edge_index: Tensor, weight: Tensor | None) -> None:
        """In-neighbours grouped by target node; with weights, only the edges of weight > 0
        (the others can never be drawn, and an induced subgraph leaves them out too)."""
        src, dst = edge_index[0], edge_index[1]
        kept = None
        if weight is not None:
            kept = torch.nonzero(weight > 0).view(-1)
            src, dst, weight = src[kept], dst[kept], weight[kept]
        order = torch.argsort(dst, stable=True)
        self.row = src[order]  # in-neighbours, grouped by target node
        self.edge_id = order if kept is None else kept[order]  # CSC position -> edge id
        self.weight = None if weight is None else weight[order].contiguous()
        deg = torch.bincount(dst, minlength=self.num_nodes)
        self.colptr = F.pad(torch.cumsum(deg, 0), (1, 0))
        self.deg = deg

    def _new_node_table(self) -> Tensor:
        return torch.full((self.num_nodes,), self.UNSEEN, dtype=torch.long, device=self.device)

    # ---- processes: pickling for spawned workers, a private table and stream per worker ----
    def __getstate__(self) -> dict[str, Any]:
        """Neither the node table (each process writes its own) nor the generator (it does not
        unpickle in a spawned worker) travels: the generator as its state only."""
        state = self.__dict__.copy()
        state["_local"], state["_pid"] = None, None
        # bytes, not a tensor: a temporary tensor pickled for a spawned worker goes to shared
        # memory and is freed before the worker starts, whose start then fails
        state["generator"] = self.generator.get_state().numpy().tobytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        generator_state = state.pop("generator")
        self.__dict__.update(state)
        self.generator = torch.Generator(device=self.device)
        self.generator.set_state(torch.frombuffer(bytearray(generator_state), dtype=torch.uint8))

    def _enter_process(self) -> None:
        """The first batch in a new process (a forked or spawned DataLoader worker, or an
        unpickled copy): a node table of its own, never one shared with another process, and
        inside a worker a stream of its own, derived from the run's seed and the torch seed
        DataLoader gave this worker for this epoch (``torch.initial_seed()``)."""
        self._pid = os.getpid()
        self._local = self._new_node_table()
        if get_worker_info() is not None:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(worker_seed(self.seed, torch.initial_seed()))

    # ---- BaseSampler --------------------------------------------------------------------
    def sample_from_nodes(self, inputs: NodeSamplerInput, **kwargs: Any) -> SamplerOutput:
        if kwargs:
            raise ValueError(f"{sorted(kwargs)[0]}: not an option of {NAME}.sample_from_nodes")
        if inputs.time is not None:
            raise NotImplementedError(f"input_time: temporal sampling is not supported by "
                                      f"{NAME}")
        if inputs.input_type is not None:
            raise NotImplementedError(f"input_nodes: typed (heterogeneous) input nodes are not "
                                      f"supported by {NAME}")
        out = self.sample(inputs.node)
        out.metadata = (inputs.input_id, inputs.time)
        return out

    def sample_from_edges(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"sample_from_edges: link-level sampling (LinkNeighborLoader) "
                                  f"is not supported by {NAME}")

    @property
    def edge_permutation(self) -> None:
        return None  # ``edge`` already holds original edge ids

    @property
    def is_hetero(self) -> bool:
        return False

    @property
    def is_temporal(self) -> bool:
        return False

    # ---- sampling -----------------------------------------------------------------------
    # Small batches are bound by per-operation overhead (about 80 tensor operations a batch;
    # hence the compiled loop where it applies), so the vectorised code below uses the
    # cheapest form of each: ``index_select`` rather than ``[]`` (2-3x cheaper on CPU),
    # ``scatter_`` rather than ``[] =``, and contiguous local ids (``owner + offset``) rather
    # than gathers. Options branch once per batch or hop, so the default directional path pays
    # nothing for them.
    #: Node-table entry of a node the current batch has not reached: above every local id and
    #: every discovery code, so a scatter-min over the table keeps what is already there.
    UNSEEN: int = 1 << 62
    #: Whether a new sampler uses the compiled hop loop where it applies (False: always the
    #: vectorised code, e.g. to compare the two).
    use_compiled: bool = True

    def sample(self, seeds: Tensor) -> SamplerOutput:
        """Sample the multi-hop neighbourhood of ``seeds`` (global node ids)."""
        seeds = seeds.to(self.device, torch.long)
        if self._pid != os.getpid():
            self._enter_process()
        out = self._sample_disjoint(seeds) if self.disjoint else self._sample_shared(seeds)
        if self.subgraph_type is SubgraphType.bidirectional:
            out = self._bidirectional(out)
        return out

    def _sample_compiled(self, seeds: Tensor) -> SamplerOutput:
        """:meth:`_sample_shared` in one compiled call; its random stream is seeded from the
        sampler's generator, one draw a batch."""
        from gnn.sample_kernel import sample_hops

        seed = int(torch.randint(0, 1 << 62, (1,), generator=self.generator))
        node, row, col, edge, num_nodes, num_edges = sample_hops(
            self.colptr.numpy(), self.row.numpy(), self.edge_id.numpy(),
            seeds.contiguous().numpy(), np.asarray(self.num_neighbors, dtype=np.int64),
            self.replace, self._local.numpy(), self.UNSEEN, seed)
        node = torch.from_numpy(node)
        if self.subgraph_type is SubgraphType.induced:
            local = self._local  # the kernel leaves it clean: number the nodes again
            local.scatter_(0, node, torch.arange(node.numel()))
            try:
                return self._induced_output(node)
            finally:
                local.index_fill_(0, node, self.UNSEEN)
        return SamplerOutput(node=node, row=torch.from_numpy(row), col=torch.from_numpy(col),
                             edge=torch.from_numpy(edge), num_sampled_nodes=num_nodes.tolist(),
                             num_sampled_edges=num_edges.tolist())

    def _sample_shared(self, seeds: Tensor) -> SamplerOutput:
        """One subgraph for all seeds: each node appears once (the node table numbers them)."""
        if self.compiled:
            return self._sample_compiled(seeds)
        local = self._local
        nodes = [seeds]
        frontier, first_local = seeds, 0
        num_nodes_total = seeds.numel()
        local.scatter_(0, seeds, torch.arange(num_nodes_total, device=self.device))
        rows, cols, edges = [], [], []
        num_sampled_nodes, num_sampled_edges = [num_nodes_total], []
        try:
            for fanout in self.num_neighbors:
                nbr, owner, eid = self._sample_hop(frontier, fanout)
                new = self._discover(nbr, num_nodes_total)
                rows.append(local.index_select(0, nbr))
                cols.append(owner + first_local)
                edges.append(eid)
                nodes.append(new)
                num_sampled_nodes.append(new.numel())
                num_sampled_edges.append(nbr.numel())
                frontier, first_local = new, num_nodes_total
                num_nodes_total += new.numel()
            node = torch.cat(nodes)
            out = (self._induced_output(node) if self.subgraph_type is SubgraphType.induced
                   else self._output(node, rows, cols, edges, num_sampled_nodes,
                                     num_sampled_edges))
        except BaseException:
            local.fill_(self.UNSEEN)  # interrupted mid-hop: restore the whole table
            raise
        local.index_fill_(0, node, self.UNSEEN)  # reset only what this batch touched
        return out

    def _output(self, node: Tensor, rows: list[Tensor], cols: list[Tensor],
                edges: list[Tensor], num_sampled_nodes: list[int] | None,
                num_sampled_edges: list[int] | None, batch: Tensor | None = None
                ) -> SamplerOutput:
        empty = torch.empty(0, dtype=torch.long, device=self.device)
        return SamplerOutput(
            node=node,
            row=torch.cat(rows) if rows else empty,
            col=torch.cat(cols) if cols else empty,
            edge=torch.cat(edges) if edges else empty,
            batch=batch,
            num_sampled_nodes=num_sampled_nodes,
            num_sampled_edges=num_sampled_edges,
        )

    def _discover(self, nbr: Tensor, num_known: int) -> Tensor:
        """The nodes in ``nbr`` not reached before, in order of first occurrence, entered in
        the node table as ``num_known``, ``num_known + 1``, ...: ``O(len(nbr))``, deterministic,
        no sort. A scatter-min of ``num_known + position`` leaves known nodes' ids (smaller) in
        place and gives each new node the code of its first position."""
        code = torch.arange(num_known, num_known + nbr.numel(), device=self.device)
        local = self._local
        local.scatter_reduce_(0, nbr, code, reduce="amin")
        new = torch.masked_select(nbr, local.index_select(0, nbr) == code)
        local.scatter_(0, new, code[:new.numel()])
        return new

    # ---- options: disjoint trees, induced and bidirectional subgraphs ---------------------
    def _sample_disjoint(self, seeds: Tensor) -> SamplerOutput:
        """One tree per seed (pyg-lib's ``disjoint``): a node is identified by (tree, node), so
        a node reached from two seeds appears once in each tree and is expanded in each;
        ``batch`` holds every node's tree. Pairs are numbered by a sort (:meth:`_number_pairs`)
        instead of the node table, whose ``O(N)`` entries could not hold ``N x seeds`` pairs."""
        n = self.num_nodes
        tree = torch.arange(seeds.numel(), device=self.device)
        known = tree * n + seeds  # (tree, node) keys of all nodes so far, by local id
        nodes, trees = [seeds], [tree]
        frontier, frontier_tree, first_local = seeds, tree, 0
        rows, cols, edges = [], [], []
        num_sampled_nodes, num_sampled_edges = [seeds.numel()], []
        for fanout in self.num_neighbors:
            nbr, owner, eid = self._sample_hop(frontier, fanout)
            nbr_tree = frontier_tree.index_select(0, owner)
            local, new_pos = self._number_pairs(known, nbr_tree * n + nbr)
            new, new_tree = nbr.index_select(0, new_pos), nbr_tree.index_select(0, new_pos)
            rows.append(local)
            cols.append(owner + first_local)
            edges.append(eid)
            nodes.append(new)
            trees.append(new_tree)
            num_sampled_nodes.append(new.numel())
            num_sampled_edges.append(nbr.numel())
            frontier, frontier_tree, first_local = new, new_tree, known.numel()
            known = torch.cat([known, new_tree * n + new])
        return self._output(torch.cat(nodes), rows, cols, edges, num_sampled_nodes,
                            num_sampled_edges, batch=torch.cat(trees))

    def _number_pairs(self, known: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        """Local ids of ``keys`` given the ``known`` keys (whose local ids are their positions):
        a new key gets the next id in order of first occurrence. Returns (local ids, positions
        of the first occurrences of new keys)."""
        num_known = known.numel()
        everything = torch.cat([known, keys])
        _, inverse = torch.unique(everything, return_inverse=True)
        code = torch.arange(everything.numel(), device=self.device)
        first = torch.full_like(code, everything.numel()).scatter_reduce_(
            0, inverse, code, reduce="amin")  # first position of each distinct key
        first_of_key = first.index_select(0, inverse[num_known:])
        is_new = first_of_key == code[num_known:]
        new_id = torch.cumsum(is_new, 0) + (num_known - 1)
        local = torch.where(first_of_key < num_known, first_of_key,
                            new_id.index_select(0, (first_of_key - num_known).clamp_(min=0)))
        return local, torch.nonzero(is_new).view(-1)

    def _induced_output(self, node: Tensor) -> SamplerOutput:
        """The induced subgraph on ``node``; as torch-sparse, without per-hop counts."""
        row, col, edge = self._induced_edges(node)
        return self._output(node, [row], [col], [edge], None, None)

    def _induced_edges(self, node: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every edge among the sampled nodes (torch-sparse's induced subgraph: grouped by target
        in the nodes' order, in CSC order within a target), while the node table still holds
        this batch's local ids."""
        start = self.colptr.index_select(0, node)
        deg = self.deg.index_select(0, node)
        ends = torch.cumsum(deg, 0)
        total = int(ends[-1]) if node.numel() else 0
        owner = torch.repeat_interleave(deg, output_size=total)
        pos = self._expand(start - ends + deg, owner, total)
        src = self._local.index_select(0, self.row.index_select(0, pos))
        kept = torch.nonzero(src != self.UNSEEN).view(-1)
        return (src.index_select(0, kept), owner.index_select(0, kept),
                self.edge_id.index_select(0, pos.index_select(0, kept)))

    @staticmethod
    def _bidirectional(out: SamplerOutput) -> SamplerOutput:
        """PyG's ``SamplerOutput.to_bidirectional``: each sampled edge in both directions,
        duplicates merged, sorted by (target, source); a reversed edge keeps the edge id it was
        sampled as; per-hop counts no longer apply."""
        num = out.node.numel()
        row = torch.cat([out.row, out.col])
        col = torch.cat([out.col, out.row])
        edge = torch.cat([out.edge, out.edge])
        key, order = torch.sort(col * num + row, stable=True)
        first = torch.ones_like(key, dtype=torch.bool)
        first[1:] = key[1:] != key[:-1]
        pick = order[first]
        return SamplerOutput(node=out.node, row=row.index_select(0, pick),
                             col=col.index_select(0, pick), edge=edge.index_select(0, pick),
                             batch=out.batch, num_sampled_nodes=None, num_sampled_edges=None)

    # ---- one hop ----------------------------------------------------------------------------
    #: Up to this many candidate neighbours in a hop, one sort over random keys picks them
    #: (few operations: small batches are bound by per-operation overhead); above it, Floyd's
    #: algorithm (no sort, cost independent of degrees). Weighted hops always sort.
    sort_limit: int = 1 << 14

    def _sample_hop(self, nodes: Tensor, fanout: int) -> tuple[Tensor, Tensor, Tensor]:
        """Pick neighbours of every node in ``nodes``; returns (neighbour global ids,
        position of the target in ``nodes``, original edge ids), grouped by target."""
        if fanout == 0:  # PyG: this hop samples nothing
            empty = torch.empty(0, dtype=torch.long, device=self.device)
            return empty, empty, empty
        start = self.colptr.index_select(0, nodes)
        deg = self.deg.index_select(0, nodes)
        ends = torch.cumsum(deg, 0)  # each node's end in the list of all candidates
        num_candidates = int(ends[-1]) if nodes.numel() else 0
        if fanout < 0 or (not self.replace and (
                num_candidates == 0 or int(deg.max()) <= fanout)):
            # every neighbour of every node
            owner = torch.repeat_interleave(deg, output_size=num_candidates)
            pos = self._expand(start - ends + deg, owner, num_candidates)
        elif self.replace and self.weight is not None:
            owner, pos = self._weighted_draws(start - ends + deg, deg, ends, num_candidates,
                                              fanout)
        elif self.replace:
            count = torch.where(deg > 0, fanout, 0)
            owner = torch.repeat_interleave(count, output_size=int(count.sum()))
            rand = torch.rand(owner.numel(), generator=self.generator, device=self.device,
                              dtype=torch.float64)
            offset = (rand * deg.index_select(0, owner)).long()
            pos = start.index_select(0, owner) + offset
        elif num_candidates <= self.sort_limit or self.weight is not None:
            owner, pos = self._smallest_keys(start, ends - deg, deg, num_candidates, fanout)
        else:
            owner, pos = self._floyd(start, deg, fanout)
        return self.row.index_select(0, pos), owner, self.edge_id.index_select(0, pos)

    def _expand(self, shift: Tensor, owner: Tensor, total: int) -> Tensor:
        """CSC positions of all candidates (``owner``: each one's node; ``shift``: each node's
        CSC start minus its start in the list of candidates)."""
        return torch.arange(total, device=self.device) + shift.index_select(0, owner)

    def _smallest_keys(self, start: Tensor, first: Tensor, deg: Tensor, num_candidates: int,
                       fanout: int) -> tuple[Tensor, Tensor]:
        """Every candidate gets a random key; each node keeps its ``fanout`` smallest. One sort
        of ``(node, key)`` shuffles inside each node's range and keeps the ranges in place, so
        the kept sorted positions are those whose rank in their range is below ``fanout``
        (``first``: each node's start in the list of candidates). Integer keys sort faster than
        float ones; a tie between two keys of a node (chance about deg^2 / 2^33) is the only
        departure from uniform, and negligible. Ranks come from the nodes' own arrays, so no
        ``O(E)`` rank table is kept (160 MB on a graph of 20M edges)."""
        cand_owner = torch.repeat_interleave(deg, output_size=num_candidates)
        rank = torch.arange(num_candidates, device=self.device) \
            - first.index_select(0, cand_owner)
        cand_pos = rank + start.index_select(0, cand_owner)
        if self.weight is None:
            keys = torch.randint(0, 1 << 32, (num_candidates,), generator=self.generator,
                                 device=self.device)
        else:
            keys = self._weighted_keys(cand_pos)
        keys.add_(cand_owner << 32)  # (node, 32-bit key)
        kept = torch.nonzero(rank < fanout).view(-1)
        chosen = torch.argsort(keys).index_select(0, kept)
        return cand_owner.index_select(0, kept), cand_pos.index_select(0, chosen)

    def _weighted_keys(self, cand_pos: Tensor) -> Tensor:
        """Efraimidis and Spirakis' keys ``Exp(1) / weight``: the ``k`` smallest of a node are
        ``k`` successive draws without replacement, each with probability proportional to the
        weight among those left (what ``torch.multinomial`` without replacement draws, as
        pyg-lib's weighted sampler does). A positive float32's bits order as its value, so the
        keys sort as 31-bit integers."""
        weight = self.weight.index_select(0, cand_pos)
        draws = torch.empty_like(weight).exponential_(generator=self.generator)
        return draws.div_(weight).view(torch.int32).long()

    def _weighted_draws(self, shift: Tensor, deg: Tensor, ends: Tensor, num_candidates: int,
                        fanout: int) -> tuple[Tensor, Tensor]:
        """``fanout`` draws with replacement per node, each candidate with probability
        proportional to its weight: inverse-CDF search in the candidates' cumulative weights,
        normalised per node (each node's block adds up to 1, so a light node next to heavy ones
        keeps its precision) and clamped to the node's block (every weight in it is > 0)."""
        cand_owner = torch.repeat_interleave(deg, output_size=num_candidates)
        cand_pos = self._expand(shift, cand_owner, num_candidates)
        weight = self.weight.index_select(0, cand_pos).double()
        total = torch.zeros(deg.numel(), dtype=torch.float64, device=self.device).index_add_(
            0, cand_owner, weight)
        cum = F.pad(torch.cumsum(weight / total.index_select(0, cand_owner), 0), (1, 0))
        count = torch.where(deg > 0, fanout, 0)
        owner = torch.repeat_interleave(count, output_size=int(count.sum()))
        first = (ends - deg).index_select(0, owner)
        last = ends.index_select(0, owner) - 1
        low, high = cum.index_select(0, first), cum.index_select(0, last + 1)
        rand = torch.rand(owner.numel(), generator=self.generator, device=self.device,
                          dtype=torch.float64)
        picked = torch.searchsorted(cum[1:], low + rand * (high - low), right=True)
        picked = torch.minimum(torch.maximum(picked, first), last)
        return owner, cand_pos.index_select(0, picked)

    def _floyd(self, start: Tensor, deg: Tensor, fanout: int) -> tuple[Tensor, Tensor]:
        """Robert Floyd's uniform ``fanout``-subset of ``range(deg)`` for all nodes whose degree
        exceeds the fanout at once: ``fanout`` vectorised steps of ``O(nodes x fanout)``."""
        count = deg.clamp(max=fanout)
        total = int(count.sum())
        owner = torch.repeat_interleave(count, output_size=total)
        # rank of each pick in its node: nodes with deg <= fanout take every neighbour
        offset = self._expand(count - torch.cumsum(count, 0), owner, total)
        heavy = deg > fanout
        d = deg[heavy]
        rand = torch.rand(d.numel(), fanout, generator=self.generator, device=self.device,
                          dtype=torch.float64)
        chosen = torch.empty(d.numel(), fanout, dtype=torch.long, device=self.device)
        for i in range(fanout):
            j = d - fanout + i  # pick t in [0, j]; if taken already, take j instead
            t = (rand[:, i] * (j + 1)).long()
            taken = (chosen[:, :i] == t.unsqueeze(1)).any(dim=1)
            chosen[:, i] = torch.where(taken, j, t)
        offset[heavy[owner]] = chosen.view(-1)
        return owner, start.index_select(0, owner) + offset


def layerwise_inference(model: nn.Module, loader: NeighborLoader) -> Tensor:
    """PyG's ``BasicGNN.inference`` over a full-neighbourhood loader, on the device that holds
    the loader's graph: our sampler returns ``n_id`` there, so each layer's embeddings must
    live there too (PyG's default keeps them on the CPU)."""
    device = loader.data.x.device
    return model.inference(loader, device=device, embedding_device=device)


class NeighborBatches(NeighborLoader):
    """PyG's ``NeighborLoader``, safe with worker processes.

    - Picklable for spawned workers. A worker receives the whole loader (through its
      ``collate_fn``), generator included; torch pickles a generator as a temporary state
      tensor, which goes to shared memory and is freed before the worker starts, so the worker
      died unpickling it. The main process draws the batch indices and the workers' seeds; a
      worker needs neither the generator nor the index samplers, so they stay behind.
    - No reference cycle. ``collate_fn`` is PyG's bound method, so the loader and its
      persistent worker iterator formed a cycle, which only the garbage collector frees: after
      it has closed the iterator's queues, so the workers never heard the shutdown and each
      cost a 5 s join timeout. :class:`LoaderMethod` holds the loader weakly instead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.collate_fn = LoaderMethod(self, "collate_fn")

    def _get_iterator(self) -> Any:
        iterator = super()._get_iterator()
        if isinstance(iterator, DataLoaderIterator):  # filtering in this process
            iterator.transform_fn = LoaderMethod(self, "filter_fn")
        if not (self.persistent_workers and self.num_workers > 0):
            # an iterator the loader does not hold keeps the loader alive (no cycle); a
            # persistent one is held by the loader, which must outlive it, as in torch
            iterator.keep_alive = self
        return iterator

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("generator", "sampler", "batch_sampler", "_iterator"):
            state[key] = None
        return state


class LoaderMethod:
    """A ``NeighborLoader`` method holding its loader weakly (no reference cycle); a pickled
    copy, for a spawned worker, holds its loader strongly, since nothing else there keeps it
    alive."""

    def __init__(self, loader: NeighborLoader, name: str, strong: bool = False) -> None:
        self.loader: Any = loader if strong else weakref.ref(loader)
        self.name, self.strong = name, strong

    def __call__(self, *args: Any) -> Any:
        loader = self.loader if self.strong else self.loader()
        if loader is None:
            raise RuntimeError("NeighborBatches: the loader of a persistent-worker iterator was "
                               "freed; keep a reference to the loader while iterating")
        return getattr(NeighborLoader, self.name)(loader, *args)

    def __reduce__(self) -> tuple[Any, ...]:
        return LoaderMethod, (self.loader if self.strong else self.loader(), self.name, True)


#: What :func:`make_neighbor_loader` passes on unchanged besides the sampler options it names:
#: ``DataLoader``'s arguments and ``NeighborLoader``'s batch transforms. Anything else is
#: refused, so that no option is silently dropped.
LOADER_OPTIONS = frozenset(
    ("sampler", "batch_sampler", "pin_memory", "drop_last", "timeout", "worker_init_fn",
     "multiprocessing_context", "generator", "prefetch_factor", "persistent_workers",
     "pin_memory_device", "in_order", "transform", "transform_sampler_output",
     "filter_per_worker"))


def resolve_backend(backend: str) -> str:
    if backend == "auto":  # ours when compiled: faster than torch-sparse's (docs/results.md)
        return "pyg" if pyg_sampler_available() and not compiled_sampler_available() else "torch"
    if backend == "pyg" and not pyg_sampler_available():
        raise ConfigError("sampler.backend: pyg needs pyg-lib or torch-sparse installed; "
                          "use backend torch or auto")
    if backend not in ("pyg", "torch"):
        raise ConfigError(f"sampler.backend: unknown backend {backend!r}")
    return backend


def make_neighbor_loader(data: Data, num_neighbors: Sequence[int], *, batch_size: int = 1,
                         input_nodes: Tensor | None = None, shuffle: bool = False,
                         replace: bool = False, backend: str = "auto",
                         seed: int | None = None, device: torch.device | str | None = None,
                         subgraph_type: SubgraphType | str = "directional",
                         disjoint: bool = False, weight_attr: str | None = None,
                         time_attr: str | None = None, input_time: Tensor | None = None,
                         temporal_strategy: str = "uniform", sample_direction: str = "forward",
                         directed: bool = True, is_sorted: bool = False, num_workers: int = 0,
                         **kwargs: Any) -> NeighborBatches:
    """A PyG ``NeighborLoader`` whose sampler is PyG's own (``pyg``) or ours (``torch``);
    ``auto`` picks ours where its compiled hop loop runs (numba), else PyG's when pyg-lib or
    torch-sparse is importable. Every sampler option of
    ``NeighborLoader`` is named here and reaches the sampler (ours refuses what it does not
    implement); ``kwargs`` may only be ``DataLoader`` arguments and batch transforms
    (:data:`LOADER_OPTIONS`, e.g. ``batch_sampler``, which replaces ``batch_size`` and
    ``shuffle``). With a ``seed``, shuffling and worker seeds come from a generator seeded with
    it, so a run is reproducible with ``num_workers > 0`` too, and iterating the loader never
    touches torch's global RNG."""
    unknown = sorted(set(kwargs) - LOADER_OPTIONS)
    if unknown:
        raise ValueError(f"{unknown[0]}: not an option of make_neighbor_loader (sampler "
                         f"options are named arguments; the rest go to DataLoader)")
    check_direction(sample_direction)
    options = {"subgraph_type": subgraph_type, "replace": replace, "disjoint": disjoint,
               "temporal_strategy": temporal_strategy, "time_attr": time_attr,
               "weight_attr": weight_attr, "is_sorted": is_sorted, "directed": directed}
    if resolve_backend(backend) == "torch":
        if input_time is not None:
            raise NotImplementedError(f"input_time: temporal sampling is not supported by {NAME}")
        sampler = TorchNeighborSampler(data, num_neighbors, seed=seed, device=device,
                                       share_memory=num_workers > 0, **options)
        if num_workers > 0 and sampler.device.type != "cpu":
            raise ValueError(f"num_workers: worker processes sample on the CPU, but the graph "
                             f"is on {sampler.device.type}; use num_workers=0")
        num_neighbors, options = sampler.num_neighbors, {"neighbor_sampler": sampler}
    else:
        options["input_time"] = input_time
    if seed is not None and "generator" not in kwargs:
        # also without shuffling: DataLoader draws each epoch's worker base seed from it,
        # else from the global RNG, which would tie training's dropout to evaluation
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return NeighborBatches(data, num_neighbors, input_nodes=input_nodes, batch_size=batch_size,
                           shuffle=shuffle, num_workers=num_workers, **options, **kwargs)
