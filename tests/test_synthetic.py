"""CSBM generator: the graph has the class balance, degree and homophily it was asked for.

Random quantities are checked with exact tests or bounds whose false-alarm rate is stated
(about 1e-6 per check), so a failure means the generator is wrong, not that the seed was unlucky.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest, chisquare

from gnn.cli import main
from gnn.config import Config, DataConfig
from gnn.data import check_data_config, check_split, load_dataset
from gnn.errors import ConfigError
from gnn.synthetic import binary_feature_probs, csbm, edge_homophily, num_pairs

#: p-value below which a check fails: with ~100 hypothesis examples per run, a correct
#: generator fails a run with probability ~1e-4.
ALPHA = 1e-6
#: Normal-approximation bound with the same false-alarm rate (two-sided 1e-6 is 4.9 sigma).
SIGMAS = 5.0


@st.composite
def csbm_configs(draw: st.DrawFn) -> DataConfig:
    c = draw(st.integers(2, 6))
    k = draw(st.integers(1, 5))
    val, test = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    n = draw(st.integers(max(2 * c, k * c + val + test), 400))
    binary = draw(st.booleans())
    return DataConfig(
        name="csbm", num_nodes=n, num_classes=c, train_per_class=k, num_val=val, num_test=test,
        avg_degree=draw(st.floats(0.0, 20.0)),
        homophily=draw(st.integers(0, 1000)) / 1000,  # scipy's binomtest needs no subnormals
        num_features=draw(st.integers(c, 3 * c)), features="binary" if binary else "gaussian",
        feature_signal=draw(st.floats(0.0, 1.0)), feature_density=draw(st.floats(0.01, 0.15)),
        graph_seed=draw(st.integers(0, 2**31)))


@settings(max_examples=60, deadline=None)
@given(csbm_configs())
def test_class_balance_and_split(cfg: DataConfig) -> None:
    data = csbm(cfg)
    counts = torch.bincount(data.y, minlength=cfg.num_classes)
    assert int(counts.sum()) == cfg.num_nodes
    assert int(counts.max() - counts.min()) <= 1  # balanced to within one node, always
    check_split(data)
    train_counts = torch.bincount(data.y[data.train_mask], minlength=cfg.num_classes)
    assert train_counts.tolist() == [cfg.train_per_class] * cfg.num_classes
    assert int(data.val_mask.sum()) == cfg.num_val
    assert int(data.test_mask.sum()) == cfg.num_test
    assert data.x.shape == (cfg.num_nodes, cfg.num_features)
    assert torch.isfinite(data.x).all()


@settings(max_examples=60, deadline=None)
@given(csbm_configs())
def test_degree_is_exact_and_graph_undirected(cfg: DataConfig) -> None:
    data = csbm(cfg)
    src, dst = data.edge_index
    pairs = num_pairs(cfg.num_nodes, cfg.avg_degree)
    assert data.num_edges == 2 * pairs
    # mean degree E / N is the requested d up to the rounding of N * d / 2 to whole pairs
    assert abs(data.num_edges / cfg.num_nodes - cfg.avg_degree) <= 1 / cfg.num_nodes + 1e-9
    assert not bool((src == dst).any())  # no self-loops
    key = lambda a, b: torch.sort(a * cfg.num_nodes + b).values  # noqa: E731
    assert torch.equal(key(src, dst), key(dst, src))  # every edge stored both ways


@settings(max_examples=60, deadline=None)
@given(csbm_configs())
def test_homophily_is_binomial(cfg: DataConfig) -> None:
    """Each pair is intra-class with probability h, independently: the count of intra-class
    pairs is Binomial(M, h), so an exact binomial test applies."""
    data = csbm(cfg)
    pairs = data.num_edges // 2
    if pairs == 0:
        return
    src, dst = data.edge_index
    intra = int((data.y[src] == data.y[dst]).sum()) // 2
    assert binomtest(intra, pairs, cfg.homophily).pvalue > ALPHA
    assert edge_homophily(data) == pytest.approx(intra / pairs)


def _big(**overrides) -> DataConfig:
    return DataConfig(name="csbm", num_nodes=20_000, num_classes=5, avg_degree=10.0,
                      homophily=0.7, num_features=20, **overrides)


def test_degree_distribution_and_inter_class_targets() -> None:
    """Degrees are ~Poisson(d) for every class; an inter-class edge picks the other class
    uniformly."""
    cfg = _big()
    data = csbm(cfg)
    n, d = cfg.num_nodes, cfg.avg_degree
    deg = torch.bincount(data.edge_index[0], minlength=n).double()
    # Poisson(d): the sample variance has standard error sqrt((d + 2 d^2) / n)
    assert abs(float(deg.var()) - d) < SIGMAS * math.sqrt((d + 2 * d * d) / n)
    for c in range(cfg.num_classes):
        in_class = deg[data.y == c]
        assert abs(float(in_class.mean()) - d) < SIGMAS * math.sqrt(d / in_class.numel())
    src, dst = data.y[data.edge_index[0]], data.y[data.edge_index[1]]
    inter = src != dst
    pairs = data.num_edges // 2  # large: the binomial test resolves h to about +-0.007 here
    assert binomtest(int((~inter).sum()) // 2, pairs, cfg.homophily).pvalue > ALPHA
    for c in range(cfg.num_classes):
        counts = torch.bincount(dst[inter & (src == c)], minlength=cfg.num_classes)
        others = torch.cat([counts[:c], counts[c + 1:]]).tolist()
        assert counts[c] == 0 and chisquare(others).pvalue > ALPHA


def test_gaussian_features_carry_the_requested_signal() -> None:
    cfg = _big(feature_signal=2.0)
    data = csbm(cfg)
    means = torch.stack([data.x[data.y == c].mean(0) for c in range(cfg.num_classes)])
    per_class = cfg.num_nodes // cfg.num_classes
    # class means are orthogonal with norm s = 2, each estimated with error e ~ N(0, I / n_c):
    # an entry of the Gram matrix errs by mu.e + e.mu (sd 2 s / sqrt(n_c) at most) + e.e
    # (mean F / n_c, and its spread is smaller still)
    gram = means @ means.t()
    tolerance = SIGMAS * 2 * 2.0 / math.sqrt(per_class) + 2 * cfg.num_features / per_class
    assert torch.allclose(gram, 4.0 * torch.eye(cfg.num_classes), atol=tolerance)
    centred = data.x - means[data.y]
    assert abs(float(centred.std()) - 1.0) < 0.01


def test_binary_features_density_and_topics() -> None:
    cfg = _big(features="binary", feature_signal=0.5, feature_density=0.05)
    data = csbm(cfg)
    probs = binary_feature_probs(cfg.num_classes, cfg.num_features, 0.05, 0.5)
    expected = probs[data.y]
    ones = float(data.x.sum())
    variance = float((expected * (1 - expected)).sum())
    assert abs(ones - float(expected.sum())) < SIGMAS * math.sqrt(variance)
    assert abs(float(expected.mean()) - 0.05) < 1e-6  # the density does not depend on signal
    assert set(data.x.unique().tolist()) <= {0.0, 1.0}


def test_same_seed_same_graph_other_seed_other_graph() -> None:
    cfg = DataConfig(name="csbm", num_nodes=3000, graph_seed=7)
    a, b = csbm(cfg), csbm(cfg)
    for key in ("x", "edge_index", "y", "train_mask", "val_mask", "test_mask"):
        assert torch.equal(a[key], b[key]), key
    c = csbm(DataConfig(name="csbm", num_nodes=3000, graph_seed=8))
    assert not torch.equal(a.edge_index, c.edge_index)


def test_binary_features_are_row_normalised_when_asked() -> None:
    data = load_dataset(DataConfig(name="csbm", num_nodes=2000, features="binary",
                                   feature_density=0.1))
    sums = data.x.sum(1)
    assert torch.allclose(sums[sums > 0], torch.ones(int((sums > 0).sum())))


@pytest.mark.parametrize(("overrides", "key"), [
    ({"num_nodes": 1000, "train_per_class": 200}, "data.num_nodes"),
    ({"num_nodes": 7, "num_classes": 4, "num_val": 1, "num_test": 1,
      "train_per_class": 1}, "data.num_nodes"),
    ({"num_features": 3}, "data.num_features"),
    ({"features": "binary", "feature_signal": 1.5}, "data.feature_signal"),
    ({"features": "binary", "feature_density": 0.5}, "data.feature_density"),
    ({"homophily": 1.5}, "data.homophily"),
    ({"features": "ternary"}, "data.features"),
])
def test_bad_parameters_name_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        check_data_config(Config.from_dict({"data": {"name": "csbm", **overrides}}).data)


def test_train_on_csbm_from_the_command_line(tmp_path, capsys) -> None:
    config = tmp_path / "csbm.yaml"
    config.write_text("data: {name: csbm, num_nodes: 1500, num_val: 100, num_test: 200}\n")
    assert main(["train", "--config", str(config), "--epochs", "3"]) == 0
    assert "csbm" in capsys.readouterr().out
