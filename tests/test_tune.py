"""``gnn tune`` in one process: search spaces, the budget, resuming, outputs, and the proof
that no trial reads a test mask. Several processes sharing a study: test_tune_workers.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch_geometric.data import Data

from gnn.cli import main
from gnn.config import Config, DataConfig, load_config, shipped_configs_dir, shipped_models
from gnn.errors import ConfigError
from gnn.members import fit_many
from gnn.synthetic import csbm
from gnn.training import fit

optuna = pytest.importorskip("optuna")

from gnn import tune  # noqa: E402 - after the skip: gnn.tune's functions import Optuna

#: A graph small enough that a trial takes a fraction of a second.
TINY = {"model": {"name": "gcn", "hidden_channels": 8},
        "data": {"name": "csbm", "num_nodes": 300, "num_classes": 3, "num_features": 16,
                 "train_per_class": 10, "num_val": 60, "num_test": 100, "avg_degree": 5.0},
        "train": {"epochs": 5}}
TINY_SPACE = {"train.lr": {"type": "float", "low": 1.0e-3, "high": 0.1, "log": True},
              "model.dropout": {"type": "float", "low": 0.0, "high": 0.8},
              "model.hidden_channels": {"type": "int", "low": 4, "high": 32, "log": True}}


def write_tiny(folder: Path, models: tuple[str, ...] = ("gcn",)) -> Path:
    """A folder of configs (and their search spaces) on the tiny CSBM graph."""
    (folder / "search").mkdir(parents=True, exist_ok=True)
    for name in models:
        cfg = {**TINY, "model": {**TINY["model"], "name": name}}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        (folder / "search" / f"{name}.yaml").write_text(yaml.safe_dump(TINY_SPACE))
    return folder


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def study_trials(url: str, name: str = "gcn") -> list[Any]:
    storage = tune.open_storage(tune.StorageSettings(url))
    return optuna.load_study(study_name=name, storage=storage).get_trials()


# --------------------------------------------------------------------------------------------
# Search spaces


@pytest.mark.parametrize("name", shipped_models())
def test_every_shipped_model_has_a_search_space_holding_its_config(name: str) -> None:
    base = load_config(shipped_configs_dir() / f"{name}.yaml")
    space = tune.load_search_space(shipped_configs_dir() / "search" / f"{name}.yaml", base)
    assert len(space.params) >= 2
    # the shipped values lie inside, so a study's first trial is the shipped config itself
    assert set(tune.base_params(space, base)) == {p.key for p in space.params}


BAD_SPACES = [
    ("[1, 2]", "a search space is a mapping of config keys"),
    ("{}", "a search space is a mapping of config keys"),
    ("train.lr: [1, 2]", "train.lr: expected a mapping with type/low/high or choices"),
    ("lr: {type: float, low: 0.1, high: 1}", "'lr': expected a dotted config key"),
    ("train.lrr: {type: float, low: 0.01, high: 0.1}",
     "train.lrr: unknown key (did you mean 'lr'?)"),
    ("train.seed: {type: int, low: 0, high: 9}", "train.seed: set by gnn tune"),
    ("train.lr: {type: float, low: 0.1, high: 0.01}", "train.lr: low must be < high"),
    ("train.lr: {type: float, low: 0.0, high: 0.1, log: true}", "a log scale needs low > 0"),
    ("train.lr: {type: double, low: 0.01, high: 0.1}", "train.lr.type: must be int or float"),
    ("train.lr: {type: float, low: x, high: 0.1}", "train.lr.low: expected a finite float"),
    ("model.num_layers: {type: int, low: 1.5, high: 3}",
     "model.num_layers.low: expected a finite int"),
    ("train.lr: {type: float, low: 0.01, high: 0.1, logg: true}",
     "train.lr.logg: unknown key (did you mean 'log'?)"),
    ("train.lr: {type: float, low: 0.01, high: 0.1, log: true, step: 0.01}",
     "train.lr.step: expected a float in (0, high - low] and no log scale"),
    ("model.dropout: {type: float, low: 0.0, high: 1.0}", "model.dropout: must be < 1.0"),
    ("model.hidden_channels: {type: float, low: 8, high: 64}",
     "model.hidden_channels: expected an integer key's range, use type: int"),
    ("model.hidden_channels: {type: float, low: 8.5, high: 64}",
     "model.hidden_channels: expected an integer, got 8.5"),
    ("model.num_layers: {choices: []}", "model.num_layers.choices: expected a non-empty list"),
    ("model.num_layers: {choices: [2, 2]}", "a choice is repeated"),
    ("sampler.fanout: {choices: [[5, 5]]}", "each choice must be a number, string, boolean"),
    ("model.num_layers: {choices: [2, 3], low: 1}", "model.num_layers.low: not with choices"),
    ("model.name: {choices: [gcn, 7]}", "model.name: expected a string, got 7"),
    ("model: [1, 2", "malformed YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPACES, ids=[m for _, m in BAD_SPACES])
def test_a_bad_search_space_is_one_line_naming_file_and_key(tmp_path: Path, text: str,
                                                             message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        tune.load_search_space(path, Config())
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(path) in str(caught.value)


def test_suggestions_lie_in_the_space_and_apply_to_the_config(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**TINY_SPACE, "model.num_layers": {"choices": [1, 2, 3]},
                                    "train.epochs": {"type": "int", "low": 10, "high": 50,
                                                     "step": 20}}))
    space = tune.load_search_space(path, Config())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        params = {p.key: p.suggest(trial) for p in space.params}
        assert all(p.contains(params[p.key]) for p in space.params)
        assert params["train.epochs"] in (10, 30, 50)
        cfg = Config().override(params)
        assert (cfg.train.lr, cfg.model.num_layers) == (params["train.lr"],
                                                        params["model.num_layers"])
        study.tell(trial, 0.0)


def test_each_trial_draws_from_its_own_seeded_stream() -> None:
    """Workers that share a study and a seed propose different parameters (trial numbers
    differ), and the same trial number proposes the same ones (reproducible)."""
    def first_two(seed: int) -> list[float]:
        study = optuna.create_study(sampler=tune.trial_seeded_sampler(seed))
        trials = [study.ask() for _ in range(2)]
        return [t.suggest_float("x", 0.0, 1.0) for t in trials]

    a, b = first_two(0), first_two(0)
    assert a == b and a[0] != a[1]
    assert first_two(1) != a


# --------------------------------------------------------------------------------------------
# The budget


def test_budget_counts_the_earliest_alive_trials() -> None:
    """Complete, pruned, running and queued trials hold places in the budget in trial-number
    order; failed ones free theirs."""
    study = optuna.create_study()
    states = ["COMPLETE", "FAIL", "PRUNED", "RUNNING", "RUNNING", "WAITING"]
    for state in states:
        if state == "WAITING":
            study.enqueue_trial({})
            continue
        trial = study.ask()
        if state != "RUNNING":
            study.tell(trial, 0.5 if state == "COMPLETE" else None,
                       state=getattr(optuna.trial.TrialState, state))
    assert [tune.within_budget(study, n, 3) for n in range(6)] == [True, True, True, True,
                                                                   False, False]
    assert tune.within_budget(study, 5, 5)
    assert not tune.within_budget(study, 5, 4)


def test_a_configuration_that_cannot_train_is_pruned_and_counts(tmp_path: Path) -> None:
    """Keys valid one by one may clash together (a sampled model needs a fanout per layer):
    that trial is pruned with its reason and uses up its place in the budget."""
    base = Config.from_dict(TINY).override({"model.name": "sage", "sampler.fanout": [3, 3]})
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"model.num_layers": {"choices": [2, 1]},
                                    "sampler.enabled": {"choices": [False, True]}}))
    job = tune.TuneJob("sage", base, tune.load_search_space(path, base), trials=2)
    settings = tune.StorageSettings(tune.default_storage(tmp_path))
    study = tune.open_study(job, tune.open_storage(settings))
    study.enqueue_trial({"model.num_layers": 1, "sampler.enabled": True})
    assert tune.run_worker(study, job, csbm(DataConfig(**TINY["data"])), settings) == 2
    first, clash = study.get_trials()
    assert (first.state.name, clash.state.name) == ("COMPLETE", "PRUNED")
    assert clash.user_attrs["note"].startswith("cannot train: ConfigError: sampler.fanout: "
                                               "needs one entry per layer")


def test_resuming_never_exceeds_the_budget_and_can_extend_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configs, out = write_tiny(tmp_path / "configs"), tmp_path / "out"
    argv = ["tune", "--models", "gcn", "--configs", str(configs), "--out", str(out)]
    assert main([*argv, "--trials", "3"]) == 0
    assert main([*argv, "--trials", "3"]) == 0  # resumed: nothing left to run
    assert "3/3 trials finished (3 complete, 0 pruned, 0 failed; 0 here)" in \
        capsys.readouterr().out
    assert main([*argv, "--trials", "4"]) == 0
    assert "4/4 trials finished (4 complete, 0 pruned, 0 failed; 1 here)" in \
        capsys.readouterr().out
    trials = study_trials(tune.default_storage(out))
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]


def test_models_tuned_one_call_at_a_time_all_stay_recorded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``best/tuning.json`` (what the bench report says was tuned) keeps the models of earlier
    calls into the same folder; tuning.md and trials.csv describe the call that wrote them."""
    configs, out = write_tiny(tmp_path / "configs", ("gcn", "mlp")), tmp_path / "out"
    for name in ("gcn", "mlp"):
        assert main(["tune", "--models", name, "--configs", str(configs), "--out", str(out),
                     "--trials", "2"]) == 0
    record = json.loads((out / "best" / "tuning.json").read_text())
    assert sorted(record["models"]) == ["gcn", "mlp"]
    assert sorted(p.name for p in (out / "best").glob("*.yaml")) == ["gcn.yaml", "mlp.yaml"]
    assert {r["model"] for r in csv.DictReader((out / "trials.csv").open())} == {"mlp"}


def test_a_trial_trains_every_split_and_seed(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    configs, out = write_tiny(tmp_path / "configs"), tmp_path / "out"
    assert main(["tune", "--models", "gcn", "--configs", str(configs), "--out", str(out),
                 "--trials", "2", "--split", "random", "--splits", "3", "--seeds", "2"]) == 0
    trials = study_trials(tune.default_storage(out))
    assert [t.user_attrs["fits"] for t in trials] == [6, 6]
    assert "1 split(s) x" not in (out / "tuning.md").read_text()
    assert "3 split(s) x 2 seed(s)" in (out / "tuning.md").read_text()


def test_a_study_resumed_with_other_settings_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configs, out = write_tiny(tmp_path / "configs"), tmp_path / "out"
    argv = ["tune", "--models", "gcn", "--configs", str(configs), "--out", str(out),
            "--trials", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--seeds", "3"]) == 2
    assert "started with another setup (seeds: 2 there, 3 here)" in one_line_error(capsys)
    assert main([*argv, "--epochs", "7"]) == 2
    assert "(base.train.epochs: 5 there, 7 here)" in one_line_error(capsys)


# --------------------------------------------------------------------------------------------
# Outputs


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``gnn tune`` of two models with a budget of 4 trials each."""
    folder = tmp_path_factory.mktemp("tuned")
    configs, out = write_tiny(folder / "configs", ("gcn", "mlp")), folder / "out"
    assert main(["tune", "--models", "gcn", "mlp", "--trials", "4", "--configs", str(configs),
                 "--out", str(out)]) == 0
    return out


def test_best_configs_are_complete_configs_of_the_best_trials(tuned: Path) -> None:
    record = json.loads((tuned / "best" / "tuning.json").read_text())
    rows = list(csv.DictReader((tuned / "trials.csv").open()))
    for name in ("gcn", "mlp"):
        mine = [r for r in rows if r["model"] == name]
        assert len(mine) == 4 and {r["state"] for r in mine} == {"COMPLETE"}
        best = max(mine, key=lambda r: float(r["val_acc"]))
        cfg = load_config(tuned / "best" / f"{name}.yaml")
        assert cfg.model.name == name and cfg.data.name == "csbm"
        assert cfg.train.lr == pytest.approx(float(best["train.lr"]))
        assert cfg.model.hidden_channels == int(best["model.hidden_channels"])
        assert record["models"][name]["best_trial"] == int(best["trial"])
        assert record["models"][name]["trials"] == 4
    assert mine[0]["note"] == "the base config's values"
    assert float(mine[0]["train.lr"]) == 0.01  # the config's own lr, not the space's


def test_figures_and_report(tuned: Path) -> None:
    for name in ("gcn-history.png", "gcn-importances.png", "mlp-history.png"):
        assert (tuned / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tuned / "tuning.md").read_text()
    assert "Tuned configs: gcn, mlp. Budget: 4 finished" in text
    assert "| gcn | 4/4 | 4 | 0 | 0 |" in text


def test_gnn_train_and_bench_accept_the_best_configs(
        tuned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", str(tuned / "best" / "gcn.yaml"), "--epochs", "2"]) == 0
    out = tmp_path / "bench"
    assert main(["bench", "--configs", str(tuned / "best"), "--quick", "--no-progress",
                 "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert ("Configs tuned by `gnn tune` on validation accuracy only: gcn, mlp; the same "
            "budget of 4 trials each, 1 split(s) x 2 seed(s) per trial.") in summary


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(("extra", "message"), [
    (["--trials", "0"], "--trials: must be 1..100000, got 0"),
    (["--trials", "2", "--splits", "2"],
     "--splits: gcn uses data.split: public, which has one split; pass --split random"),
    (["--trials", "2", "--seeds", "0"], "--seeds: must be 1..10000, got 0"),
    (["--trials", "2", "--seed", "-1"], "--seed: must be 0..4294967295, got -1"),
    (["--trials", "2", "--out", "a\x00b"], "--out: the path 'a\\x00b' contains a NUL byte"),
    (["--trials", "2", "--models", "gnc"], "--models: no config 'gnc'"),
    (["--trials", "2", "--heartbeat", "0"], "--heartbeat/--grace: must be >= 1 second"),
    (["--trials", "2", "--retries", "-1"], "--retries: must be 0..1000, got -1"),
    (["--trials", "2", "--storage", "nonsense"], "--storage: not a database URL: 'nonsense'"),
    (["--trials", "2", "--storage", "postgresql://nobody@127.0.0.1:1/db"],
     "--storage: cannot open postgresql://nobody@127.0.0.1:1/db: connection failed"),
    (["--trials", "2", "--storage", "postgresql://u:secret@127.0.0.1:1/db"],
     "--storage: cannot open postgresql://u:***@127.0.0.1:1/db"),
])
def test_bad_input_is_one_line_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
        message: str) -> None:
    configs, out = write_tiny(tmp_path / "configs"), tmp_path / "out"
    assert main(["tune", "--models", "gcn", "--configs", str(configs), "--out", str(out),
                 *extra]) == 2
    err = one_line_error(capsys)
    assert message in err and "secret" not in err
    assert not out.exists()


def test_a_model_without_search_space_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configs = write_tiny(tmp_path / "configs")
    (configs / "search" / "gcn.yaml").unlink()
    assert main(["tune", "--models", "gcn", "--configs", str(configs), "--trials", "1",
                 "--out", str(tmp_path / "out")]) == 2
    assert "--models: no search space for 'gcn'" in one_line_error(capsys)


# --------------------------------------------------------------------------------------------
# Test masks


class MaskSpy(torch.Tensor):
    """A boolean mask that records every torch operation on it (or on anything computed
    from it): indexing, copying, moving, reducing, comparing."""

    touched: list[str] = []

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        MaskSpy.touched.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.fixture()
def spied_graph() -> Data:
    data = csbm(DataConfig(**TINY["data"]))
    data.test_mask = data.test_mask.as_subclass(MaskSpy)
    MaskSpy.touched.clear()
    return data


TUNED_KINDS = {  # batched members, one fit after another, sampled mini-batches, no training
    "gcn": {},
    "lp": {"model.name": "lp"},
    "gat": {"model.name": "gat", "model.heads": 2},
    "gcnii": {"model.name": "gcnii"},
    "sage_sampling": {"model.name": "sage", "sampler.enabled": True, "sampler.fanout": [3, 3],
                      "sampler.batch_size": 32, "sampler.backend": "torch"},
}


@pytest.mark.parametrize("kind", list(TUNED_KINDS))
def test_no_trial_reads_the_test_mask(kind: str, spied_graph: Data, tmp_path: Path) -> None:
    base = Config.from_dict(TINY).override(TUNED_KINDS[kind])
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE))
    job = tune.TuneJob(kind, base, tune.load_search_space(path, base), trials=3)
    settings = tune.StorageSettings(tune.default_storage(tmp_path))
    study = tune.open_study(job, tune.open_storage(settings))
    assert tune.run_worker(study, job, spied_graph, settings) == 3
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 3
    assert MaskSpy.touched == []


@pytest.mark.parametrize("kind", ["gcn", "gat"])
def test_the_spy_sees_a_fit_that_reads_the_test_mask(kind: str, spied_graph: Data) -> None:
    """The instrument is not blind: training as ``gnn train`` does reads the test mask (for
    the final test accuracy), batched or not."""
    cfg = Config.from_dict(TINY).override(TUNED_KINDS[kind])
    fit_many(cfg, [0, 1], spied_graph) if kind == "gcn" else fit(cfg, spied_graph)
    assert MaskSpy.touched
