"""Neighbour sampling written with tensor operations, for PyG's loaders.

PyG's ``NeighborSampler`` needs ``pyg-lib`` or ``torch-sparse``, which a plain ``pip install``
does not bring. :class:`TorchNeighborSampler` implements PyG's ``BaseSampler`` with torch alone
(CPU or CUDA: sampling runs where the graph's CSC lives) and is handed to PyG's own
``NeighborLoader``, so mini-batches (``n_id``, ``e_id``, ``batch_size``, ``input_id``,
``num_sampled_nodes``) are built by PyG exactly as usual, and ``BasicGNN.inference`` accepts them.

Semantics follow PyG's directed sampling: a node's sampled neighbours are its in-neighbours, edges
point neighbour -> node, seed nodes come first and in order, each hop expands only the nodes first
reached in the previous hop, and without replacement a node of in-degree ``d`` gets
``min(d, fanout)`` distinct neighbours chosen uniformly (``-1``: all of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.loader import NeighborLoader
from torch_geometric.sampler import BaseSampler, NodeSamplerInput, SamplerOutput

from gnn.errors import ConfigError


def pyg_sampler_available() -> bool:
    """True when PyG's own ``NeighborSampler`` can run (pyg-lib or torch-sparse installed)."""
    import torch_geometric.typing as pyg_typing

    return bool(pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE)


class TorchNeighborSampler(BaseSampler):
    """Vectorised uniform neighbour sampler over a CSC view of ``edge_index``.

    Memory: the CSC (``O(E)``) and one ``O(N)`` node -> local-id table are built once; each
    batch allocates only in proportion to the nodes and edges it samples.
    """

    def __init__(self, data: Data | Tensor, num_neighbors: Sequence[int], *,
                 num_nodes: int | None = None, replace: bool = False,
                 device: torch.device | str | None = None, seed: int | None = None) -> None:
        edge_index = data.edge_index if isinstance(data, Data) else data
        if num_nodes is None:
            num_nodes = data.num_nodes if isinstance(data, Data) else (
                int(edge_index.max()) + 1 if edge_index.numel() else 0)
        if any(k == 0 or k < -1 for k in num_neighbors):
            raise ValueError(f"fanouts must be positive or -1, got {list(num_neighbors)}")
        self.num_neighbors = list(num_neighbors)
        self.replace = replace
        self.num_nodes = int(num_nodes)
        self.device = torch.device(device) if device is not None else edge_index.device
        edge_index = edge_index.to(self.device)
        src, dst = edge_index[0], edge_index[1]
        order = torch.argsort(dst, stable=True)
        self.row = src[order]  # in-neighbours, grouped by target node
        self.edge_id = order  # CSC position -> original edge id
        deg = torch.bincount(dst, minlength=self.num_nodes)
        self.colptr = F.pad(torch.cumsum(deg, 0), (1, 0))
        self.deg = deg
        # rank of each CSC entry within its target's range (one O(E) array, built once)
        self.csc_rank = torch.arange(dst.numel(), device=self.device) - torch.repeat_interleave(
            self.colptr[:-1], deg, output_size=dst.numel())
        self._local = torch.full((self.num_nodes,), self.UNSEEN, dtype=torch.long,
                                 device=self.device)
        self.generator = torch.Generator(device=self.device)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        self.generator.manual_seed(seed)

    # ---- BaseSampler --------------------------------------------------------------------
    def sample_from_nodes(self, inputs: NodeSamplerInput, **_: Any) -> SamplerOutput:
        out = self.sample(inputs.node)
        out.metadata = (inputs.input_id, inputs.time)
        return out

    def sample_from_edges(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("link-level sampling is not supported")

    @property
    def edge_permutation(self) -> None:
        return None  # ``edge`` already holds original edge ids

    # ---- sampling -----------------------------------------------------------------------
    # Small batches are bound by per-operation overhead (about 80 tensor operations a batch),
    # so the code below uses the cheapest form of each: ``index_select`` rather than ``[]``
    # (2-3x cheaper on CPU), ``scatter_`` rather than ``[] =``, and contiguous local ids
    # (``owner + offset``) rather than gathers.
    #: Node-table entry of a node the current batch has not reached: above every local id and
    #: every discovery code, so a scatter-min over the table keeps what is already there.
    UNSEEN: int = 1 << 62

    def sample(self, seeds: Tensor) -> SamplerOutput:
        """Sample the multi-hop neighbourhood of ``seeds`` (global node ids)."""
        seeds = seeds.to(self.device, torch.long)
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
        except BaseException:
            local.fill_(self.UNSEEN)  # interrupted mid-hop: restore the whole table
            raise
        local.index_fill_(0, node, self.UNSEEN)  # reset only what this batch touched
        empty = torch.empty(0, dtype=torch.long, device=self.device)
        return SamplerOutput(
            node=node,
            row=torch.cat(rows) if rows else empty,
            col=torch.cat(cols) if cols else empty,
            edge=torch.cat(edges) if edges else empty,
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

    #: Up to this many candidate neighbours in a hop, one sort over random keys picks them
    #: (few operations: small batches are bound by per-operation overhead); above it, Floyd's
    #: algorithm (no sort, cost independent of degrees).
    sort_limit: int = 1 << 14

    def _sample_hop(self, nodes: Tensor, fanout: int) -> tuple[Tensor, Tensor, Tensor]:
        """Pick neighbours of every node in ``nodes``; returns (neighbour global ids,
        position of the target in ``nodes``, original edge ids), grouped by target."""
        start = self.colptr.index_select(0, nodes)
        deg = self.deg.index_select(0, nodes)
        ends = torch.cumsum(deg, 0)  # each node's end in the list of all candidates
        num_candidates = int(ends[-1]) if nodes.numel() else 0
        if fanout < 0 or (not self.replace and (
                num_candidates == 0 or int(deg.max()) <= fanout)):
            # every neighbour of every node
            owner = torch.repeat_interleave(deg, output_size=num_candidates)
            pos = self._expand(start - ends + deg, owner, num_candidates)
        elif self.replace:
            count = torch.where(deg > 0, fanout, 0)
            owner = torch.repeat_interleave(count, output_size=int(count.sum()))
            rand = torch.rand(owner.numel(), generator=self.generator, device=self.device,
                              dtype=torch.float64)
            offset = (rand * deg.index_select(0, owner)).long()
            pos = start.index_select(0, owner) + offset
        elif num_candidates <= self.sort_limit:
            owner, pos = self._smallest_keys(start - ends + deg, deg, num_candidates, fanout)
        else:
            owner, pos = self._floyd(start, deg, fanout)
        return self.row.index_select(0, pos), owner, self.edge_id.index_select(0, pos)

    def _expand(self, shift: Tensor, owner: Tensor, total: int) -> Tensor:
        """CSC positions of all candidates (``owner``: each one's node; ``shift``: each node's
        CSC start minus its start in the list of candidates)."""
        return torch.arange(total, device=self.device) + shift.index_select(0, owner)

    def _smallest_keys(self, shift: Tensor, deg: Tensor, num_candidates: int,
                       fanout: int) -> tuple[Tensor, Tensor]:
        """Every candidate gets a random key; each node keeps its ``fanout`` smallest. One sort
        of ``(node, key)`` shuffles inside each node's range and keeps the ranges in place, so
        the kept sorted positions are those whose rank in their range is below ``fanout``.
        Integer keys sort faster than float ones; a tie between two keys of a node (chance
        about deg^2 / 2^33) is the only departure from uniform, and negligible."""
        cand_owner = torch.repeat_interleave(deg, output_size=num_candidates)
        cand_pos = self._expand(shift, cand_owner, num_candidates)
        keys = torch.randint(0, 1 << 32, (num_candidates,), generator=self.generator,
                             device=self.device).add_(cand_owner << 32)  # (node, 32-bit key)
        kept = torch.nonzero(self.csc_rank.index_select(0, cand_pos) < fanout).view(-1)
        chosen = torch.argsort(keys).index_select(0, kept)
        return cand_owner.index_select(0, kept), cand_pos.index_select(0, chosen)

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


def make_neighbor_loader(data: Data, num_neighbors: Sequence[int], *, batch_size: int = 1,
                         input_nodes: Tensor | None = None, shuffle: bool = False,
                         replace: bool = False, backend: str = "auto",
                         seed: int | None = None, device: torch.device | str | None = None,
                         **kwargs: Any) -> NeighborLoader:
    """A PyG ``NeighborLoader`` whose sampler is PyG's own (``pyg``) or ours (``torch``);
    ``auto`` picks PyG's when pyg-lib or torch-sparse is importable. ``kwargs`` go to the
    ``DataLoader`` (e.g. ``batch_sampler``, which replaces ``batch_size`` and ``shuffle``)."""
    if backend == "auto":
        backend = "pyg" if pyg_sampler_available() else "torch"
    sampler = None
    if backend == "pyg":
        if not pyg_sampler_available():
            raise ConfigError("sampler.backend: pyg needs pyg-lib or torch-sparse installed; "
                              "use backend torch or auto")
    elif backend == "torch":
        sampler = TorchNeighborSampler(data, num_neighbors, replace=replace, seed=seed,
                                       device=device)
    else:
        raise ConfigError(f"sampler.backend: unknown backend {backend!r}")
    if shuffle and seed is not None and "generator" not in kwargs:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return NeighborLoader(data, list(num_neighbors), input_nodes=input_nodes,
                          batch_size=batch_size, shuffle=shuffle, replace=replace,
                          neighbor_sampler=sampler, **kwargs)
