"""The neighbour sampler's hops as one compiled loop (numba), for graphs on the CPU.

On a small batch the vectorised sampler is bound by the cost of starting tensor operations
(about 35 a hop, a microsecond or more each), not by arithmetic: a Cora batch of 64 seeds
touches about 2,000 candidate edges. One compiled pass over each hop's frontier does the same
work without those operations. It follows the vectorised sampler's semantics exactly (seeds
first, new nodes numbered in order of first occurrence, edges grouped by target, each hop
expanding only the nodes first reached in the hop before) and writes the same node table,
which it leaves as it found it.

Randomness comes from a splitmix64 stream seeded per batch by the caller (from the sampler's
torch generator, so workers and epochs keep their own streams). Without replacement a node of
in-degree ``d > k`` gets a uniform ``k``-subset: Robert Floyd's algorithm for ``k <= 32``
(``O(k^2)``, no scratch memory), selection sampling (``O(d)``) above.

numba is imported only where this module is: a process that never samples on the CPU does not
pay its import, and :func:`available` says whether it can be used at all.
"""

from __future__ import annotations

import numpy as np

from gnn.compiled import GOLDEN, available, jit, mix64

__all__ = ["FLOYD_LIMIT", "available", "sample_hops"]

#: Largest fanout drawn with Floyd's algorithm (a linear scan of the picks so far).
FLOYD_LIMIT = 32


@jit
def _next(state: np.ndarray) -> np.uint64:
    """splitmix64: the next 64 random bits of the stream kept in ``state[0]``."""
    state[0] += GOLDEN
    return mix64(state[0])


@jit
def _below(state: np.ndarray, n: int) -> int:
    """A uniform integer in ``[0, n)`` from 53 random bits (bias below ``n / 2**53``)."""
    return np.int64(np.float64(_next(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0) * n)


@jit
def _pick(state: np.ndarray, d: int, k: int, replace: bool, chosen: np.ndarray) -> int:
    """Fill ``chosen`` with the offsets (in ``range(d)``) of a node's sampled in-neighbours;
    returns how many. ``k < 0``: all of them."""
    if d == 0 or k == 0:
        return 0
    if k < 0 or (not replace and d <= k):
        for j in range(d):
            chosen[j] = j
        return d
    if replace:
        for j in range(k):
            chosen[j] = _below(state, d)
    elif k <= FLOYD_LIMIT:  # Floyd: pick t in [0, j]; if taken already, take j instead
        for i in range(k):
            j = d - k + i
            t = _below(state, j + 1)
            for q in range(i):
                if chosen[q] == t:
                    t = j
                    break
            chosen[i] = t
    else:  # selection sampling: keep each offset with probability needed / left
        needed = k
        n = 0
        for j in range(d):
            if _below(state, d - j) < needed:
                chosen[n] = j
                n += 1
                needed -= 1
                if needed == 0:
                    break
    return k


@jit
def _hop_bound(colptr: np.ndarray, node: np.ndarray, first: int, last: int, k: int,
               replace: bool) -> tuple:
    """Most edges the hop from ``node[first:last]`` can sample, and the largest degree."""
    bound, max_deg = 0, 0
    for i in range(first, last):
        d = colptr[node[i] + 1] - colptr[node[i]]
        max_deg = max(max_deg, d)
        if k < 0 or (not replace and d <= k):
            bound += d
        elif d > 0:
            bound += k
    return bound, max_deg


@jit
def _grow(array: np.ndarray, used: int, size: int) -> np.ndarray:
    """``array`` with room for ``size`` entries (doubling), its first ``used`` kept."""
    if size <= array.shape[0]:
        return array
    bigger = np.empty(max(size, 2 * array.shape[0]), array.dtype)
    bigger[:used] = array[:used]
    return bigger


@jit
def sample_hops(colptr: np.ndarray, row: np.ndarray, edge_id: np.ndarray, seeds: np.ndarray,
                fanouts: np.ndarray, replace: bool, table: np.ndarray, unseen: int,
                seed: int) -> tuple:
    """Sample every hop from ``seeds`` over the CSC (``colptr``, ``row``, ``edge_id``).

    ``table`` (one entry per graph node, all ``unseen``) numbers the batch's nodes while it
    runs and is reset before returning. Returns (node, row, col, edge, nodes per hop, edges
    per hop), local ids in ``row``/``col`` as the vectorised sampler gives them.
    """
    num_nodes = table.shape[0]
    for i in range(seeds.shape[0]):
        if seeds[i] < 0 or seeds[i] >= num_nodes:
            raise IndexError("seed node id out of range of the graph's nodes")
    state = np.empty(1, np.uint64)
    state[0] = np.uint64(seed)
    node = np.empty(max(seeds.shape[0], 16), np.int64)
    for i in range(seeds.shape[0]):
        node[i] = seeds[i]
        table[seeds[i]] = i
    rows = np.empty(16, np.int64)
    cols = np.empty(16, np.int64)
    edges = np.empty(16, np.int64)
    chosen = np.empty(16, np.int64)
    num_hop_nodes = np.zeros(fanouts.shape[0] + 1, np.int64)
    num_hop_edges = np.zeros(fanouts.shape[0], np.int64)
    total, num_edges, first, last = seeds.shape[0], 0, 0, seeds.shape[0]
    num_hop_nodes[0] = total
    for h in range(fanouts.shape[0]):
        k = fanouts[h]
        bound, max_deg = _hop_bound(colptr, node, first, last, k, replace)
        rows = _grow(rows, num_edges, num_edges + bound)
        cols = _grow(cols, num_edges, num_edges + bound)
        edges = _grow(edges, num_edges, num_edges + bound)
        node = _grow(node, total, total + bound)
        chosen = _grow(chosen, 0, max(k, max_deg))
        hop_start = num_edges
        for i in range(first, last):
            start = colptr[node[i]]
            n = _pick(state, colptr[node[i] + 1] - start, k, replace, chosen)
            for j in range(n):
                pos = start + chosen[j]
                u = row[pos]
                local = table[u]
                if local == unseen:  # first reached now: the next local id
                    local = total
                    table[u] = total
                    node[total] = u
                    total += 1
                rows[num_edges] = local
                cols[num_edges] = i
                edges[num_edges] = edge_id[pos]
                num_edges += 1
        num_hop_edges[h] = num_edges - hop_start
        first, last = last, total
        num_hop_nodes[h + 1] = total - first
    for i in range(total):
        table[node[i]] = unseen
    return (node[:total], rows[:num_edges], cols[:num_edges], edges[:num_edges],
            num_hop_nodes, num_hop_edges)
