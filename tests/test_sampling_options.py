"""Neighbour-sampler options against PyG's semantics: bidirectional, induced and disjoint
subgraphs, weighted sampling, fanout 0, replacement; every option the sampler does not
implement refused in one line, by the sampler class and by ``make_neighbor_loader``."""

from __future__ import annotations

import contextlib
import pickle
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2_contingency, chisquare
from torch_geometric.data import Data, HeteroData
from torch_geometric.sampler import EdgeSamplerInput, NodeSamplerInput, SamplerOutput
from torch_geometric.testing import MyFeatureStore, MyGraphStore

from gnn.sampling import TorchNeighborSampler, make_neighbor_loader
from tests.strategies import FIXTURE_OK, sampling_cases

fanouts = st.lists(st.sampled_from([-1, 0, 1, 2, 3, 5]), min_size=1, max_size=3)


def cases(max_edges: int = 100) -> st.SearchStrategy:
    return sampling_cases(fanouts, max_edges=max_edges)


def sampler(edge_index: torch.Tensor, num_nodes: int, fanout: list[int], seed: int,
            device: torch.device | None = None, **options) -> TorchNeighborSampler:
    data = Data(edge_index=edge_index, num_nodes=num_nodes, **options.pop("attrs", {}))
    return TorchNeighborSampler(data, fanout, seed=seed, device=device, **options)


def in_degree(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    return torch.bincount(edge_index[1], minlength=num_nodes)


def check_edges_exist(out: SamplerOutput, edge_index: torch.Tensor) -> None:
    """Every batch edge is the graph edge it names (``edge``), mapped through ``node``."""
    node, row, col, edge = (t.cpu() for t in (out.node, out.row, out.col, out.edge))
    assert torch.equal(edge_index[0, edge], node[row])
    assert torch.equal(edge_index[1, edge], node[col])


# ---- bidirectional ------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(case=cases(), seed=st.integers(0, 2**31))
def test_bidirectional_is_pygs_to_bidirectional(case, seed: int, device: torch.device,
                                                sampler_code: str) -> None:
    """The same draws as the directional sampler (same seed), turned into PyG's own
    ``SamplerOutput.to_bidirectional``: an undirected batch, no duplicate, sorted by column."""
    num_nodes, edge_index, seeds, fanout = case
    plain = sampler(edge_index, num_nodes, fanout, seed, device).sample(seeds)
    both = sampler(edge_index, num_nodes, fanout, seed, device,
                   subgraph_type="bidirectional").sample(seeds)
    cpu = SamplerOutput(node=plain.node.cpu(), row=plain.row.cpu(), col=plain.col.cpu(),
                        edge=plain.edge.cpu(), num_sampled_nodes=plain.num_sampled_nodes,
                        num_sampled_edges=plain.num_sampled_edges)
    theirs = cpu.to_bidirectional()
    assert torch.equal(both.node.cpu(), plain.node.cpu())
    assert torch.equal(both.row.cpu(), theirs.row) and torch.equal(both.col.cpu(), theirs.col)
    assert both.num_sampled_nodes is None and both.num_sampled_edges is None
    pairs = set(zip(both.row.tolist(), both.col.tolist(), strict=True))
    assert pairs == {(c, r) for r, c in pairs} and len(pairs) == both.row.numel()
    # each edge id names a graph edge joining the two nodes, in one direction or the other
    node, src, dst = both.node.cpu(), edge_index[0], edge_index[1]
    for r, c, e in zip(both.row.tolist(), both.col.tolist(), both.edge.tolist(), strict=True):
        assert {int(src[e]), int(dst[e])} == {int(node[r]), int(node[c])}


# ---- induced ------------------------------------------------------------------------------
def induced_reference(edge_index: torch.Tensor, node: torch.Tensor) -> list[tuple[int, ...]]:
    """torch-sparse's induced subgraph: for each sampled node in order, its in-edges from
    sampled nodes, by edge id (row, col local; edge id)."""
    local = {int(v): i for i, v in enumerate(node.tolist())}
    expected = []
    for i, v in enumerate(node.tolist()):
        for e in range(edge_index.size(1)):
            u = int(edge_index[0, e])
            if int(edge_index[1, e]) == v and u in local:
                expected.append((local[u], i, e))
    return expected


@pytest.mark.parametrize("option", [{"subgraph_type": "induced"}, {"directed": False}])
@settings(max_examples=50, deadline=None, suppress_health_check=FIXTURE_OK)
@given(case=cases(), seed=st.integers(0, 2**31))
def test_induced_holds_every_edge_among_sampled_nodes(case, seed: int, option: dict,
                                                      device: torch.device,
                                                      sampler_code: str) -> None:
    """The same nodes as directional sampling; all edges among them (multi-edges and
    self-loops included) and no others, in torch-sparse's order; no per-hop counts."""
    num_nodes, edge_index, seeds, fanout = case
    plain = sampler(edge_index, num_nodes, fanout, seed, device).sample(seeds)
    warns = pytest.warns(UserWarning, match="deprecated")
    with warns if "directed" in option else contextlib.nullcontext():
        induced = sampler(edge_index, num_nodes, fanout, seed, device, **option).sample(seeds)
    assert torch.equal(induced.node, plain.node)
    got = list(zip(induced.row.tolist(), induced.col.tolist(), induced.edge.tolist(),
                   strict=True))
    assert got == induced_reference(edge_index, plain.node.cpu())
    assert induced.num_sampled_nodes is None and induced.num_sampled_edges is None


# ---- disjoint -----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(case=cases(), seed=st.integers(0, 2**31), replace=st.booleans())
def test_disjoint_trees(case, seed: int, replace: bool, device: torch.device) -> None:
    """One tree per seed: ``batch`` gives each node's tree (seed i is tree i), a node is
    unique within its tree, every edge stays inside a tree and exists in the graph, each
    target of hop k gets min(deg, fanout) edges (fanout if replacing), hops are counted."""
    num_nodes, edge_index, seeds, fanout = case
    out = sampler(edge_index, num_nodes, fanout, seed, device, disjoint=True,
                  replace=replace).sample(seeds)
    node, batch, row, col = out.node.cpu(), out.batch.cpu(), out.row.cpu(), out.col.cpu()
    assert torch.equal(node[:seeds.numel()], seeds)
    assert torch.equal(batch[:seeds.numel()], torch.arange(seeds.numel()))
    pairs = list(zip(batch.tolist(), node.tolist(), strict=True))
    assert len(set(pairs)) == len(pairs)
    assert torch.equal(batch[row], batch[col])
    check_edges_exist(out, edge_index)
    assert sum(out.num_sampled_nodes) == node.numel()
    assert sum(out.num_sampled_edges) == row.numel()
    deg, start = in_degree(edge_index, num_nodes), 0
    per_target = Counter(col.tolist())
    for hop, k in enumerate(fanout):
        for t in range(start, start + out.num_sampled_nodes[hop]):
            d = int(deg[node[t]])
            expected = d if k < 0 else (min(d, k) if not replace else (k if d else 0))
            assert per_target.get(t, 0) == expected
        start += out.num_sampled_nodes[hop]


@settings(max_examples=40, deadline=None)
@given(case=cases(), depth=st.integers(1, 3))
def test_disjoint_full_neighbourhood_is_each_seed_alone(case, depth: int) -> None:
    """With fanout -1 (no randomness) tree i is exactly what sampling seed i alone gives."""
    num_nodes, edge_index, seeds, _ = case
    fanout = [-1] * depth
    out = sampler(edge_index, num_nodes, fanout, 0, disjoint=True).sample(seeds)
    alone = sampler(edge_index, num_nodes, fanout, 0)
    for i, s in enumerate(seeds.tolist()):
        mine = alone.sample(torch.tensor([s]))
        in_tree = out.batch == i
        assert torch.equal(out.node[in_tree], mine.node)
        assert int(in_tree[out.col].sum()) == mine.col.numel()


def test_disjoint_through_the_loader() -> None:
    data = Data(x=torch.arange(30).view(-1, 1), edge_index=torch.randint(0, 30, (2, 200)),
                num_nodes=30)
    loader = make_neighbor_loader(data, [3, 2], batch_size=8, backend="torch", seed=0,
                                  disjoint=True)
    for batch in loader:
        assert torch.equal(batch.batch[:batch.batch_size], torch.arange(batch.batch_size))
        assert torch.equal(batch.batch[batch.edge_index[0]], batch.batch[batch.edge_index[1]])
        assert torch.equal(batch.x.view(-1), batch.n_id)


# ---- weighted -----------------------------------------------------------------------------
@st.composite
def weighted_cases(draw: st.DrawFn):
    num_nodes, edge_index, seeds, fanout = draw(cases())
    weights = draw(st.lists(st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, 1e-3]),
                            min_size=edge_index.size(1), max_size=edge_index.size(1)))
    return num_nodes, edge_index, seeds, fanout, torch.tensor(weights, dtype=torch.float)


@settings(max_examples=80, deadline=None)
@given(case=weighted_cases(), seed=st.integers(0, 2**31), replace=st.booleans(),
       kind=st.sampled_from(["directional", "bidirectional", "induced"]))
def test_weighted_never_draws_zero_weight_edges(case, seed: int, replace: bool, kind: str,
                                                device: torch.device) -> None:
    """An edge of weight 0 is never in a batch; a target of hop k gets min(positive in-degree,
    fanout) distinct edges without replacement, fanout with (none if no positive weight)."""
    num_nodes, edge_index, seeds, fanout, weight = case
    out = sampler(edge_index, num_nodes, fanout, seed, device, weight_attr="w", replace=replace,
                  subgraph_type=kind, attrs={"w": weight}).sample(seeds)
    assert bool((weight[out.edge.cpu()] > 0).all())
    if kind != "directional":
        return
    check_edges_exist(out, edge_index)
    positive = in_degree(edge_index[:, weight > 0], num_nodes)
    per_target, start = Counter(out.col.tolist()), 0
    for hop, k in enumerate(fanout):
        for t in range(start, start + out.num_sampled_nodes[hop]):
            d = int(positive[out.node[t]])
            expected = d if k < 0 else (min(d, k) if not replace else (k if d else 0))
            assert per_target.get(t, 0) == expected
        start += out.num_sampled_nodes[hop]
        edges = out.edge[sum(out.num_sampled_edges[:hop]):sum(out.num_sampled_edges[:hop + 1])]
        targets = out.col[sum(out.num_sampled_edges[:hop]):sum(out.num_sampled_edges[:hop + 1])]
        if not replace:
            pairs = list(zip(targets.tolist(), edges.tolist(), strict=True))
            assert len(pairs) == len(set(pairs))


def weighted_hub(weights: list[float]) -> Data:
    """Node 0 with one in-neighbour per weight: neighbour i + 1 over an edge of weight i."""
    k = len(weights)
    edge_index = torch.stack([torch.arange(1, k + 1), torch.zeros(k, dtype=torch.long)])
    return Data(edge_index=edge_index, num_nodes=k + 1, w=torch.tensor(weights))


def hub_counts(fanout: int, replace: bool, trials: int, weights: list[float],
               device: torch.device) -> list[int]:
    s = TorchNeighborSampler(weighted_hub(weights), [fanout], weight_attr="w", replace=replace,
                             seed=0, device=device)
    counts: Counter[int] = Counter()
    for _ in range(trials):
        out = s.sample(torch.tensor([0]))
        counts.update(out.edge.cpu().tolist())
    return [counts[i] for i in range(len(weights))]


HUB_WEIGHTS = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 8.0, 9.0, 10.0, 0.5]


@pytest.mark.parametrize("replace", [False, True])
def test_weighted_hub_chi_square_single_draw(replace: bool, device: torch.device) -> None:
    """Fanout 1: each neighbour with probability weight / total; zero weights never."""
    trials = 6000
    observed = hub_counts(1, replace, trials, HUB_WEIGHTS, device)
    total = sum(HUB_WEIGHTS)
    positive = [i for i, w in enumerate(HUB_WEIGHTS) if w > 0]
    assert all(observed[i] == 0 for i, w in enumerate(HUB_WEIGHTS) if w == 0)
    expected = [trials * HUB_WEIGHTS[i] / total for i in positive]
    assert chisquare([observed[i] for i in positive], expected).pvalue > 1e-3


@pytest.mark.parametrize("replace", [False, True])
def test_weighted_hub_matches_torch_multinomial(replace: bool, device: torch.device) -> None:
    """Fanout 4: how often each neighbour is drawn equals what ``torch.multinomial(weight, 4,
    replace)`` gives, which is what pyg-lib's weighted sampler calls (two-sample chi-square)."""
    trials, fanout = 3000, 4
    ours = hub_counts(fanout, replace, trials, HUB_WEIGHTS, device)
    generator = torch.Generator().manual_seed(1)
    weight = torch.tensor(HUB_WEIGHTS)
    theirs = Counter()
    for _ in range(trials):
        theirs.update(torch.multinomial(weight, fanout, replace, generator=generator).tolist())
    positive = [i for i, w in enumerate(HUB_WEIGHTS) if w > 0]
    table = [[ours[i] for i in positive], [theirs[i] for i in positive]]
    assert sum(ours) == trials * fanout
    assert chi2_contingency(table).pvalue > 1e-3


def test_weighted_light_node_beside_heavy_ones() -> None:
    """Normalising per node: tiny weights on one node are still drawn in proportion when
    another node's weights are huge (one hop holds both)."""
    edge_index = torch.tensor([[2, 3, 4, 5], [0, 0, 1, 1]])
    w = torch.tensor([1e-6, 3e-6, 1e6, 1e6])
    s = TorchNeighborSampler(Data(edge_index=edge_index, num_nodes=6, w=w), [1], seed=0,
                             weight_attr="w", replace=True)
    counts: Counter[int] = Counter()
    for _ in range(2000):
        counts.update(s.sample(torch.tensor([0, 1])).edge.tolist())
    assert chisquare([counts[0], counts[1]], [500, 1500]).pvalue > 1e-3


@pytest.mark.parametrize("weights", [[1.0, -1.0], [1.0, float("nan")], [1.0, float("inf")]])
def test_weighted_refuses_bad_weights(weights: list[float]) -> None:
    data = weighted_hub(weights)
    with pytest.raises(ValueError, match="^weight_attr: "):
        TorchNeighborSampler(data, [1], weight_attr="w")


@pytest.mark.parametrize("attr", ["missing", "x"])
def test_weighted_refuses_what_is_not_an_edge_weight(attr: str) -> None:
    data = weighted_hub([1.0, 2.0])
    data.x = torch.zeros(3, 1)
    with pytest.raises(ValueError, match="^weight_attr: "):
        make_neighbor_loader(data, [1], backend="torch", weight_attr=attr)


# ---- fanout 0, replace ----------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(case=cases(), seed=st.integers(0, 2**31), replace=st.booleans(),
       zeros=st.integers(1, 2))
def test_fanout_zero_samples_nothing(case, seed: int, replace: bool, zeros: int,
                                     device: torch.device, sampler_code: str) -> None:
    """A hop of fanout 0 adds no edge and no node (nor does any hop after it); it draws no
    random number, so what comes before it is the sample without it."""
    num_nodes, edge_index, seeds, fanout = case
    fanout = [k if k != 0 else 1 for k in fanout]
    out = sampler(edge_index, num_nodes, fanout + [0] * zeros, seed, device,
                  replace=replace).sample(seeds)
    without = sampler(edge_index, num_nodes, fanout, seed, device, replace=replace).sample(seeds)
    assert out.num_sampled_nodes == without.num_sampled_nodes + [0] * zeros
    assert out.num_sampled_edges == without.num_sampled_edges + [0] * zeros
    for field in ("node", "row", "col", "edge"):
        assert torch.equal(getattr(out, field), getattr(without, field))
    first = sampler(edge_index, num_nodes, [0] + fanout, seed, device).sample(seeds)
    assert torch.equal(first.node, seeds.to(first.node.device)) and first.row.numel() == 0


def test_replace_draws_uniformly(device: torch.device, sampler_code: str) -> None:
    """With replacement each of a hub's 30 in-neighbours is drawn equally often (pyg-lib:
    ``fanout`` independent uniform draws)."""
    k, fanout, trials = 30, 5, 2000
    edge_index = torch.stack([torch.arange(1, k + 1), torch.zeros(k, dtype=torch.long)])
    s = TorchNeighborSampler(edge_index, [fanout], num_nodes=k + 1, replace=True, seed=0,
                             device=device)
    counts: Counter[int] = Counter()
    for _ in range(trials):
        out = s.sample(torch.tensor([0]))
        assert out.edge.numel() == fanout
        counts.update(out.edge.cpu().tolist())
    assert chisquare([counts[i] for i in range(k)]).pvalue > 1e-3


# ---- every option through the loader gives valid PyG batches -------------------------------
LOADER_OPTIONS = [
    {}, {"subgraph_type": "bidirectional"}, {"subgraph_type": "induced"}, {"disjoint": True},
    {"disjoint": True, "subgraph_type": "bidirectional"}, {"weight_attr": "w"},
    {"weight_attr": "w", "replace": True}, {"replace": True}, {"is_sorted": True},
]


@pytest.mark.parametrize("options", LOADER_OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_options_through_the_loader(options: dict, device: torch.device,
                                    sampler_code: str) -> None:
    """PyG's batch contract: seeds first, edges sorted by target (CSC), edge attributes
    filtered by ``e_id``, node features by ``n_id``."""
    g = torch.Generator().manual_seed(0)
    n, e = 80, 600
    edge_index = torch.randint(0, n, (2, e), generator=g)
    if options.get("is_sorted"):
        edge_index = edge_index[:, torch.argsort(edge_index[1], stable=True)]
    data = Data(x=torch.randn(n, 3, generator=g), edge_index=edge_index, num_nodes=n,
                edge_attr=torch.arange(e), w=torch.rand(e, generator=g).round()).to(device)
    loader = make_neighbor_loader(data, [4, 0, 3], batch_size=16, backend="torch", seed=1,
                                  shuffle=True, **options)
    seen = []
    for batch in loader:
        assert torch.equal(batch.n_id[:batch.batch_size], batch.input_id.to(device))
        assert torch.equal(batch.x, data.x[batch.n_id])
        assert torch.equal(batch.edge_attr, data.edge_attr[batch.e_id])
        assert bool((batch.edge_index[1].diff() >= 0).all())
        if "weight_attr" in options:
            assert bool((data.w[batch.e_id] > 0).all())
        seen.append(batch.input_id)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(n))


def test_graph_without_edges_as_in_pyg(sampler_code: str) -> None:
    """A ``Data`` without ``edge_index`` is a graph without edges (PyG's ``to_csc``)."""
    data = Data(x=torch.arange(5).view(-1, 1))
    batch = next(iter(make_neighbor_loader(data, [3, 3], batch_size=5, backend="torch")))
    assert torch.equal(batch.n_id, torch.arange(5)) and batch.e_id.numel() == 0


def test_pickled_sampler_continues_the_same_stream(sampler_code: str) -> None:
    """A pickled sampler (what a spawned worker receives) holds no node table and resumes
    the generator where the original stands."""
    edge_index = torch.randint(0, 50, (2, 400), generator=torch.Generator().manual_seed(3))
    original = TorchNeighborSampler(edge_index, [3, 2], num_nodes=50, seed=5)
    original.sample(torch.tensor([1, 2]))
    state = pickle.dumps(original)
    copy = pickle.loads(state)
    assert copy._local is None
    seeds = torch.tensor([4, 9, 7])
    a, b = original.sample(seeds), copy.sample(seeds)
    for field in ("node", "row", "col", "edge"):
        assert torch.equal(getattr(a, field), getattr(b, field))


# ---- refused in one line, by the sampler class and by the loader helper ---------------------
def small_graph() -> Data:
    return Data(x=torch.zeros(4, 1), edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]),
                num_nodes=4, t=torch.arange(4), edge_t=torch.arange(3))


def hetero_graph() -> HeteroData:
    data = HeteroData()
    data["paper"].x = torch.zeros(3, 1)
    data["paper", "cites", "paper"].edge_index = torch.tensor([[0, 1], [1, 2]])
    return data


def remote_graph() -> tuple[MyFeatureStore, MyGraphStore]:
    feature_store, graph_store = MyFeatureStore(), MyGraphStore()
    feature_store.put_tensor(torch.zeros(4, 1), group_name=None, attr_name="x", index=None)
    graph_store.put_edge_index(torch.tensor([[0, 1], [1, 2]]), edge_type=None, layout="coo",
                               size=(4, 4))
    return feature_store, graph_store


#: (what, sampler-class arguments, loader-helper arguments, exception, message start)
REFUSED = [
    ("node-level time", {"time_attr": "t"}, {"time_attr": "t"}, NotImplementedError,
     "time_attr: "),
    ("edge-level time", {"time_attr": "edge_t"}, {"time_attr": "edge_t"},
     NotImplementedError, "time_attr: "),
    ("input_time", None, {"input_time": torch.zeros(4)}, NotImplementedError, "input_time: "),
    ("temporal_strategy", {"temporal_strategy": "last"}, {"temporal_strategy": "last"},
     NotImplementedError, "temporal_strategy: "),
    ("bad temporal_strategy", {"temporal_strategy": "x"}, {"temporal_strategy": "x"},
     ValueError, "temporal_strategy: "),
    ("backward", {"sample_direction": "backward"}, {"sample_direction": "backward"},
     NotImplementedError, "sample_direction: "),
    ("bad direction", {"sample_direction": "up"}, {"sample_direction": "up"}, ValueError,
     "sample_direction: "),
    ("bad subgraph_type", {"subgraph_type": "star"}, {"subgraph_type": "star"}, ValueError,
     "subgraph_type: "),
    ("disjoint induced", {"disjoint": True, "subgraph_type": "induced"},
     {"disjoint": True, "subgraph_type": "induced"}, ValueError, "disjoint: "),
    ("negative fanout", {"num_neighbors": [-2]}, {"num_neighbors": [-2]}, ValueError,
     "num_neighbors: "),
    ("typed fanouts", {"num_neighbors": {("paper", "cites", "paper"): [2]}},
     {"num_neighbors": {("paper", "cites", "paper"): [2]}}, NotImplementedError,
     "num_neighbors: "),
    ("hetero graph", {"data": hetero_graph}, {"data": hetero_graph}, NotImplementedError,
     "data: "),
    ("remote stores", {"data": remote_graph}, {"data": remote_graph}, NotImplementedError,
     "data: "),
    ("foreign sampler", None, {"neighbor_sampler": object()}, ValueError, "neighbor_sampler: "),
    ("unknown option", None, {"custom_cls": HeteroData}, ValueError, "custom_cls: "),
    ("typo", None, {"weigth_attr": "w"}, ValueError, "weigth_attr: "),
    ("link-level", None, {"edge_label_index": torch.tensor([[0], [1]])}, ValueError,
     "edge_label_index: "),
]


def _arguments(arguments: dict) -> dict:
    arguments = dict(arguments)
    data = arguments.pop("data", small_graph)
    return {"data": data(), "num_neighbors": arguments.pop("num_neighbors", [2]), **arguments}


@pytest.mark.parametrize(("what", "on_sampler", "on_loader", "error", "start"), REFUSED,
                         ids=[r[0] for r in REFUSED])
def test_refused_in_one_line(what: str, on_sampler: dict | None, on_loader: dict,
                             error: type[Exception], start: str) -> None:
    """Never a TypeError or AttributeError, never silence: one line that starts with the
    option's name, from the class and from the helper alike."""
    attempts = [lambda: make_neighbor_loader(backend="torch", **_arguments(on_loader))]
    if on_sampler is not None:
        attempts.append(lambda: TorchNeighborSampler(**_arguments(on_sampler)))
    for attempt in attempts:
        with pytest.raises(error) as info:
            attempt()
        message = str(info.value)
        assert message.startswith(start) and "\n" not in message, message
        assert not isinstance(info.value, (TypeError, AttributeError))


def test_sampler_refuses_temporal_and_typed_inputs_and_links() -> None:
    s = TorchNeighborSampler(small_graph(), [2])
    node = torch.tensor([0, 1])
    with pytest.raises(NotImplementedError, match="^input_time: "):
        s.sample_from_nodes(NodeSamplerInput(None, node, time=torch.zeros(2)))
    with pytest.raises(NotImplementedError, match="^input_nodes: "):
        s.sample_from_nodes(NodeSamplerInput(None, node, input_type="paper"))
    with pytest.raises(NotImplementedError, match="^sample_from_edges: "):
        s.sample_from_edges(EdgeSamplerInput(None, node, node))
    with pytest.raises(ValueError, match="^neg_sampling: "):
        s.sample_from_nodes(NodeSamplerInput(None, node), neg_sampling=None)


def test_sampler_takes_pygs_positional_arguments() -> None:
    """``NeighborSampler(data, num_neighbors, subgraph_type, replace, disjoint, ...)``."""
    s = TorchNeighborSampler(small_graph(), [2], "bidirectional", True, True)
    assert (s.subgraph_type.value, s.replace, s.disjoint) == ("bidirectional", True, True)
