"""Training: reproducibility, model selection, errors, and the accuracy gates on Cora."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch_geometric.data import Data

from gnn.config import Config, load_config, shipped_models
from gnn.errors import TrainingError
from gnn.training import fit

CONFIGS = "configs"


def run(name: str, cora: Data, seed: int, **overrides) -> dict:
    cfg = load_config(f"{CONFIGS}/{name}.yaml").override({"train.seed": seed, **overrides})
    return fit(cfg, cora)


def test_same_seed_same_metrics(cora: Data) -> None:
    a = run("gcn", cora, 3, **{"train.epochs": 30})
    b = run("gcn", cora, 3, **{"train.epochs": 30})
    assert a.history == b.history
    assert (a.test_acc, a.test_macro_f1) == (b.test_acc, b.test_macro_f1)


def test_result_record(cora: Data) -> None:
    result = run("gcn", cora, 0, **{"train.epochs": 20})
    assert 1 <= result.best_epoch <= 20
    assert result.val_acc == max(result.history.val_acc)
    assert 0 < result.train_loop_time_s < result.total_train_time_s
    for split in ("train", "val", "test"):
        assert 0.0 <= getattr(result, f"{split}_acc") <= 1.0
        assert 0.0 <= getattr(result, f"{split}_macro_f1") <= 1.0


def test_test_mask_is_read_once(cora: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = 0
    data = cora.clone()
    test_mask = data.test_mask

    original = Data.__getattr__

    def counting_getattr(self, key):
        nonlocal reads
        if key == "test_mask" and self is data:
            reads += 1
        return original(self, key)

    monkeypatch.setattr(Data, "__getattr__", counting_getattr)
    fit(Config().override({"train.epochs": 5}), data)
    assert reads == 1
    assert torch.equal(data.test_mask, test_mask)


def test_non_finite_loss_names_the_epoch(cora: Data) -> None:
    data = cora.clone()
    data.x = data.x.clone()
    data.x[0, 0] = float("nan")
    with pytest.raises(TrainingError, match="epoch 1"):
        fit(Config().override({"train.epochs": 3, "data.sparse_features": "never"}), data)


GATES = {"mlp": 0.55, "gcn": 0.80, "sage": 0.78, "gat": 0.81, "appnp": 0.82, "sgc": 0.79,
         "lp": 0.70, "cs": 0.80}
#: Gated elsewhere with their own recipes: sampled mini-batches (tests/test_sampling.py), and
#: GCNII shortened to fit the suite (tests/test_baselines.py; its 10-seed public-split figure
#: is in docs/results.md).
GATED_ELSEWHERE = {"sage_sampling", "gcnii"}


def test_every_shipped_model_is_gated() -> None:
    """The gates follow the one list of shipped models (``configs/``)."""
    assert sorted(set(GATES) | GATED_ELSEWHERE) == shipped_models()



@pytest.mark.parametrize("name", list(GATES))
def test_accuracy_gate_cora(name: str, cora: Data, device: torch.device) -> None:
    results = [run(name, cora, seed, **{"train.device": device.type}) for seed in range(3)]
    accs = [r.test_acc for r in results]
    f1s = [r.test_macro_f1 for r in results]
    mean = statistics.fmean(accs)
    print(f"\n{name} on {device}: test_acc {mean:.4f} ± {statistics.stdev(accs):.4f}, "
          f"macro-F1 {statistics.fmean(f1s):.4f} ± {statistics.stdev(f1s):.4f} (3 seeds)")
    assert mean >= GATES[name]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_inference_matches_float32(cora: Data, dtype: str,
                                                  device: torch.device) -> None:
    """The inference_dtype switch runs evaluation under autocast; accuracy stays within a
    point of float32 for the same trained weights (the selection may differ slightly)."""
    if device.type == "cpu" and dtype == "float16":
        pytest.skip("float16 autocast is a GPU setting; CPU uses bfloat16")
    on = {"train.epochs": 50, "train.device": device.type}
    base = run("gcn", cora, 0, **on)
    half = run("gcn", cora, 0, **on, **{"train.inference_dtype": dtype})
    assert abs(base.test_acc - half.test_acc) <= 0.01


def test_inference_context_runs_dense_layers_in_bfloat16(cora: Data) -> None:
    from gnn.batching import inference_context
    from gnn.config import ModelConfig
    from gnn.models import build_model

    model = build_model(ModelConfig(name="mlp"), cora.num_features, 7).eval()
    with torch.inference_mode(), inference_context(torch.device("cpu"), "bfloat16"):
        out = model(cora.x, cora.edge_index)
        # sparse products stay float32 (CPU kernels lack bf16) and feed the dense layers
        gcn = build_model(ModelConfig(name="gcn"), cora.num_features, 7).eval()
        gcn_out = gcn(cora.x.to_sparse_csr(), cora.edge_index)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(gcn_out).all()


def test_fast_training_matches_reference_recipe_accuracy(cora: Data) -> None:
    """The speed-ups change no result: GCN trained through our fast path and through the plain
    PyG recipe reach the same test accuracy (mean of 5 seeds, within 0.5 points)."""
    from benchmarks.reference import reference_model, reference_train
    from gnn.training import set_seed

    ours, ref = [], []
    for seed in range(5):
        ours.append(run("gcn", cora, seed).test_acc)
        set_seed(seed)
        ref.append(reference_train(reference_model("gcn", cora.num_features, 16, 7), cora))
    print(f"\nGCN 5 seeds: ours {statistics.fmean(ours):.4f}, "
          f"reference {statistics.fmean(ref):.4f}")
    assert abs(statistics.fmean(ours) - statistics.fmean(ref)) <= 0.005


def test_eval_every_k_epochs_and_after_the_last(cora: Data) -> None:
    result = run("gcn", cora, 0, **{"train.epochs": 7, "train.eval_every": 3})
    assert result.history.epoch == [3, 6, 7]
    assert result.best_epoch in (3, 6, 7)
    assert len(result.epoch_times_s) == 7


def test_selection_on_validation_loss_with_patience(cora: Data) -> None:
    """``train.select: val_loss`` keeps the first epoch of the lowest validation loss, and
    ``train.patience`` stops the run that many evaluations later."""
    from gnn.batching import make_batching
    from gnn.training import prepare, train_loop

    cfg = load_config(f"{CONFIGS}/gcn.yaml").override(
        {"train.epochs": 400, "train.select": "val_loss", "train.patience": 15})
    run_ = prepare(cfg, cora, make_batching, None)
    val_losses: dict[int, float] = {}

    def record(epoch: int, loss: float, val_acc: float) -> None:
        logits = run_.feed.predict(run_.forward_model)
        val_losses[epoch] = float(torch.nn.functional.cross_entropy(
            logits[cora.val_mask], cora.y[cora.val_mask]))

    sel = train_loop(cfg, run_, record)
    lowest = min(val_losses, key=lambda e: (val_losses[e], e))
    assert sel.best_epoch == lowest
    assert max(val_losses) == lowest + 15 < 400, "patience did not stop the run"
    assert sel.best_val == sel.history.val_acc[sel.history.epoch.index(lowest)]
    run_.model.load_state_dict(sel.best_state)
    logits = run_.feed.predict(run_.forward_model)
    assert float(torch.nn.functional.cross_entropy(
        logits[cora.val_mask], cora.y[cora.val_mask])) == pytest.approx(val_losses[lowest])
    result = fit(cfg, cora)
    assert (result.best_epoch, result.epochs) == (lowest, lowest + 15)


def test_selection_rules_other_than_best_accuracy_train_members_one_by_one() -> None:
    from gnn.members import can_batch

    cfg = load_config(f"{CONFIGS}/gcn.yaml")
    assert can_batch(cfg)
    assert not can_batch(cfg.override({"train.select": "val_loss"}))
    assert not can_batch(cfg.override({"train.patience": 20}))


def test_final_metrics_equal_a_fresh_evaluation(cora: Data) -> None:
    """The final metrics may reuse the last evaluation when it used the selected weights;
    they must equal evaluating the returned model again."""
    from gnn.batching import make_batching
    from gnn.metrics import classification_metrics

    cfg = load_config(f"{CONFIGS}/gcn.yaml").override({"train.epochs": 15})
    result = fit(cfg, cora)
    logits = make_batching(cfg, cora, torch.device("cpu")).predict(result.trained)
    for split in ("train", "val", "test"):
        mask = cora[f"{split}_mask"]
        expected = getattr(result, f"{split}_acc")
        assert classification_metrics(logits[mask], cora.y[mask])["acc"] == expected


def test_compile_switch_trains(cora: Data, device: torch.device) -> None:
    """``train.compile: true`` runs (the graph caches stay eager) and learns the same task.
    Without dropout: compiled code draws other random numbers (on CUDA 20 epochs with dropout
    gave 0.690 compiled against 0.751 eager, a matter of which masks were drawn)."""
    on = {"train.epochs": 20, "train.device": device.type, "model.dropout": 0.0}
    result = run("gcn", cora, 0, **on, **{"train.compile": True})
    plain = run("gcn", cora, 0, **on)
    print(f"\ncompile on {device}: {result.total_train_time_s:.2f} s (compiling) against "
          f"{plain.total_train_time_s:.2f} s eager, 20 epochs")
    assert abs(result.test_acc - plain.test_acc) <= 0.01
