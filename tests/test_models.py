"""Models: shapes, finiteness, permutation equivariance, fast path == plain PyG path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gnn.config import ModelConfig
from gnn.kernels import SparseAwareLinear, feature_dropout
from gnn.models import MODELS, build_model
from tests.strategies import features, graphs

NUM_FEATURES, NUM_CLASSES = 5, 3
GRAPH_MODELS = [name for name, cls in MODELS.items() if cls.uses_graph]
#: Models with parameters to train (label propagation has none).
TRAINED = sorted(name for name, cls in MODELS.items() if getattr(cls, "trains", True))


def training_labels(num_nodes: int) -> torch.Tensor:
    """One-hot labels on every other node (the training nodes), zero rows elsewhere: the third
    input of the models that read labels."""
    y = torch.nn.functional.one_hot(torch.arange(num_nodes) % NUM_CLASSES, NUM_CLASSES).float()
    return y * (torch.arange(num_nodes) % 2 == 0).unsqueeze(1)


def run(model: torch.nn.Module, x: torch.Tensor, edge_index: torch.Tensor,
        labels: torch.Tensor | None = None) -> torch.Tensor:
    """``model(x, edge_index)``, with training labels for a model that reads them."""
    if not getattr(model, "uses_labels", False):
        return model(x, edge_index)
    return model(x, edge_index, training_labels(x.size(0)) if labels is None else labels)


def make(name: str, fast: bool = True, seed: int = 0, dropout: float = 0.5) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(name=name, hidden_channels=8, num_layers=2, dropout=dropout, heads=2,
                      attn_dropout=dropout, fast=fast)
    return build_model(cfg, NUM_FEATURES, NUM_CLASSES).eval()


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=25, deadline=None)
@given(graph=graphs(), seed=st.integers(0, 2**16))
def test_output_shape_and_finite(name: str, graph: tuple[int, torch.Tensor], seed: int) -> None:
    num_nodes, edge_index = graph
    out = run(make(name), features(num_nodes, NUM_FEATURES, seed), edge_index)
    assert out.shape == (num_nodes, NUM_CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", GRAPH_MODELS)
@settings(max_examples=25, deadline=None)
@given(graph=graphs(), seed=st.integers(0, 2**16), data=st.data())
def test_permutation_equivariance(name: str, graph: tuple[int, torch.Tensor], seed: int,
                                  data: st.DataObject) -> None:
    num_nodes, edge_index = graph
    perm = torch.tensor(data.draw(st.permutations(range(num_nodes))), dtype=torch.long)
    x = features(num_nodes, NUM_FEATURES, seed)
    model = make(name)
    labels = training_labels(num_nodes)
    out = run(model, x, edge_index, labels)
    # Node i of the permuted graph is node perm[i] of the original one.
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(num_nodes)
    edge_order = torch.randperm(edge_index.size(1), generator=torch.Generator().manual_seed(seed))
    permuted_edges = inverse[edge_index][:, edge_order]
    out_perm = run(model, x[perm], permuted_edges, labels[perm])
    torch.testing.assert_close(out_perm, out[perm], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", GRAPH_MODELS)
@settings(max_examples=25, deadline=None)
@given(graph=graphs(), seed=st.integers(0, 2**16))
def test_fast_path_matches_plain_pyg(name: str, graph: tuple[int, torch.Tensor],
                                     seed: int) -> None:
    num_nodes, edge_index = graph
    x = features(num_nodes, NUM_FEATURES, seed)
    fast, plain = make(name, fast=True), make(name, fast=False)
    plain.load_state_dict(fast.state_dict())
    torch.testing.assert_close(run(fast, x, edge_index), run(plain, x, edge_index), atol=1e-5,
                               rtol=1e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sparse_features_match_dense(name: str) -> None:
    x = torch.rand(40, NUM_FEATURES) * (torch.rand(40, NUM_FEATURES) < 0.2)
    edge_index = torch.randint(0, 40, (2, 120))
    model = make(name)
    torch.testing.assert_close(run(model, x.to_sparse_csr(), edge_index),
                               run(model, x, edge_index), atol=1e-5, rtol=1e-4)


def test_graph_cache_rebuilds_for_a_new_graph() -> None:
    model = make("gcn")
    x = torch.randn(6, NUM_FEATURES)
    a = torch.tensor([[0, 1, 2], [1, 2, 3]])
    b = torch.tensor([[3, 4, 5], [4, 5, 0]])
    out_a, out_b = model(x, a), model(x, b)
    assert not torch.allclose(out_a, out_b)
    torch.testing.assert_close(model(x, a), make("gcn", fast=False)(x, a))
    a[1, 0] = 5  # in-place change of the same tensor is noticed too
    torch.testing.assert_close(model(x, a), make("gcn", fast=False)(x, a))


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_graph_cache_under_inference_mode(name: str) -> None:
    """Graphs made inside ``torch.inference_mode`` (sampled evaluation batches) have no version
    counter; a new graph of the same shape, even at a recycled address, is not served stale."""
    model = make(name)
    x = torch.randn(6, NUM_FEATURES)
    with torch.inference_mode():
        for seed in range(5):
            g = torch.Generator().manual_seed(seed)
            edge_index = torch.randint(0, 6, (2, 9), generator=g)
            torch.testing.assert_close(run(model, x, edge_index),
                                       run(make(name, fast=False), x, edge_index))
            del edge_index  # its memory may be reused by the next one


@pytest.mark.parametrize("name", TRAINED)
def test_reset_parameters_changes_weights(name: str) -> None:
    model = make(name)
    before = [p.detach().clone() for p in model.parameters()]
    model.reset_parameters()
    after = list(model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("name", TRAINED)
@settings(max_examples=15, deadline=None)
@given(graph=graphs(min_nodes=2), seed=st.integers(0, 2**16))
def test_fast_path_gradients_match_plain(name: str, graph: tuple[int, torch.Tensor],
                                         seed: int) -> None:
    """Training through the fast path (CSR features, cached operators and transposes) gives
    the same weight gradients as the plain PyG path."""
    num_nodes, edge_index = graph
    x = features(num_nodes, NUM_FEATURES, seed)
    x = x * (x > 0.5)  # sparse-ish
    # no dropout: input dropout on CSR features draws other random numbers than on dense ones
    fast, plain = make(name, fast=True, dropout=0.0), make(name, fast=False, dropout=0.0)
    plain.load_state_dict(fast.state_dict())
    grads = []
    for model, inputs in ((fast, x.to_sparse_csr()), (plain, x)):
        model.train()
        run(model, inputs, edge_index).square().sum().backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for key, grad in grads[1].items():
        torch.testing.assert_close(grads[0][key], grad, atol=1e-4, rtol=1e-4, msg=key)


@pytest.mark.parametrize("name", TRAINED)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu(name: str) -> None:
    """Every model's fast path (CSR features, cached operators) runs on a GPU and gives the CPU's
    outputs and weight gradients."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, NUM_FEATURES, generator=g)
    x = x * (x > 0.6)
    edge_index = torch.randint(0, 300, (2, 1500), generator=g)
    cpu = make(name, dropout=0.0)
    gpu = make(name, dropout=0.0).cuda()
    gpu.load_state_dict(cpu.state_dict())
    for inputs in (x, x.to_sparse_csr()):
        results = []
        for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
            model.zero_grad(set_to_none=True)
            out = run(model.train(), inputs.to(dev), edge_index.to(dev))
            out.square().sum().backward()
            results.append((out.detach().cpu(),
                            {k: p.grad.cpu() for k, p in model.named_parameters()}))
        torch.testing.assert_close(results[1][0], results[0][0], atol=1e-4, rtol=1e-4)
        for key, grad in results[0][1].items():
            torch.testing.assert_close(results[1][1][key], grad, atol=1e-3, rtol=1e-3, msg=key)


@pytest.mark.parametrize("K", [0, 1, 3])
def test_personalized_pagerank_rows_equal_full_rows(K: int) -> None:
    """APPNP's propagation restricted to some rows (the last step through those rows of the
    operator) gives the full result's rows and the same gradient, on a directed graph (where
    the backward's transposes differ from the operator)."""
    from gnn.kernels import csr_rows, gcn_operator, personalized_pagerank, with_transpose

    g = torch.Generator().manual_seed(K)
    edge_index = torch.randint(0, 40, (2, 160), generator=g)
    adj = gcn_operator(edge_index, 40)
    rows = torch.tensor([1, 5, 6, 20, 39])
    h = torch.randn(40, 3, generator=g, requires_grad=True)
    full = personalized_pagerank(adj, h, K, 0.1)
    grad = torch.randn(len(rows), 3, generator=g)
    (full[rows] * grad).sum().backward()
    expected, h.grad = h.grad, None
    part = personalized_pagerank(adj, h, K, 0.1, rows, with_transpose(csr_rows(adj, rows)))
    (part * grad).sum().backward()
    torch.testing.assert_close(part, full[rows].detach())
    torch.testing.assert_close(h.grad, expected)


@settings(max_examples=30, deadline=None)
@given(graph=graphs(min_nodes=2), K=st.integers(1, 12), alpha=st.sampled_from([0.1, 0.5]),
       data=st.data())
def test_dense_pagerank_rows_equal_the_steps(graph: tuple[int, torch.Tensor], K: int,
                                             alpha: float, data: st.DataObject) -> None:
    """APPNP's propagation to some rows as one dense matrix gives the steps' rows and the
    gradient of ``h`` to float32 rounding, on directed graphs (the matrix is built over the
    transpose)."""
    from gnn.kernels import (
        PageRankRows,
        csr_rows,
        gcn_operator,
        personalized_pagerank,
        with_transpose,
    )

    n, edge_index = graph
    adj = gcn_operator(edge_index, n)
    rows = torch.tensor(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1))))
    g = torch.Generator().manual_seed(K)
    h = torch.randn(n, 5, generator=g, requires_grad=True)
    grad = torch.randn(len(rows), 5, generator=g)
    steps = personalized_pagerank(adj, h, K, alpha, rows, with_transpose(csr_rows(adj, rows)))
    steps.backward(grad)
    expected, h.grad = h.grad, None
    dense = PageRankRows(adj, rows, K, alpha)(h)
    dense.backward(grad)
    torch.testing.assert_close(dense, steps.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h.grad, expected, rtol=1e-5, atol=1e-5)


def test_dense_pagerank_rows_pay_only_for_few_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dense matrix is used for a few rows of a sparse operator with its transpose, never
    without steps, for most of the rows, or past its memory bound."""
    from gnn import kernels
    from gnn.kernels import PageRankRows, gcn_operator

    edge_index = torch.randint(0, 1000, (2, 5000), generator=torch.Generator().manual_seed(0))
    adj = gcn_operator(edge_index, 1000)
    few, most = torch.arange(20), torch.arange(900)
    assert PageRankRows.pays(adj, few, 10)
    assert not PageRankRows.pays(adj, few, 0)
    assert not PageRankRows.pays(adj, most, 10)
    bare = torch.sparse_csr_tensor(adj.crow_indices(), adj.col_indices(), adj.values(),
                                   adj.shape)
    assert not PageRankRows.pays(bare, few, 10)  # no transpose to build the matrix from
    monkeypatch.setattr(kernels, "MAX_DENSE_ROWS_BYTES", 20 * 1000 * 4 - 1)
    assert not PageRankRows.pays(adj, few, 10)


@pytest.mark.parametrize("name", ["mlp", "cs", "gcn"])
@pytest.mark.parametrize("sparse", [False, True])
def test_input_dropout_drops_the_features_once_and_only_in_training(name: str,
                                                                    sparse: bool) -> None:
    """With ``input_dropout`` the model equals its twin without it fed the features after one
    dropout draw (same weights, same RNG state); in evaluation nothing is dropped."""
    x = torch.rand(30, NUM_FEATURES) * (torch.rand(30, NUM_FEATURES) < 0.5)
    x = x.to_sparse_csr() if sparse else x
    edge_index = torch.randint(0, 30, (2, 90))
    cfg = ModelConfig(name=name, hidden_channels=8, num_layers=2, dropout=0.0)
    torch.manual_seed(0)
    plain = build_model(cfg, NUM_FEATURES, NUM_CLASSES)
    dropping = build_model(ModelConfig(**{**vars(cfg), "input_dropout": 0.6}), NUM_FEATURES,
                           NUM_CLASSES)
    dropping.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    got = run(dropping.train(), x, edge_index)
    torch.manual_seed(1)
    want = run(plain.train(), feature_dropout(x, 0.6, True), edge_index)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, run(plain, x, edge_index))  # something was dropped
    torch.testing.assert_close(run(dropping.eval(), x, edge_index),
                               run(plain.eval(), x, edge_index))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 12), cols=st.integers(1, 9))
def test_sparse_linear_on_new_values_of_one_pattern(seed: int, rows: int, cols: int) -> None:
    """CSR input whose values change on one pattern (input dropout every step) gives the
    dense product's output and weight gradient, with the pattern transposed once."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) < 0.4))
    x = x.to_sparse_csr()
    torch.manual_seed(seed)
    layer = SparseAwareLinear(cols, 4)
    built = []
    for _ in range(3):
        values = x.values() * (torch.rand(x.values().shape, generator=g) < 0.5) * 2.0
        dropped = torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), values, x.shape)
        upstream = torch.randn(rows, 4, generator=g)
        (grad,) = torch.autograd.grad((layer(dropped) * upstream).sum(), layer.weight)
        dense_out = dropped.to_dense() @ layer.weight.t() + layer.bias
        (want,) = torch.autograd.grad((dense_out * upstream).sum(), layer.weight)
        torch.testing.assert_close(layer(dropped), dense_out)
        torch.testing.assert_close(grad, want)
        built.append(layer.__dict__["_x_pattern_transpose"]._value)
    assert built[0] is built[1] is built[2]
