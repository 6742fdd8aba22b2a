"""``gnn scale`` and the memory meter it relies on."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import gnn.config
import gnn.scale
from gnn.cli import main
from gnn.config import Config
from gnn.memory import PeakWindow, StepPeaks, probe_for
from gnn.scale import SCALE_BATCH_SIZE, model_configs, plan_scale, predict_bytes, sweep
from gnn.synthetic import csbm_bytes
from gnn.training import fit

MIB = 1 << 20
SMALL = "data: {train_per_class: 10, num_val: 50, num_test: 50}\ntrain: {lr: 0.05}\n"


PROBES = [pytest.param("cpu", False, id="cpu-kernel"), pytest.param("cpu", True, id="cpu-polled"),
          pytest.param("cuda", False, id="cuda", marks=pytest.mark.skipif(
              not torch.cuda.is_available(), reason="CUDA not available"))]


@pytest.mark.parametrize(("device", "polled"), PROBES)
def test_peak_window_sees_a_short_lived_allocation(device: str, polled: bool) -> None:
    probe = probe_for(device, polled=polled)
    with PeakWindow(probe) as outer:
        with PeakWindow(probe) as inner:
            block = torch.ones(64 * MIB // 4, device=device)  # 64 MiB, touched
            if polled:
                import time

                time.sleep(0.05)  # the poller samples every millisecond
            del block
        with PeakWindow(probe) as small:
            torch.ones(MIB // 4, device=device)
    assert 60 * MIB < inner.peak < 80 * MIB
    assert small.peak < 16 * MIB  # the inner reset does not let the big block leak in
    assert outer.peak >= inner.peak - MIB  # ...nor hide it from the enclosing window


def _tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


def scale_config(name: str, base: Config) -> Config:
    return model_configs(base, [name])[name]


@pytest.mark.parametrize("model", ["gcn", "sage_sampling"])
def test_step_meter_measures_every_step(tmp_path: Path, model: str) -> None:
    from gnn.config import load_config
    from gnn.data import load_dataset

    base = load_config(_tiny_config(tmp_path)).override(
        {"data.name": "csbm", "data.num_nodes": 800, "train.epochs": 2})
    cfg = scale_config(model, base)
    meter = StepPeaks(torch.device("cpu"))
    fit(cfg, load_dataset(cfg.data), meter=meter)
    steps_per_epoch = 1 if model == "gcn" else -(-50 // cfg.sampler.batch_size)  # 5 x 10 seeds
    assert len(meter.peaks) == 2 * steps_per_epoch
    assert all(p >= 0 for p in meter.peaks)


def test_shipped_models_keep_their_sections_with_the_scale_batch_size() -> None:
    base = Config().override({"data.name": "csbm"})
    sage = scale_config("sage_sampling", base)
    assert sage.sampler.enabled and sage.sampler.batch_size == SCALE_BATCH_SIZE
    assert sage.model.hidden_channels == 64 and sage.sampler.fanout == [10, 10]
    assert scale_config("gcn", base).model.hidden_channels == 16
    assert sage.data == base.data and sage.train == base.train


def test_prediction_grows_linearly_and_full_batch_outgrows_sampling() -> None:
    base = Config().override({"data.name": "csbm"})
    gcn, sage = scale_config("gcn", base), scale_config("sage_sampling", base)
    for cfg in (gcn, sage):
        small = predict_bytes(cfg, 10**6, 10**7, 32, 5)
        large = predict_bytes(cfg, 10**7, 10**8, 32, 5)
        assert 9 < large / small <= 10.01  # linear in N and E, up to the constant batch term
    assert predict_bytes(gcn, 10**6, 10**7, 32, 5) > predict_bytes(sage, 10**6, 10**7, 32, 5)
    assert csbm_bytes(1000, 10.0, 32) == 1000 * (128 + 11) + 16 * 10_000


def test_scale_writes_report_and_skips_over_budget(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, config = tmp_path / "out", _tiny_config(tmp_path)
    sampled = "configs/sage_sampling.yaml"  # a model given as a config file (batch size 32)
    # a budget between the two models' predictions at 40,000 nodes: GCN is skipped there
    base = gnn.config.load_config(config).override({"data.name": "csbm",
                                                    "data.num_nodes": 40_000})
    graph = csbm_bytes(40_000, 10.0, 32)
    need = {name: graph + predict_bytes(cfg, 40_000, 400_000, 32, 5)
            for name, cfg in gnn.scale.model_configs(base, ["gcn", sampled]).items()}
    assert need["sage_sampling"] < need["gcn"]
    budget = (need["sage_sampling"] + need["gcn"]) / 2 / 2**30
    code = main(["scale", "--sizes", "400", "40000", "--models", "gcn", sampled,
                 "--epochs", "2", "--memory-budget", str(budget), "--out", str(out),
                 "--config", str(config), "--threads", "1"])
    assert code == 0
    rows = list(csv.DictReader((out / "scale.csv").open()))
    status = {(r["model"], int(r["num_nodes"])): r["status"] for r in rows}
    assert status == {("gcn", 400): "ok", ("sage_sampling", 400): "ok",
                      ("gcn", 40000): "over budget", ("sage_sampling", 40000): "ok"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(float(r["epoch_s"]) > 0 and 0 <= float(r["test_acc"]) <= 1 for r in ok)
    skipped = next(r for r in rows if r["status"] != "ok")
    assert skipped["epoch_s"] == "nan" and float(skipped["predicted_gib"]) > 0
    md = (out / "scale.md").read_text()
    assert "| gcn | 40,000 | 400,000 | over budget |" in md
    assert (out / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "over budget" in capsys.readouterr().out
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_scale_never_trains_what_is_over_budget(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gnn.scale, "fit", lambda *a, **k: pytest.fail("trained anyway"))
    plan = plan_scale([5000], ["gcn", "sage_sampling"], 1e-4, 1,
                      config=str(_tiny_config(tmp_path)))
    assert [r.status for r in sweep(plan)] == ["over budget (graph)"] * 2


@pytest.mark.parametrize(("args", "key"), [
    (["--sizes", "0"], "--sizes"),
    (["--sizes", "2.5"], "--sizes"),
    (["--models", "transformer"], "--models"),
    (["--memory-budget", "-1"], "--memory-budget"),
    (["--epochs", "0"], "train.epochs"),
    (["--sizes", "100"], "data.num_nodes"),  # too small for the default split
    (["--sizes", "nan"], "--sizes"),
    (["--sizes", "inf"], "--sizes"),
    (["--sizes", "1e12"], "--sizes"),
    (["--memory-budget", "nan"], "--memory-budget"),
    (["--threads", "1000000"], "--threads"),
    (["--threads", "0"], "--threads"),
])
def test_scale_bad_input_exits_2(args: list[str], key: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scale", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
