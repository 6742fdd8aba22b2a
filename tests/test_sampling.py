"""Neighbour sampler: the properties PyG's NeighborLoader guarantees, on hypothesis graphs."""

from __future__ import annotations

import statistics
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare
from torch_geometric.data import Data

from gnn.config import load_config
from gnn.sampling import (
    TorchNeighborSampler,
    layerwise_inference,
    make_neighbor_loader,
    pyg_sampler_available,
)
from gnn.training import fit
from tests import strategies
from tests.strategies import FIXTURE_OK

PYG_ONLY = pytest.mark.skipif(
    not pyg_sampler_available(),
    reason="PyG's NeighborLoader needs pyg-lib or torch-sparse (not installed)")
fanouts = st.lists(st.sampled_from([-1, 1, 2, 3, 5]), min_size=1, max_size=3)


def sampling_cases() -> st.SearchStrategy:
    return strategies.sampling_cases(fanouts)


def in_degree(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    return torch.bincount(edge_index[1], minlength=num_nodes)


def check_output(out, num_nodes, edge_index, seeds, fanout, replace=False,
                 device: torch.device | None = None) -> None:
    """The sampler's output, on ``device`` (the graph's), checked on the CPU."""
    for field in ("node", "row", "col", "edge"):
        assert getattr(out, field).device.type == (device or edge_index.device).type
    node, row, col, edge = out.node.cpu(), out.row.cpu(), out.col.cpu(), out.edge.cpu()
    # seeds first, in order; nodes unique
    assert torch.equal(node[: seeds.numel()], seeds)
    assert node.unique().numel() == node.numel()
    assert sum(out.num_sampled_nodes) == node.numel()
    assert sum(out.num_sampled_edges) == row.numel() == col.numel() == edge.numel()
    # every sampled edge exists in the input graph, mapped back through node/edge
    if edge.numel():
        assert torch.equal(edge_index[0, edge], node[row])
        assert torch.equal(edge_index[1, edge], node[col])
    deg = in_degree(edge_index, num_nodes)
    node_start = torch.cumsum(torch.tensor([0] + out.num_sampled_nodes), 0)
    edge_start = torch.cumsum(torch.tensor([0] + out.num_sampled_edges), 0)
    for hop, k in enumerate(fanout):
        e = slice(int(edge_start[hop]), int(edge_start[hop + 1]))
        targets = range(int(node_start[hop]), int(node_start[hop + 1]))
        # edges of hop k point into the nodes first reached at hop k-1, from nodes up to hop k
        assert all(int(node_start[hop]) <= c < int(node_start[hop + 1]) for c in col[e].tolist())
        assert all(r < int(node_start[hop + 2]) for r in row[e].tolist())
        per_target = Counter(col[e].tolist())
        for t in targets:
            d = int(deg[node[t]])
            expected = d if k < 0 else (min(d, k) if not replace else (k if d else 0))
            assert per_target.get(t, 0) == expected
        if not replace:
            pairs = list(zip(col[e].tolist(), edge[e].tolist(), strict=True))
            assert len(pairs) == len(set(pairs))  # each edge at most once per node


#: How a hop picks: the compiled loop (a CPU graph, numba installed), or the vectorised code
#: with one sort of random keys (its default for small hops) or Floyd's algorithm (sort_limit 0).
SELECTIONS = {"compiled": None, "sort": TorchNeighborSampler.sort_limit, "floyd": 0}


def choose(sampler: TorchNeighborSampler, selection: str) -> TorchNeighborSampler:
    if selection == "compiled":
        if sampler.device.type == "cpu" and not sampler.compiled:
            pytest.skip("the compiled sampler needs numba, which is not installed")
    else:
        sampler.compiled = False
        sampler.sort_limit = SELECTIONS[selection]
    return sampler


@pytest.mark.parametrize("selection", list(SELECTIONS))
@settings(max_examples=60, deadline=None)
@given(case=sampling_cases(), seed=st.integers(0, 2**31))
def test_sampler_properties(case, seed: int, selection: str, device: torch.device) -> None:
    num_nodes, edge_index, seeds, fanout = case
    sampler = TorchNeighborSampler(edge_index.to(device), fanout, num_nodes=num_nodes, seed=seed)
    choose(sampler, selection)
    check_output(sampler.sample(seeds), num_nodes, edge_index, seeds, fanout, device=device)


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
@given(case=sampling_cases(), seed=st.integers(0, 2**31))
def test_sampler_with_replacement(case, seed: int, device: torch.device,
                                  sampler_code: str) -> None:
    num_nodes, edge_index, seeds, fanout = case
    fanout = [k if k > 0 else 2 for k in fanout]
    sampler = TorchNeighborSampler(edge_index, fanout, num_nodes=num_nodes, seed=seed,
                                   replace=True, device=device)
    check_output(sampler.sample(seeds), num_nodes, edge_index, seeds, fanout, replace=True,
                 device=device)


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
@given(case=sampling_cases(), seed=st.integers(0, 2**31))
def test_same_seed_same_batch(case, seed: int, device: torch.device, sampler_code: str) -> None:
    num_nodes, edge_index, seeds, fanout = case
    a, b = (TorchNeighborSampler(edge_index, fanout, num_nodes=num_nodes, seed=seed,
                                 device=device).sample(seeds) for _ in range(2))
    for field in ("node", "row", "col", "edge"):
        assert torch.equal(getattr(a, field), getattr(b, field))


def test_full_fanout_returns_whole_neighbourhood(sampler_code: str) -> None:
    edge_index = torch.tensor([[1, 2, 3, 3, 4], [0, 0, 0, 1, 2]])
    out = TorchNeighborSampler(edge_index, [-1], num_nodes=5).sample(torch.tensor([0]))
    assert sorted(out.node[out.row].tolist()) == [1, 2, 3]
    assert out.num_sampled_nodes == [1, 3]


def test_empty_seed_set(sampler_code: str) -> None:
    edge_index = torch.tensor([[0, 1], [1, 0]])
    sampler = TorchNeighborSampler(edge_index, [2, 2], num_nodes=2)
    out = sampler.sample(torch.tensor([], dtype=torch.long))
    assert out.node.numel() == 0 and out.row.numel() == 0
    assert out.num_sampled_nodes == [0, 0, 0]


@pytest.mark.parametrize("bad", [-1, 5])
def test_seed_out_of_range_is_refused(bad: int, sampler_code: str) -> None:
    """A seed outside the graph is an error (the compiled loop checks before it reads
    anything: it has no bounds checks of its own), and the sampler stays usable."""
    edge_index = torch.tensor([[0, 1, 3], [1, 2, 2]])
    sampler = TorchNeighborSampler(edge_index, [2, 2], num_nodes=5, seed=0)
    with pytest.raises((IndexError, RuntimeError), match="out of"):
        sampler.sample(torch.tensor([2, bad]))
    seeds = torch.tensor([2, 4])
    check_output(sampler.sample(seeds), 5, edge_index, seeds, [2, 2])


@pytest.mark.parametrize("selection", list(SELECTIONS))
@pytest.mark.parametrize(("num_neighbours", "fanout"), [(50, 5), (100, 40)])
def test_uniform_choice_among_hub_neighbours(selection: str, num_neighbours: int, fanout: int,
                                             device: torch.device) -> None:
    """Chi-square: each of a hub's in-neighbours is picked equally often (fanout 40: the
    compiled loop's selection sampling, above its Floyd limit)."""
    trials = 4000
    edge_index = torch.stack([torch.arange(1, num_neighbours + 1),
                              torch.zeros(num_neighbours, dtype=torch.long)])
    sampler = TorchNeighborSampler(edge_index, [fanout], num_nodes=num_neighbours + 1, seed=0,
                                   device=device)
    choose(sampler, selection)
    counts = Counter()
    for _ in range(trials):
        out = sampler.sample(torch.tensor([0]))
        counts.update(out.node[out.row].cpu().tolist())
    observed = [counts[i] for i in range(1, num_neighbours + 1)]
    assert sum(observed) == trials * fanout
    assert chisquare(observed).pvalue > 1e-3


@pytest.mark.parametrize("fanout", [[-2], [1, -5], ["a"]])
def test_invalid_fanout(fanout: list) -> None:
    with pytest.raises(ValueError, match="^num_neighbors: "):
        TorchNeighborSampler(torch.tensor([[0], [1]]), fanout, num_nodes=2)


def _random_graph(num_nodes: int, num_edges: int, seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=g)
    return Data(x=torch.randn(num_nodes, 4, generator=g), edge_index=edge_index,
                y=torch.randint(0, 3, (num_nodes,), generator=g), num_nodes=num_nodes)


def test_loader_builds_pyg_batches(device: torch.device) -> None:
    """With the graph on a GPU the batches are built there (sampling and feature gathering)."""
    data = _random_graph(200, 1500, 0).to(device)
    loader = make_neighbor_loader(data, [5, 3], batch_size=16, backend="torch", seed=1,
                                  shuffle=True)
    seen = []
    for batch in loader:
        assert batch.x.device == batch.edge_index.device == batch.n_id.device == data.x.device
        assert torch.equal(batch.x, data.x[batch.n_id])
        assert torch.equal(batch.y, data.y[batch.n_id])
        assert torch.equal(batch.n_id[: batch.batch_size].cpu(), batch.input_id.cpu())
        ei = data.edge_index[:, batch.e_id]
        assert torch.equal(ei, batch.n_id[batch.edge_index])
        seen.append(batch.input_id.cpu())
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(200))


@PYG_ONLY
@pytest.mark.parametrize("fanout", [[-1, -1], [3, 2], [10, 10]])
def test_same_structure_as_pyg_neighbor_loader(fanout: list[int]) -> None:
    data = _random_graph(300, 3000, 2)
    seeds = torch.arange(0, 300, 7)
    ours = make_neighbor_loader(data, fanout, batch_size=seeds.numel(), input_nodes=seeds,
                                backend="torch", seed=0)
    theirs = make_neighbor_loader(data, fanout, batch_size=seeds.numel(), input_nodes=seeds,
                                  backend="pyg")
    a, b = next(iter(ours)), next(iter(theirs))
    assert torch.equal(a.n_id[: a.batch_size], b.n_id[: b.batch_size])
    assert a.batch_size == b.batch_size
    deg = in_degree(data.edge_index, data.num_nodes)
    for batch in (a, b):
        # hop-1 edges are those into a seed (seeds are never expanded again); torch-sparse's
        # sampler does not report per-hop counts, so they are derived the same way for both
        hop1 = batch.edge_index[1] < batch.batch_size
        counts = Counter(batch.n_id[batch.edge_index[1, hop1]].tolist())
        for s in seeds.tolist():
            d = int(deg[s])
            assert counts.get(s, 0) == (d if fanout[0] < 0 else min(d, fanout[0]))
        # every edge exists in the graph
        assert torch.equal(data.edge_index[:, batch.e_id], batch.n_id[batch.edge_index])
    if fanout[0] < 0:
        assert set(a.n_id.tolist()) == set(b.n_id.tolist())
        assert a.edge_index.size(1) == b.edge_index.size(1)
        assert set(a.e_id.tolist()) == set(b.e_id.tolist())


@PYG_ONLY
def test_training_with_pyg_backend(cora: Data) -> None:
    """torch-sparse's sampler reports no per-hop counts: training then runs untrimmed (it
    crashed on ``batch.num_sampled_nodes`` before)."""
    cfg = load_config("configs/sage_sampling.yaml").override({"sampler.backend": "pyg",
                                                              "train.epochs": 5})
    assert fit(cfg, cora).test_acc > 0.5


def test_accuracy_gate_sage_sampling(cora: Data, device: torch.device) -> None:
    cfg = load_config("configs/sage_sampling.yaml")
    results = [fit(cfg.override({"train.seed": s, "sampler.backend": "torch",
                                 "train.device": device.type}), cora)
               for s in range(3)]
    accs = [r.test_acc for r in results]
    f1s = [r.test_macro_f1 for r in results]
    print(f"\nsage_sampling on {device}: test_acc {statistics.fmean(accs):.4f} "
          f"± {statistics.stdev(accs):.4f}, macro-F1 {statistics.fmean(f1s):.4f} (3 seeds)")
    assert statistics.fmean(accs) >= 0.79


@pytest.mark.parametrize("fast", [True, False])
def test_layerwise_inference_equals_full_forward(fast: bool, device: torch.device) -> None:
    """Layer-wise inference convolves only each batch's targets; it must still give exactly
    the full-graph forward (on the device that holds the graph)."""
    from gnn.config import ModelConfig
    from gnn.models import build_model

    data = _random_graph(300, 2400, 4).to(device)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="sage", hidden_channels=16, fast=fast), 4, 3)
    model = model.to(device).eval()
    loader = make_neighbor_loader(data, [-1], batch_size=64, backend="torch")
    with torch.inference_mode():
        out = layerwise_inference(model, loader)
        assert out.device == data.x.device
        torch.testing.assert_close(out, model(data.x, data.edge_index), atol=1e-5, rtol=1e-4)


def sampled_batchings(cfg, data: Data, device: torch.device):
    """The same config evaluated by one full-batch forward and by layer-wise batches."""
    from gnn.batching import SampledBatching

    return [SampledBatching.from_config(cfg.override({"sampler.full_batch_eval": mode}), data,
                                        device) for mode in ("always", "never")]


@pytest.mark.parametrize("fast", [True, False])
def test_sampled_evaluation_full_batch_equals_layerwise(fast: bool, cora: Data,
                                                         device: torch.device) -> None:
    """Evaluation of sampled training by one full-batch forward (the cached mean operator)
    gives the logits of layer-wise full-neighbourhood inference, up to float rounding."""
    from gnn.models import build_model

    cfg = load_config("configs/sage_sampling.yaml").override({
        "sampler.backend": "torch", "train.device": device.type, "model.fast": fast})
    full, layerwise = sampled_batchings(cfg, cora, device)
    assert full.eval_loader is None and layerwise.eval_loader is not None
    torch.manual_seed(0)
    model = build_model(cfg.model, cora.num_features, int(cora.y.max()) + 1).to(device)
    full.train_epoch(model, torch.optim.Adam(model.parameters(), lr=0.01))  # not the init
    torch.testing.assert_close(full.predict(model), layerwise.predict(model), atol=1e-5,
                               rtol=1e-4)


def test_full_batch_evaluation_is_chosen_by_memory(cora: Data, monkeypatch) -> None:
    """``auto``: a full-batch forward where its estimate fits in half the free memory, the
    layer-wise loader where it does not; sampled inference always keeps its loader."""
    import gnn.batching
    from gnn.batching import SampledBatching

    cfg = load_config("configs/sage_sampling.yaml").override({"sampler.backend": "torch"})
    cpu = torch.device("cpu")
    assert SampledBatching.from_config(cfg, cora, cpu).eval_loader is None
    monkeypatch.setattr(gnn.batching, "free_memory", lambda device: 1 << 20)
    assert SampledBatching.from_config(cfg, cora, cpu).eval_loader is not None
    sampled = cfg.override({"sampler.inference": "sampled"})
    monkeypatch.undo()
    assert SampledBatching.from_config(sampled, cora, cpu).eval_loader is not None


def test_fit_with_full_batch_evaluation_same_accuracy(cora: Data) -> None:
    """The whole fit agrees: the same training, the same selected epoch and test accuracy."""
    cfg = load_config("configs/sage_sampling.yaml").override({"sampler.backend": "torch",
                                                              "train.epochs": 8})
    full, layerwise = (fit(cfg.override({"sampler.full_batch_eval": mode}), cora)
                       for mode in ("always", "never"))
    assert full.best_epoch == layerwise.best_epoch
    assert abs(full.test_acc - layerwise.test_acc) <= 0.002
