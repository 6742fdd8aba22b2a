"""Neighbour sampling in DataLoader worker processes, forked and spawned: each worker and each
epoch draws its own stream, derived from the run's seed; the same seed gives the same run; no
state is shared between workers, so every batch is valid (also when tensors travel through
``file_system`` shared memory, where a shared node table used to corrupt batches)."""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections import Counter
from collections.abc import Iterator

import pytest
import torch
from torch_geometric.data import Data

from gnn.config import load_config
from gnn.sampling import make_neighbor_loader
from gnn.training import fit

FANOUT = [4, 3]
#: node 0 is a hub with 59 in-neighbours; it is the seed of the first two batches, which the
#: two workers draw (batches go to workers in turn)
SEEDS = torch.tensor([0, 0, *range(1, 30)])


def hub_graph() -> Data:
    n = 60
    hub = torch.stack([torch.arange(1, n), torch.zeros(n - 1, dtype=torch.long)])
    extra = torch.randint(0, n, (2, 400), generator=torch.Generator().manual_seed(1))
    return Data(x=torch.arange(n).view(-1, 1), edge_index=torch.cat([hub, extra], 1),
                num_nodes=n)


@contextlib.contextmanager
def sharing_strategy(name: str) -> Iterator[None]:
    old = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy(name)
    try:
        yield
    finally:
        torch.multiprocessing.set_sharing_strategy(old)


def run(data: Data, context: str, seed: int, epochs: int, persistent: bool) -> list[list[Data]]:
    loader = make_neighbor_loader(data, FANOUT, batch_size=1, input_nodes=SEEDS,
                                  backend="torch", seed=seed, num_workers=2,
                                  multiprocessing_context=context,
                                  persistent_workers=persistent)
    batches = [list(loader) for _ in range(epochs)]
    del loader  # shut persistent workers down now, not in a later test's forked child
    gc.collect()
    return batches


def check_batch(batch: Data, data: Data, seed: int) -> None:
    """PyG's batch contract and the sampler's: the seed first, nodes unique, every edge a
    graph edge, each node of hop k with min(in-degree, fanout) edges."""
    assert int(batch.n_id[0]) == seed and batch.batch_size == 1
    assert batch.n_id.unique().numel() == batch.n_id.numel()
    assert bool((batch.edge_index < batch.num_nodes).all())
    assert torch.equal(data.edge_index[:, batch.e_id], batch.n_id[batch.edge_index])
    assert torch.equal(batch.x.view(-1), batch.n_id)
    deg = torch.bincount(data.edge_index[1], minlength=data.num_nodes)
    per_target, start = Counter(batch.edge_index[1].tolist()), 0
    for hop, k in enumerate(FANOUT):
        for t in range(start, start + batch.num_sampled_nodes[hop]):
            assert per_target.get(t, 0) == min(int(deg[batch.n_id[t]]), k)
        start += batch.num_sampled_nodes[hop]


def signature(batches: list[Data]) -> list[tuple[int, ...]]:
    return [tuple(b.e_id.tolist()) for b in batches]


@pytest.mark.parametrize(("context", "strategy", "persistent"), [
    ("fork", "file_descriptor", False),
    ("fork", "file_descriptor", True),
    ("spawn", "file_descriptor", True),
    ("spawn", "file_system", False),
])
def test_workers(context: str, strategy: str, persistent: bool) -> None:
    data = hub_graph()
    with sharing_strategy(strategy):
        first, again = (run(data, context, 0, 2, persistent) for _ in range(2))
        other = run(data, context, 1, 1, persistent)
    for epoch in first + again + other:
        assert len(epoch) == SEEDS.numel()
        for batch, seed in zip(epoch, SEEDS.tolist(), strict=True):
            check_batch(batch, data, seed)
    assert [signature(e) for e in first] == [signature(e) for e in again]  # same seed, same run
    assert signature(first[0]) != signature(first[1])  # epochs differ
    assert signature(first[0])[0] != signature(first[0])[1]  # workers differ (both seed 0)
    assert signature(first[0]) != signature(other[0])  # seeds differ


def test_fork_and_spawn_give_the_same_run(sampler_code: str) -> None:
    """A worker's stream depends on the run's seed and the worker's torch seed only, not on
    how the worker was started or on the main process's state (both implementations)."""
    data = hub_graph()
    forked = run(data, "fork", 3, 1, True)
    spawned = run(data, "spawn", 3, 1, True)
    assert signature(forked[0]) == signature(spawned[0])


def test_workers_do_not_touch_the_main_process_stream() -> None:
    """Batches drawn in workers leave the loader's sampler where it was: the main process's
    stream (and node table) is its own."""
    data = hub_graph()
    loader = make_neighbor_loader(data, FANOUT, batch_size=1, input_nodes=SEEDS,
                                  backend="torch", seed=0, num_workers=2,
                                  multiprocessing_context="fork")
    before = loader.node_sampler.generator.get_state()
    list(loader)
    assert torch.equal(loader.node_sampler.generator.get_state(), before)
    assert bool((loader.node_sampler._local == loader.node_sampler.UNSEEN).all())


@pytest.mark.parametrize("filter_per_worker", [True, False])
def test_dropped_loader_stops_its_workers_at_once(filter_per_worker: bool) -> None:
    """No reference cycle between a loader and its persistent worker iterator: dropping the
    loader frees it by reference counting and its workers hear the shutdown (in a cycle the
    garbage collector closed the queues first, and each worker cost a 5 s join timeout)."""
    loader = make_neighbor_loader(hub_graph(), FANOUT, batch_size=4, backend="torch", seed=0,
                                  num_workers=2, multiprocessing_context="fork",
                                  persistent_workers=True, filter_per_worker=filter_per_worker)
    list(loader)
    iterator = getattr(loader._iterator, "iterator", loader._iterator)
    workers, freed = list(iterator._workers), weakref.ref(loader)
    gc.disable()
    try:
        del loader, iterator
        assert freed() is None
        assert not any(worker.is_alive() for worker in workers)
    finally:
        gc.enable()


@pytest.mark.parametrize("filter_per_worker", [True, False])
def test_iterating_a_loader_nobody_holds(filter_per_worker: bool) -> None:
    """``next(iter(make_neighbor_loader(...)))``: a non-persistent iterator keeps its loader."""
    data = hub_graph()
    batch = next(iter(make_neighbor_loader(data, FANOUT, batch_size=1, input_nodes=SEEDS,
                                           backend="torch", seed=0, num_workers=2,
                                           multiprocessing_context="fork",
                                           filter_per_worker=filter_per_worker)))
    check_batch(batch, data, 0)


def test_sampled_training_with_workers_is_reproducible(cora: Data) -> None:
    """``sampler.num_workers``: sampled GraphSAGE trains with worker processes, and the same
    seed gives the same run."""
    cfg = load_config("configs/sage_sampling.yaml").override({
        "sampler.backend": "torch", "sampler.num_workers": 2, "train.epochs": 3})
    a, b = fit(cfg, cora), fit(cfg, cora)
    assert a.history.train_loss == b.history.train_loss
    assert a.test_acc == b.test_acc and a.test_acc > 0.3
