"""Hypothesis strategies for graphs: isolated nodes, self-loops and duplicate edges included."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck
from hypothesis import strategies as st

#: For ``@settings(suppress_health_check=...)`` of a test that takes the function-scoped
#: ``sampler_code`` fixture: it sets a class attribute once per test, which every example
#: may share.
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


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


@st.composite
def split_requests(draw: st.DrawFn, max_classes: int = 6,
                   max_per_class: int = 30) -> tuple[torch.Tensor, int, int]:
    """``(labels, train_per_class, val_per_class)``: shuffled labels of classes of unequal
    sizes, every class large enough for the request and at least one node left to test."""
    train = draw(st.integers(1, 5))
    val = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(train + val, max(train + val, max_per_class)),
                          min_size=1, max_size=max_classes))
    if sum(sizes) == len(sizes) * (train + val):
        sizes[0] += 1  # somebody to test
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(sizes)])
    order = draw(st.permutations(range(labels.numel())))
    return labels[torch.tensor(order, dtype=torch.long)], train, val
