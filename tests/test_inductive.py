"""Inductive split: during training and validation no test node, and no edge touching one,
ever reaches the model; the full graph appears only for the final evaluation.

The proof instruments the model: every node carries its global id as its last feature, and
every ``forward`` (and layer-wise ``inference``, which reads its loader's graph) records which
global nodes and edges it was given. ``fit``'s ``on_epoch`` callback marks where training ends.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor
from torch_geometric.data import Data

import gnn.training
from gnn.config import Config, DataConfig
from gnn.data import training_view
from gnn.synthetic import csbm
from gnn.training import fit

EPOCH_END = "epoch"

RECIPES = {
    "gcn": {"model.name": "gcn"},
    "sage": {"model.name": "sage", "model.hidden_channels": 32},
    "sage_sampling": {"model.name": "sage", "model.hidden_channels": 32,
                      "sampler.enabled": True, "sampler.fanout": [3, 3],
                      "sampler.batch_size": 16, "sampler.backend": "torch"},
    "sage_sampled_inference": {"model.name": "sage", "model.hidden_channels": 32,
                               "sampler.enabled": True, "sampler.fanout": [3, 3],
                               "sampler.batch_size": 16, "sampler.backend": "torch",
                               "sampler.inference": "sampled"},
}


@pytest.fixture(scope="module")
def graph() -> Data:
    data = csbm(DataConfig(name="csbm", num_nodes=600, num_classes=3, train_per_class=10,
                           num_val=60, num_test=120, graph_seed=3))
    ids = torch.arange(data.num_nodes, dtype=torch.float).unsqueeze(1)
    data.x = torch.cat([data.x, ids], dim=1)  # exact in float32 far beyond 600
    return data


class Recorder:
    """What the model was shown, call by call: ("call", saw a test node or edge) or EPOCH_END."""

    def __init__(self, data: Data) -> None:
        self.is_test = data.test_mask.clone()
        self.edges = set(map(tuple, data.edge_index.t().tolist()))
        self.log: list[Any] = []

    def see(self, x: Tensor, edge_index: Tensor) -> None:
        x = x.to_dense() if x.layout != torch.strided else x
        ids = x[:, -1].round().long()
        assert torch.equal(ids.float(), x[:, -1]), "the id column was altered"
        global_edges = ids[edge_index]
        # every edge the model sees is an edge of the graph, between the nodes it claims
        assert set(map(tuple, global_edges.t().tolist())) <= self.edges
        saw_test = bool(self.is_test[ids].any()) or bool(self.is_test[global_edges].any())
        self.log.append(("call", saw_test))

    def instrument(self, build_model: Any) -> Any:
        def build(*args: Any, **kwargs: Any) -> Any:
            model = build_model(*args, **kwargs)
            forward, inference = model.forward, getattr(model, "inference", None)

            def recorded_forward(x: Tensor, edge_index: Tensor, *a: Any, **k: Any) -> Tensor:
                self.see(x, edge_index)
                return forward(x, edge_index, *a, **k)

            def recorded_inference(loader: Any, *a: Any, **k: Any) -> Tensor:
                self.see(loader.data.x, loader.data.edge_index)  # all that inference reads
                return inference(loader, *a, **k)

            model.forward = recorded_forward
            if inference is not None:
                model.inference = recorded_inference
            return model

        return build

    def phases(self) -> tuple[list[bool], list[bool]]:
        """(calls up to the last epoch's end, calls after it = the final evaluation)."""
        last = max(i for i, entry in enumerate(self.log) if entry == EPOCH_END)
        calls = lambda part: [e[1] for e in part if e != EPOCH_END]  # noqa: E731
        return calls(self.log[:last]), calls(self.log[last:])


def run(graph: Data, recipe: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder(graph)
    monkeypatch.setattr(gnn.training, "build_model", recorder.instrument(gnn.training.build_model))
    cfg = Config().override({**RECIPES[recipe], "data.split_mode": mode, "train.epochs": 3,
                             "data.sparse_features": "never"})
    fit(cfg, graph, on_epoch=lambda *_: recorder.log.append(EPOCH_END))
    return recorder


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_inductive_training_never_sees_a_test_node(graph: Data, recipe: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    training, final = run(graph, recipe, "inductive", monkeypatch).phases()
    assert training and not any(training)
    assert any(final)  # the final evaluation runs on the full graph, test nodes included


@pytest.mark.parametrize("recipe", ["gcn", "sage_sampling"])
def test_the_instrument_detects_transductive_exposure(graph: Data, recipe: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    training, _ = run(graph, recipe, "transductive", monkeypatch).phases()
    assert any(training)


def test_training_view_is_the_induced_subgraph(graph: Data) -> None:
    view = training_view(graph)
    keep = graph.train_mask | graph.val_mask
    src, dst = graph.edge_index
    assert view.num_nodes == int(keep.sum())
    assert view.num_edges == int((keep[src] & keep[dst]).sum())
    assert "test_mask" not in view
    assert int(view.train_mask.sum()) == int(graph.train_mask.sum())
    assert torch.equal(view.x[:, -1].long(), keep.nonzero().view(-1))


def test_result_records_the_mode(graph: Data) -> None:
    result = fit(Config().override({"data.split_mode": "inductive", "train.epochs": 2}), graph)
    assert result.split_mode == "inductive"
    assert result.train_graph_nodes == int((graph.train_mask | graph.val_mask).sum())
    assert result.num_nodes == graph.num_nodes
