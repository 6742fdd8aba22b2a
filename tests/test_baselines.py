"""The simple baselines and the deep model: label propagation (no training loop), SGC, C&S on
the MLP, GCNII; what each reads of the labels, and checkpoints of label-reading models."""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.nn import MLP as PyGMLP
from torch_geometric.nn import CorrectAndSmooth, LabelPropagation

from gnn.batching import make_batching, training_labels
from gnn.cli import main
from gnn.config import load_config
from gnn.members import fit_many
from gnn.training import fit, make_optimizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config(name: str, **overrides: object):
    return load_config(CONFIGS / f"{name}.yaml").override(overrides)


def other_test_labels(data: Data) -> Data:
    """``data`` whose test nodes carry other labels (every other field shared)."""
    changed = data.clone()
    changed.y = data.y.clone()
    changed.y[data.test_mask] = (data.y[data.test_mask] + 1) % (int(data.y.max()) + 1)
    return changed


def predictions(result, cfg, data: Data) -> torch.Tensor:
    return make_batching(cfg, data, torch.device("cpu")).predict(result.trained).argmax(-1)


def test_label_propagation_fit_is_its_propagation(cora: Data) -> None:
    """No parameters, no epochs: one evaluation logged as epoch 0, the same for every seed,
    and PyG's LabelPropagation on the edge list gives the same predictions."""
    cfg = config("lp")
    results = fit_many(cfg, [0, 1], cora)
    first = results[0]
    assert (first.num_params, first.epochs, first.best_epoch) == (0, 0, 0)
    assert first.history.epoch == [0] and first.total_train_time_s > 0
    assert results[1].test_acc == first.test_acc
    pyg = LabelPropagation(cfg.model.K, 1 - cfg.model.alpha)(cora.y, cora.edge_index,
                                                             mask=cora.train_mask)
    pred = pyg.argmax(-1)
    assert first.test_acc == pytest.approx(float((pred == cora.y)[cora.test_mask].float()
                                                 .mean()), abs=1e-6)


@pytest.mark.parametrize("name", ["lp", "cs"])
def test_test_labels_never_reach_the_model(name: str, cora: Data) -> None:
    """Models that read labels see the training labels only: other labels on the test nodes
    change nothing but the score (same selected epoch, same predictions)."""
    cfg = config(name, **{"train.epochs": 30})
    changed = other_test_labels(cora)
    a, b = fit(cfg, cora), fit(cfg, changed)
    assert a.best_epoch == b.best_epoch and a.val_acc == b.val_acc
    assert torch.equal(predictions(a, cfg, cora), predictions(b, cfg, changed))
    assert a.test_acc != b.test_acc
    labels = training_labels(cora)
    assert torch.equal(labels.sum(1) > 0, cora.train_mask)


def test_correct_and_smooth_is_pygs_on_the_mlp(cora: Data) -> None:
    """In training the model is its MLP; in evaluation the MLP's softmax through PyG's
    CorrectAndSmooth (plain edge list) with the training labels."""
    cfg = config("cs")
    torch.manual_seed(0)
    from gnn.models import build_model

    model = build_model(cfg.model, cora.num_features, 7)
    mlp = PyGMLP(in_channels=cora.num_features, hidden_channels=cfg.model.hidden_channels,
                 out_channels=7, num_layers=cfg.model.num_layers, dropout=cfg.model.dropout,
                 norm=None)
    mlp.load_state_dict(model.state_dict(), strict=False)
    labels = training_labels(cora)
    mlp.eval()
    model.eval()
    post = CorrectAndSmooth(cfg.model.K, cfg.model.correction_alpha, cfg.model.K,
                            cfg.model.smoothing_alpha, autoscale=False, scale=1.0)
    y_train = cora.y[cora.train_mask]
    soft = post.correct(mlp(cora.x).softmax(-1), y_train, cora.train_mask, cora.edge_index)
    expected = post.smooth(soft, y_train, cora.train_mask, cora.edge_index)
    out = model(cora.x, cora.edge_index, labels)
    torch.testing.assert_close(out.softmax(-1), expected / expected.sum(1, keepdim=True),
                               atol=1e-5, rtol=1e-4)
    model.train()
    torch.manual_seed(1)
    train_out = model(cora.x, cora.edge_index, labels)
    torch.manual_seed(1)
    mlp.train()
    torch.testing.assert_close(train_out, mlp(cora.x), atol=1e-5, rtol=1e-4)


def test_gcnii_decays_convolutions_and_linear_layers_apart(cora: Data) -> None:
    cfg = config("gcnii", **{"model.num_layers": 4})
    from gnn.models import build_model

    model = build_model(cfg.model, cora.num_features, 7)
    groups = make_optimizer(cfg, model).param_groups
    assert [g["weight_decay"] for g in groups] == [cfg.train.weight_decay,
                                                   cfg.train.conv_weight_decay]
    assert sum(p.numel() for g in groups for p in g["params"]) == \
        sum(p.numel() for p in model.parameters())
    unset = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, conv_weight_decay=None))
    plain = make_optimizer(unset, model)
    assert {g["weight_decay"] for g in plain.param_groups} == {cfg.train.weight_decay}


def test_gcnii_gate_shortened(cora: Data) -> None:
    """The shipped recipe with 16 layers and 200 epochs (the 64-layer figure over 10 seeds is
    in docs/results.md): a deep model that trains."""
    cfg = config("gcnii", **{"model.num_layers": 16, "train.epochs": 200})
    accs = [fit(cfg.override({"train.seed": s}), cora).test_acc for s in range(2)]
    print(f"\ngcnii (16 layers, 200 epochs): test_acc {statistics.fmean(accs):.4f}")
    assert statistics.fmean(accs) >= 0.80


@pytest.mark.parametrize("name", ["lp", "cs"])
def test_checkpoint_of_a_label_reading_model_predicts_as_trained(
        name: str, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, record, preds = tmp_path / "m.pt", tmp_path / "r.json", tmp_path / "p.csv"
    assert main(["train", "--config", str(CONFIGS / f"{name}.yaml"), "--root", str(data_root),
                 "--epochs", "20", "--save", str(ckpt), "--json", str(record)]) == 0
    assert main(["predict", "--checkpoint", str(ckpt), "--root", str(data_root), "--nodes",
                 "test", "--out", str(preds)]) == 0
    from gnn.config import DataConfig
    from gnn.data import load_dataset

    y = load_dataset(DataConfig(root=str(data_root))).y
    with open(preds) as handle:
        rows = list(csv.DictReader(handle))
    acc = statistics.fmean(int(r["pred"]) == int(y[int(r["node"])]) for r in rows)
    assert acc == pytest.approx(json.loads(record.read_text())["test_acc"], abs=1e-6)  # float32


def test_sgc_propagates_features_once_per_graph(cora: Data, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    """Evaluation (under inference_mode, where torch bumps a CSR tensor's version when it is
    read densely) and training reuse the propagated features; a new graph recomputes them."""
    from gnn import models

    cfg = config("sgc")
    model = models.build_model(cfg.model, cora.num_features, 7)
    calls = []
    real = models._propagated
    monkeypatch.setattr(models, "_propagated", lambda x, adj, K: calls.append(1) or
                        real(x, adj, K))
    feed = make_batching(cfg, cora, torch.device("cpu"))
    for _ in range(3):
        feed.predict(model)
        model.train()
        model(feed.x, feed.edge_index)
    assert len(calls) == 1
    model(feed.x, feed.edge_index.flip(0).contiguous())
    assert len(calls) == 2
