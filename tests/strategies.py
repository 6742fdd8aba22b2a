"""Hypothesis strategies for graphs: isolated nodes, self-loops and duplicate edges included."""

from __future__ import annotations

import torch
from hypothesis import strategies as st


@st.composite
def graphs(draw: st.DrawFn, min_nodes: int = 1, max_nodes: int = 24,
           max_edges: int = 80) -> tuple[int, torch.Tensor]:
    """``(num_nodes, edge_index)``; edges are drawn as random pairs, so multi-edges and
    self-loops occur, and nodes that no pair names stay isolated."""
    num_nodes = draw(st.integers(min_nodes, max_nodes))
    pairs = draw(st.lists(st.tuples(st.integers(0, num_nodes - 1),
                                    st.integers(0, num_nodes - 1)), max_size=max_edges))
    edge_index = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2).t().contiguous()
    return num_nodes, edge_index


def features(num_nodes: int, num_features: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_nodes, num_features, generator=generator)


@st.composite
def sampling_cases(draw: st.DrawFn, fanouts: st.SearchStrategy[list[int]],
                   max_edges: int = 120):
    """(num_nodes, edge_index, seeds, fanouts): small graphs with multi-edges, self-loops,
    isolated nodes and sometimes a hub (a node with many in-neighbours); distinct seeds, as
    PyG's loaders give them."""
    num_nodes, edge_index = draw(graphs(max_edges=max_edges))
    if draw(st.booleans()) and num_nodes > 1:
        hub = draw(st.integers(0, num_nodes - 1))
        src = torch.arange(num_nodes)
        edge_index = torch.cat([edge_index, torch.stack([src, torch.full_like(src, hub)])], 1)
    seeds = draw(st.lists(st.integers(0, num_nodes - 1), unique=True, max_size=num_nodes))
    return num_nodes, edge_index, torch.tensor(seeds, dtype=torch.long), draw(fanouts)
