"""Random splits: stratified, exact, reproducible from the split seed alone; the largest
component; batched members on their own splits; ``--splits`` in the commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.data import Data

from gnn.cli import main
from gnn.config import Config, DataConfig, load_config
from gnn.data import (
    data_for_split,
    largest_component,
    load_dataset,
    random_split,
    split_masks,
    training_view,
)
from gnn.errors import ConfigError, DataError
from gnn.members import fit_many
from gnn.training import fit
from tests.strategies import split_requests
from tests.test_cli import run_error

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RANDOM = {"data.split": "random", "data.largest_component": True}


@settings(max_examples=60, deadline=None)
@given(request=split_requests(), seed=st.integers(0, 2**32 - 1))
def test_random_split_is_exact_disjoint_and_complete(request: tuple[torch.Tensor, int, int],
                                                     seed: int) -> None:
    y, train_per_class, val_per_class = request
    train, val, test = random_split(y, train_per_class, val_per_class, seed)
    assert not (train & val).any() and not (train & test).any() and not (val & test).any()
    assert bool((train | val | test).all())
    for c in y.unique():
        of_c = y == c
        assert int((train & of_c).sum()) == train_per_class
        assert int((val & of_c).sum()) == val_per_class


@settings(max_examples=30, deadline=None)
@given(request=split_requests(), seed=st.integers(0, 2**32 - 1),
       noise=st.integers(0, 2**31 - 1))
def test_same_split_seed_same_masks_whatever_the_global_state(
        request: tuple[torch.Tensor, int, int], seed: int, noise: int) -> None:
    """The split depends on its seed only: reseeding torch, numpy and random between two draws
    (as every training run does with its initialisation seed) changes nothing."""
    y, t, v = request
    first = random_split(y, t, v, seed)
    torch.manual_seed(noise)
    np.random.seed(noise)
    torch.rand(noise % 7)
    second = random_split(y, t, v, seed)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_split_stream_is_fixed() -> None:
    """The same seed gives the same nodes on every machine: numpy's PCG64 stream, seeded
    explicitly, is platform independent; these nodes were drawn once and are pinned here."""
    train, val, _ = random_split(torch.arange(12) % 3, 2, 1, 7)
    assert train.nonzero().view(-1).tolist() == [0, 2, 4, 6, 10, 11]
    assert val.nonzero().view(-1).tolist() == [3, 5, 7]


def test_class_too_small_is_one_clear_error() -> None:
    y = torch.tensor([0] * 40 + [1] * 12 + [2] * 60)
    with pytest.raises(DataError, match=r"class 1 has 12 nodes, fewer than train_per_class "
                                        r"\+ val_per_class = 10 \+ 5"):
        random_split(y, 10, 5, 0)
    with pytest.raises(DataError, match="no node is left to test"):
        random_split(torch.tensor([0, 0, 1, 1]), 1, 1, 0)


def test_split_seeds_differ_and_public_has_one_split(cora: Data) -> None:
    masks = split_masks(cora, Config().override(RANDOM).data, [0, 1])
    assert masks.train.shape == (2, cora.num_nodes)
    assert not torch.equal(masks.train[0], masks.train[1])
    public = split_masks(cora, DataConfig(), [0])
    assert torch.equal(public.train[0], cora.train_mask)
    with pytest.raises(ConfigError, match="public has one split"):
        split_masks(cora, DataConfig(), [0, 1])


def test_cora_largest_component_random_split(data_root: Path) -> None:
    """Shchur et al.'s Cora: the largest component has 2485 nodes and 5069 undirected edges;
    20 + 30 per class of its 7 classes, the other 2135 nodes tested."""
    cfg = Config().override({**RANDOM, "data.root": str(data_root), "data.split_seed": 4})
    data = load_dataset(cfg.data)
    assert (data.num_nodes, data.num_edges) == (2485, 2 * 5069)
    assert (int(data.train_mask.sum()), int(data.val_mask.sum()),
            int(data.test_mask.sum())) == (140, 210, 2135)
    again = largest_component(data)  # already one component: unchanged
    assert again.num_nodes == data.num_nodes
    assert torch.equal(data_for_split(data, cfg.data, 4).train_mask, data.train_mask)


def test_config_refuses_other_public_splits() -> None:
    with pytest.raises(ConfigError, match="data.split_seed: data.split: public has one split"):
        Config().override({"data.split_seed": 3})
    with pytest.raises(ConfigError, match="data.largest_component: the public split"):
        Config().override({"data.largest_component": True})


def _csbm(**overrides: object) -> Config:
    return Config().override({"data.name": "csbm", "data.num_nodes": 300,
                              "data.num_classes": 3, "data.split": "random", "data.num_val": 50,
                              "data.num_test": 50,
                              "data.train_per_class": 5, "data.val_per_class": 5,
                              "train.epochs": 3, "model.hidden_channels": 8, **overrides})


def test_inductive_random_split_without_training_edges_is_refused() -> None:
    cfg = _csbm(**{"data.avg_degree": 0.0, "data.split_mode": "inductive"})
    with pytest.raises(ConfigError, match="inductive training on split 0 has no edge"):
        load_dataset(cfg.data)


def test_fit_many_over_splits_is_split_major_and_each_member_on_its_split(cora: Data) -> None:
    """Batched members on different splits each equal the standalone fit on their split
    (dropout 0: the same computation), and every result names its split."""
    cfg = load_config(CONFIGS / "gcn.yaml").override(
        {"data.split": "random", "model.dropout": 0.0, "train.epochs": 15})
    results = fit_many(cfg, [0, 1], cora, members=4, splits=[2, 5])
    assert [(r.split, r.seed) for r in results] == [(2, 0), (2, 1), (5, 0), (5, 1)]
    assert all(r.members == 4 for r in results)
    for r in results[1:3]:
        alone = fit(cfg.override({"train.seed": r.seed, "data.split_seed": r.split}),
                    data_for_split(cora, cfg.data, r.split))
        assert alone.split == r.split and r.config["data"]["split_seed"] == r.split
        assert r.best_epoch == alone.best_epoch
        assert r.history.train_loss == pytest.approx(alone.history.train_loss, abs=1e-5)
        assert r.test_acc == pytest.approx(alone.test_acc, abs=1 / 1000)
        assert torch.equal(r.data.test_mask, alone.data.test_mask)


def test_fit_many_inductive_random_splits_and_sequential_models() -> None:
    """Inductive members never share a run across splits (each split has its own training
    graph); a model that does not batch runs its pairs one after the other."""
    cfg = _csbm(**{"data.split_mode": "inductive"})
    data = load_dataset(cfg.data)
    results = fit_many(cfg, [0, 1, 2], data, splits=[0, 1])
    assert [(r.split, r.seed) for r in results] == [(s, k) for s in (0, 1) for k in (0, 1, 2)]
    assert all(r.train_graph_nodes == 30 and r.members == 3 for r in results)
    view = training_view(data_for_split(data, cfg.data, 1))
    assert results[3].train_graph_edges == view.num_edges
    lp = fit_many(cfg.override({"model.name": "lp"}), [0], data, splits=[0, 1])
    assert [(r.split, r.members) for r in lp] == [(0, 1), (1, 1)]


def test_fit_many_public_split_beyond_one_is_refused(cora: Data) -> None:
    with pytest.raises(ConfigError, match="public has one split"):
        fit_many(load_config(CONFIGS / "gcn.yaml"), [0], cora, splits=range(2))


def test_bench_splits_rows_carry_their_split_and_resume(data_root: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    out = tmp_path / "bench"
    argv = ["bench", "--models", "gcn", "mlp", "--root", str(data_root), "--quick",
            "--seeds", "2", "--splits", "2", "--split", "random", "--largest-component",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["name"], r["split"], r["seed"]) for r in rows] == [
        (name, split, seed) for name in ("gcn", "mlp") for split in (0, 1) for seed in (0, 1)]
    assert all(r["config"]["data"]["split_seed"] == r["split"] for r in rows)
    assert all(r["num_nodes"] == 2485 for r in rows)
    header = (out / "runs.csv").read_text().splitlines()[0].split(",")
    assert "split" in header
    by_split = {(r["name"], r["split"]): r["test_acc"] for r in rows if r["seed"] == 0}
    assert by_split[("gcn", 0)] != by_split[("gcn", 1)]  # other test nodes, other scores
    capsys.readouterr()
    assert main([*argv, "--resume", "--splits", "3"]) == 0
    assert "4 runs trained; 8 resumed" in capsys.readouterr().out


def test_bad_split_inputs_exit_2_and_write_nothing(data_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    common = ["bench", "--models", "gcn", "--root", str(data_root), "--quick", "--out",
              str(out)]
    assert "--splits: must be 1..10000, got 0" in run_error(capsys, [*common, "--splits", "0"])
    assert "--splits: gcn uses data.split: public" in run_error(capsys,
                                                               [*common, "--splits", "2"])
    big = tmp_path / "big.yaml"
    big.write_text("data: {split: random, train_per_class: 500}\n")
    err = run_error(capsys, ["train", "--config", str(big), "--root", str(data_root),
                             "--json", str(tmp_path / "r.json")])
    assert "data.train_per_class: class" in err and "fewer than" in err
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "flat.yaml").write_text(
        "model: {name: gcn}\ndata: {name: csbm, num_nodes: 300, num_classes: 3, num_val: 50, "
        "num_test: 50, avg_degree: 0.0, split: random, split_mode: inductive}\n")
    err = run_error(capsys, ["bench", "--configs", str(configs), "--quick", "--out", str(out),
                             "--splits", "2"])
    assert "has no edge" in err
    assert not out.exists() and not (tmp_path / "r.json").exists()


def test_train_split_seed_flag(data_root: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert main(["train", "--config", str(CONFIGS / "mlp.yaml"), "--root", str(data_root),
                 "--epochs", "3", "--split", "random", "--split-seed", "6",
                 "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["split"] == 6 and record["config"]["data"]["split"] == "random"
    assert "split_seed=6" in capsys.readouterr().out
    err = run_error(capsys, ["train", "--root", str(data_root), "--split-seed", "1"])
    assert "data.split_seed: data.split: public has one split" in err
