"""Contextual stochastic block model (CSBM): graphs of any size whose difficulty is a parameter.

Planetoid graphs stop at 20k nodes; scaling claims need millions, with a known answer. A CSBM
draws ``C`` balanced classes, ``N * d / 2`` undirected edges of which a fraction ``h`` joins two
nodes of the same class (edge homophily), and node features that carry a tunable amount of class
signal: Gaussian (class mean of norm ``signal`` plus unit noise) or sparse binary (bag-of-words
topics). Everything is vectorised and generated in fixed-size chunks from one seeded
``torch.Generator``, so 10M nodes / 100M edges fit in a few GiB and the same seed always gives
the same graph.

Construction: a random permutation ``perm`` lists the nodes; node ``perm[p]`` gets class
``p % C``. Members of class ``c`` are then ``perm[c::C]``, so "a uniformly random node of class
``c``" is one gather, classes are balanced to within one node, and the first ``k * C`` entries of
``perm`` hold exactly ``k`` nodes per class (the training set).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch_geometric.data import Data

from gnn.config import DataConfig
from gnn.errors import ConfigError

#: Node pairs drawn per chunk: bounds the generator's temporary memory (~ 100 bytes a pair)
#: independently of the graph size.
EDGE_CHUNK = 1 << 21
#: Feature entries generated per chunk.
FEATURE_CHUNK = 1 << 23


def check_csbm(cfg: DataConfig) -> None:
    """Cross-field checks (``ConfigError`` naming the key) that single-field ranges cannot do."""
    n, c = cfg.num_nodes, cfg.num_classes
    if n < 2 * c:
        raise ConfigError(f"data.num_nodes: csbm needs at least 2 nodes per class "
                          f"(num_classes={c}), got {n}")
    labelled = cfg.train_per_class * c + cfg.num_val + cfg.num_test
    if labelled > n:
        raise ConfigError(f"data.num_nodes: train_per_class * num_classes + num_val + num_test "
                          f"= {labelled} exceeds num_nodes={n}")
    if num_pairs(n, cfg.avg_degree) * 2 > 2**40:
        raise ConfigError(f"data.avg_degree: {n} nodes of average degree {cfg.avg_degree:g} "
                          "make more than 2^40 edges")
    if cfg.num_features < c:
        raise ConfigError(f"data.num_features: csbm needs one feature per class at least "
                          f"(num_classes={c}), got {cfg.num_features}")
    if cfg.features == "binary":
        if cfg.feature_signal > 1:
            raise ConfigError("data.feature_signal: binary features take a signal in [0, 1], "
                              f"got {cfg.feature_signal}")
        p_in = cfg.feature_density * (1 + cfg.feature_signal * (c - 1))
        if p_in > 1:
            raise ConfigError(f"data.feature_density: density * (1 + signal * (classes - 1)) = "
                              f"{p_in:.3g} is not a probability; lower the density or signal")


def num_pairs(num_nodes: int, avg_degree: float) -> int:
    """Undirected pairs for an average degree ``d``: each pair is stored in both directions,
    so the directed edge count is ``2 * round(N * d / 2)`` and ``E / N`` is ``d`` to ``1/N``."""
    return round(num_nodes * avg_degree / 2)


def class_sizes(num_nodes: int, num_classes: int) -> Tensor:
    """Nodes per class: positions ``p`` in ``[0, N)`` with ``p % C == c``."""
    c = torch.arange(num_classes)
    return (num_nodes - c + num_classes - 1) // num_classes


def _uniform_below(n: Tensor, generator: torch.Generator) -> Tensor:
    """One uniform integer in ``[0, n_i)`` per entry (float64 keeps it exact up to 2^53)."""
    r = torch.rand(n.shape, generator=generator, dtype=torch.float64)
    return (r * n).long().clamp_(max=n - 1)


def _edges(perm: Tensor, num_classes: int, pairs: int, homophily: float,
           generator: torch.Generator) -> Tensor:
    """``[2, 2 * pairs]`` int64 edge index, pair ``i`` at columns ``i`` and ``pairs + i``."""
    n, c = perm.numel(), num_classes
    sizes = class_sizes(n, c)
    edge_index = torch.empty(2, 2 * pairs, dtype=torch.long)
    for lo in range(0, pairs, EDGE_CHUNK):
        k = min(EDGE_CHUNK, pairs - lo)
        pos = torch.randint(0, n, (k,), generator=generator)  # source: uniform over nodes
        src_class, src_slot = pos % c, pos // c
        intra = torch.rand(k, generator=generator) < homophily
        other = (src_class + torch.randint(1, c, (k,), generator=generator)) % c
        dst_class = torch.where(intra, src_class, other)
        # intra-class: a uniform slot among the class's other members (no self-loops)
        slot = _uniform_below(sizes[dst_class] - intra.long(), generator)
        slot += (intra & (slot >= src_slot)).long()
        src, dst = perm[pos], perm[dst_class + c * slot]
        edge_index[0, lo:lo + k] = src
        edge_index[1, lo:lo + k] = dst
        edge_index[0, pairs + lo:pairs + lo + k] = dst
        edge_index[1, pairs + lo:pairs + lo + k] = src
    return edge_index


def binary_feature_probs(num_classes: int, num_features: int, density: float,
                         signal: float) -> Tensor:
    """``[C, F]`` activation probabilities: feature ``j`` belongs to topic ``j % C``; a node
    turns on its own topic's features with ``p_in = q (1 + s (C - 1))`` and the others with
    ``p_out = q (1 - s)``, so the expected density is ``q`` whatever the signal ``s``
    (exactly when ``C`` divides ``F``)."""
    topic = torch.arange(num_features) % num_classes
    own = topic.unsqueeze(0) == torch.arange(num_classes).unsqueeze(1)
    p_in = density * (1 + signal * (num_classes - 1))
    return torch.where(own, torch.tensor(p_in), torch.tensor(density * (1 - signal)))


def gaussian_class_means(num_classes: int, num_features: int, signal: float,
                         generator: torch.Generator) -> Tensor:
    """``[C, F]`` orthogonal class means of norm ``signal`` (features = mean + N(0, I))."""
    q, _ = torch.linalg.qr(torch.randn(num_features, num_classes, generator=generator))
    return signal * q.t()


def _features(y: Tensor, cfg: DataConfig, generator: torch.Generator) -> Tensor:
    n, f, c = y.numel(), cfg.num_features, cfg.num_classes
    rows = max(1, FEATURE_CHUNK // f)
    if cfg.features == "gaussian":
        means = gaussian_class_means(c, f, cfg.feature_signal, generator)
        x = torch.randn(n, f, generator=generator)
        for lo in range(0, n, rows):
            x[lo:lo + rows] += means[y[lo:lo + rows]]
        return x
    probs = binary_feature_probs(c, f, cfg.feature_density, cfg.feature_signal)
    x = torch.empty(n, f)
    for lo in range(0, n, rows):
        block = y[lo:lo + rows]
        x[lo:lo + rows] = torch.rand(block.numel(), f, generator=generator) < probs[block]
    return x


def _mask(num_nodes: int, index: Tensor) -> Tensor:
    mask = torch.zeros(num_nodes, dtype=torch.bool)
    mask[index] = True
    return mask


def csbm(cfg: DataConfig) -> Data:
    """Generate the CSBM graph described by the ``data`` section (``name: csbm``).

    Split: ``train_per_class`` nodes of every class, then ``num_val`` and ``num_test`` nodes,
    all drawn at random without overlap (val and test are class-stratified to within one node).
    """
    check_csbm(cfg)
    n, c = cfg.num_nodes, cfg.num_classes
    generator = torch.Generator().manual_seed(cfg.graph_seed)
    perm = torch.randperm(n, generator=generator)
    y = torch.empty(n, dtype=torch.long)
    y[perm] = torch.arange(n) % c
    edge_index = _edges(perm, c, num_pairs(n, cfg.avg_degree), cfg.homophily, generator)
    x = _features(y, cfg, generator)
    n_train = cfg.train_per_class * c
    bounds = [0, n_train, n_train + cfg.num_val, n_train + cfg.num_val + cfg.num_test]
    data = Data(x=x, edge_index=edge_index, y=y, num_nodes=n,
                train_mask=_mask(n, perm[bounds[0]:bounds[1]]),
                val_mask=_mask(n, perm[bounds[1]:bounds[2]]),
                test_mask=_mask(n, perm[bounds[2]:bounds[3]]))
    data.name = "csbm"
    return data


def csbm_bytes(num_nodes: int, avg_degree: float, num_features: int) -> int:
    """Resident size of the generated graph (x float32, edge_index int64, y, three masks),
    known before generating it."""
    edges = 2 * num_pairs(num_nodes, avg_degree)
    return num_nodes * (4 * num_features + 8 + 3) + 16 * edges


def edge_homophily(data: Data) -> float:
    """Fraction of edges whose endpoints share a class."""
    src, dst = data.edge_index
    return float((data.y[src] == data.y[dst]).float().mean()) if src.numel() else math.nan
