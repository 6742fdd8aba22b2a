"""The compiled GAT attention of stacked members (``gnn.attention_kernel``): the numbers and
gradients of the tensor code (PyG's softmax and a scatter) on any graph, with and without
dropout, dropout masks of each member's own at the requested rate, and the same results on one
thread or several."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import softmax

from gnn.members import AttentionGraph, attention

pytest.importorskip("numba", reason="the compiled attention needs numba")

SLOPE = 0.2


@st.composite
def graphs(draw: st.DrawFn) -> tuple[Tensor, int]:
    """A random directed graph (isolated nodes and self-loops allowed: GATConv replaces the
    latter with one per node)."""
    n = draw(st.integers(1, 25))
    edges = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
                          max_size=80))
    edge_index = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
    return edge_index, n


def _inputs(n: int, width: int, channels: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Features ``[N, K, C]`` and attention vectors ``[K, C]`` (K members x heads)."""
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(n, width, channels, generator=generator)
    att_src = torch.randn(width, channels, generator=generator)
    att_dst = torch.randn(width, channels, generator=generator)
    return h, att_src, att_dst


def _reference(graph: AttentionGraph, h: Tensor, att_src: Tensor, att_dst: Tensor,
               factor: Tensor | None) -> Tensor:
    """The tensor code, with the kernel's dropout factors ``[E, K]`` where given."""
    a_src, a_dst = (h * att_src).sum(-1), (h * att_dst).sum(-1)
    z = F.leaky_relu(a_src[graph.src] + a_dst[graph.dst], SLOPE)
    alpha = softmax(z, graph.dst, num_nodes=h.size(0))
    if factor is not None:
        alpha = alpha * factor
    return torch.zeros_like(h).index_add_(0, graph.dst, h[graph.src] * alpha.unsqueeze(-1))


@settings(max_examples=40, deadline=None)
@given(graph=graphs(), members=st.integers(1, 3), heads=st.integers(1, 3),
       channels=st.integers(1, 5), p=st.sampled_from([0.0, 0.5]), seed=st.integers(0, 99))
def test_compiled_attention_equals_tensor_code(graph: tuple[Tensor, int], members: int,
                                               heads: int, channels: int, p: float,
                                               seed: int) -> None:
    """Output and the gradients of features and both logit terms within float32 rounding of
    the tensor code given the same dropout factors."""
    edge_index, n = graph
    built = AttentionGraph.build(edge_index, n)
    inputs = _inputs(n, members * heads, channels, seed)
    arrays = [t.numpy() for t in inputs]
    out, saved = built.kernel.forward(*arrays, SLOPE, p, seed)
    leaves = [t.clone().requires_grad_() for t in inputs]
    expected = _reference(built, *leaves, torch.from_numpy(saved.factor) if p else None)
    torch.testing.assert_close(torch.from_numpy(out), expected.detach(), rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed + 1))
    expected.backward(grad_out)
    grads = built.kernel.backward(*arrays, saved, grad_out.numpy(), SLOPE)
    for ours, leaf in zip(grads, leaves, strict=True):
        torch.testing.assert_close(torch.from_numpy(ours), leaf.grad, rtol=1e-4, atol=1e-4)


def test_tensor_attention_equals_gatconv(cora_edges: tuple[Tensor, int]) -> None:
    """The tensor path (any device) computes PyG's GATConv attention, member by member."""
    from torch_geometric.nn import GATConv
    edge_index, n = cora_edges
    torch.manual_seed(0)
    convs = [GATConv(12, 4, heads=3) for _ in range(2)]
    x = torch.randn(n, 12)
    h = torch.cat([conv.lin(x).view(n, 3, 4) for conv in convs], 1)  # [N, 2 x 3 heads, 4]
    att_src = torch.cat([conv.att_src[0] for conv in convs])
    att_dst = torch.cat([conv.att_dst[0] for conv in convs])
    ours = attention(h, att_src, att_dst, AttentionGraph.build(edge_index, n), SLOPE, 0.0)
    for m, conv in enumerate(convs):
        theirs = conv(x, edge_index) - conv.bias
        torch.testing.assert_close(ours[:, 3 * m:3 * m + 3].reshape(n, -1), theirs, rtol=1e-5,
                                   atol=1e-5)


def test_dropout_keeps_each_weight_at_the_rate_with_masks_of_its_own(
        cora_edges: tuple[Tensor, int]) -> None:
    """With p = 0.6 about 40% of the weights are kept, each scaled by 1 / 0.4; two members'
    masks, and two steps' (other seeds), differ; one seed gives one mask."""
    edge_index, n = cora_edges
    kernel = AttentionGraph.build(edge_index, n).kernel
    arrays = [t.numpy() for t in _inputs(n, 2 * 8, 4, 0)]  # 2 members x 8 heads
    masks = [kernel.forward(*arrays, SLOPE, 0.6, seed)[1].factor for seed in (1, 1, 2)]
    kept = masks[0] > 0
    assert abs(kept.mean() - 0.4) < 0.005
    np.testing.assert_allclose(masks[0][kept], 1 / 0.4, rtol=1e-4)
    np.testing.assert_array_equal(masks[0], masks[1])
    assert (masks[0] != masks[2]).mean() > 0.4
    assert (kept[:, :8] != kept[:, 8:]).mean() > 0.4  # member 0's heads against member 1's


def test_threads_do_not_change_the_results(cora_edges: tuple[Tensor, int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes split between threads give the numbers of one thread, bit for bit."""
    edge_index, n = cora_edges
    kernel = AttentionGraph.build(edge_index, n).kernel
    arrays = [t.numpy() for t in _inputs(n, 3 * 8, 4, 0)]
    runs = []
    for threads in (1, 2):
        monkeypatch.setattr(kernel, "threads", threads)
        out, saved = kernel.forward(*arrays, SLOPE, 0.5, 7)
        runs.append((out, *saved, *kernel.backward(*arrays, saved, out, SLOPE)))
    for one, two in zip(*runs, strict=True):
        np.testing.assert_array_equal(one, two)


@pytest.fixture
def cora_edges(cora: Data) -> tuple[Tensor, int]:
    return cora.edge_index, cora.num_nodes
