"""``gnn bench``: every output file, the CSV columns, valid PNGs, resume after an interruption,
and the report's rules on hand-made numbers."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest
import torch

from gnn import bench
from gnn.cli import main
from gnn.config import config_names, shipped_models
from gnn.report import compare_to_best, pareto_front, recommendation_markdown, summarize
from gnn.stats import welch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORT_FILES = ("summary.md", "summary.json", "recommendation.md", "accuracy_vs_latency.png",
                "learning_curves.png", "accuracy_per_split.png")
FIGURES = ("accuracy_vs_latency.png", "learning_curves.png", "accuracy_per_split.png")
SMALL = ["--quick", "--models", "mlp", "gcn", "--seeds", "2", "--epochs", "3", "--no-progress",
         "--members", "1"]


def jsonl_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def keys(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(r["name"], str(r["device"]), str(r["seed"])) for r in rows]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def quick(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One ``gnn bench --quick`` with the default models, shared by the checks below."""
    out = tmp_path_factory.mktemp("bench") / "quick"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["bench", "--quick", "--root", str(data_root), "--out", str(out)])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


def test_quick_writes_every_file(quick: tuple[Path, str, str]) -> None:
    out, stdout, stderr = quick
    models = shipped_models()
    runs = len(models) * bench.QUICK_SEEDS
    for name in ("runs.jsonl", "runs.csv", *REPORT_FILES):
        assert (out / name).stat().st_size > 0, name
    rows = jsonl_rows(out / "runs.jsonl")
    assert len(rows) == runs and len(set(keys(rows))) == runs
    # every evaluated epoch is logged, the last one included; a propagation-only model (no
    # training loop) logs its one evaluation as epoch 0
    for r in rows:
        history = r["history"]
        assert len(history["val_acc"]) == len(history["epoch"])
        assert history["epoch"][-1] == (bench.QUICK_EPOCHS if r["epochs"] else 0)
        every = r["config"]["train"]["eval_every"]
        assert len(history["epoch"]) == (-(-bench.QUICK_EPOCHS // every) if r["epochs"] else 1)
    assert {r["name"] for r in rows if not r["epochs"]} == {"lp"}
    # the progress bar went over the runs, the final table names every model
    assert f"{runs}/{runs}" in stderr
    table = stdout.splitlines()
    assert table[0].split()[:4] == ["model", "device", "runs", "test_acc"]
    assert [line.split()[0] for line in table[1:1 + len(models)]] == models


def test_quick_csv_columns_and_values(quick: tuple[Path, str, str]) -> None:
    out, _, _ = quick
    columns, rows = csv_rows(out / "runs.csv")
    assert tuple(columns) == bench.CSV_COLUMNS
    assert keys(rows) == keys(jsonl_rows(out / "runs.jsonl"))
    for row in rows:
        assert 0.0 <= float(row["test_acc"]) <= 1.0
        assert float(row["forward_ms_median"]) > 0
        assert float(row["peak_memory_mb"]) >= 0
        assert int(row["latency_iters"]) == bench.QUICK_LATENCY.iters
        assert row["torch"] and row["torch_geometric"] and row["python"]
        assert json.loads(row["config_json"])["train"]["seed"] == int(row["seed"])


def test_quick_plots_are_valid_pngs(quick: tuple[Path, str, str]) -> None:
    out, _, _ = quick
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


def test_quick_markdown_reports(quick: tuple[Path, str, str]) -> None:
    out, _, _ = quick
    summary = (out / "summary.md").read_text()
    for model in shipped_models():
        assert f"| {model} | cpu | {bench.QUICK_SEEDS} |" in summary
        assert f"| cpu | {model} | 1 | " in summary  # ranked on the one split
    # every row is on split 0 with seeds 0 and 1: each comparison is paired on both runs
    assert summary.count(f"| Wilcoxon (paired) | {bench.QUICK_SEEDS} |") == \
        len(shipped_models()) - 1
    assert "one split only: the between-split variance is undefined" in summary
    assert "Pareto front" in summary and "Rank stability over splits" in summary
    recommendation = (out / "recommendation.md").read_text()
    assert "**Pick " in recommendation and "Fastest within one std" in recommendation


def test_quick_summary_json(quick: tuple[Path, str, str]) -> None:
    """summary.json follows its schema and holds the runs' figures."""
    import jsonschema

    out, _, _ = quick
    record = json.loads((out / "summary.json").read_text())
    schema = json.loads((Path(__file__).parents[1] / "docs" / "summary.schema.json").read_text())
    jsonschema.validate(record, schema)
    rows = jsonl_rows(out / "runs.jsonl")
    assert record["splits"] == [0] and record["seeds"] == list(range(bench.QUICK_SEEDS))
    assert [m["name"] for m in record["models"]] == shipped_models()
    for model in record["models"]:
        accs = [r["test_acc"] for r in rows if r["name"] == model["name"]]
        assert model["test_acc"]["mean"] == pytest.approx(sum(accs) / len(accs))
        assert model["test_acc"]["std_between_splits"] is None
    assert all(c["test"] == "wilcoxon" and c["pairs"] == bench.QUICK_SEEDS
               for c in record["comparisons"])


def bench_takes_splits() -> bool:
    """Whether ``gnn bench`` has ``--splits`` (random splits) in this tree."""
    from gnn.cli import build_parser
    from gnn.errors import UsageError

    try:
        build_parser().parse_args(["bench", "--splits", "2", "--split", "random"])
    except UsageError:
        return False
    return True


@pytest.mark.skipif(not bench_takes_splits(), reason="gnn bench has no --splits here")
def test_quick_bench_over_splits_reports_split_statistics(data_root: Path,
                                                          tmp_path: Path) -> None:
    """Two random splits x two seeds: the between-split part, the pairing on (split, seed)
    and the ranks over both splits reach summary.json and summary.md."""
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--models", "mlp", "gcn", "--splits", "2", "--split",
                 "random", "--seeds", "2", "--no-progress", "--root", str(data_root),
                 "--out", str(out)]) == 0
    record = json.loads((out / "summary.json").read_text())
    assert record["splits"] == [0, 1]
    for model in record["models"]:
        assert model["test_acc"]["splits"] == 2 and model["test_acc"]["notes"] == []
        assert model["test_acc"]["std_between_splits"] is not None
    (comparison,) = record["comparisons"]
    assert comparison["test"] == "wilcoxon" and comparison["pairs"] == 4
    assert all(m["splits"] == 2 for m in record["ranks"][0]["models"])
    summary = (out / "summary.md").read_text()
    assert "2 splits (0, 1) × 2 seeds (0, 1)" in summary
    assert (out / "accuracy_per_split.png").read_bytes()[:8] == PNG_SIGNATURE


class Interrupt:
    """Wraps ``bench.run_one``: counts the runs, and raises Ctrl-C on run ``at`` (1-based)."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.calls, self.real = at, 0, bench.run_one

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def test_resume_after_interruption_has_no_duplicates(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    argv = ["bench", *SMALL, "--root", str(data_root), "--out", str(out)]
    monkeypatch.setattr(bench, "run_one", Interrupt(at=3))
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gnn: error: interrupted (SIGINT); the "
                                               "finished runs are in"), err
    assert "--resume" in err[0]
    assert len(jsonl_rows(out / "runs.jsonl")) == 2 and len(csv_rows(out / "runs.csv")[1]) == 2
    assert not (out / "summary.md").exists()
    # a writer killed in the middle of a row leaves a cut last line in both files
    with (out / "runs.jsonl").open("a") as handle:
        handle.write('{"name": "gcn", "seed": 1, "dev')
    with (out / "runs.csv").open("a") as handle:
        handle.write("gcn,gcn,Cora,cpu,1,Fal")

    assert main(argv) == 2  # not without --resume
    assert "--resume" in one_line_error(capsys)

    counter = Interrupt()
    monkeypatch.setattr(bench, "run_one", counter)
    assert main([*argv, "--resume"]) == 0
    assert counter.calls == 2  # only the missing runs
    expected = [("mlp", "cpu", "0"), ("mlp", "cpu", "1"), ("gcn", "cpu", "0"),
                ("gcn", "cpu", "1")]
    assert keys(jsonl_rows(out / "runs.jsonl")) == expected
    columns, rows = csv_rows(out / "runs.csv")
    assert tuple(columns) == bench.CSV_COLUMNS and keys(rows) == expected
    assert all((out / name).exists() for name in REPORT_FILES)
    assert "| gcn | cpu | 2 |" in (out / "summary.md").read_text()

    # resuming a finished bench trains nothing; other settings are refused
    assert main([*argv, "--resume"]) == 0
    assert counter.calls == 2
    capsys.readouterr()
    assert main([*argv, "--resume", "--epochs", "4"]) == 2
    assert "other settings" in one_line_error(capsys)


@pytest.mark.parametrize(("args", "message"), [
    (["--models", "gcnn"], "did you mean 'gcn'"),
    (["--models", "sage_sampling_nope"], "no config"),
    (["--seeds", "0"], "--seeds"),
    (["--epochs", "0"], "train.epochs"),
    (["--memory-budget-mb", "-1"], "--memory-budget-mb"),
    (["--devices", "tpu"], "--devices"),
    (["--workers", "0"], "--workers: must be 1..256, got 0"),
])
def test_bad_bench_input_exits_2_before_writing(args: list[str], message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    assert main(["bench", "--out", str(out), *args]) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


def test_workers_give_the_rows_of_one_process(data_root: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two worker processes (one thread each, as the tests run) train the runs of one process,
    bit for bit: batched members on random splits and runs alone alike. Each row says how
    many processes trained side by side, and the report says what that does to its times."""
    argv = ["bench", "--quick", "--models", "mlp", "lp", "--split", "random", "--splits", "2",
            "--seeds", "2", "--members", "2", "--root", str(data_root), "--no-progress"]
    here: list[int] = []  # groups trained in this process (a worker's calls stay in it)
    run_group = bench._run_group
    monkeypatch.setattr(bench, "_run_group", lambda *a: here.append(1) or run_group(*a))
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    assert len(here) == 6  # 2 batched runs of 2 mlp members, 4 label propagations
    assert main([*argv, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert len(here) == 6
    one, two = (jsonl_rows(tmp_path / name / bench.JSONL) for name in ("one", "two"))
    by_key = {bench.row_key(row): row for row in one}
    assert sorted(by_key) == sorted(bench.row_key(row) for row in two) and len(two) == 8
    for row in two:
        alone = by_key[bench.row_key(row)]
        for field in ("best_epoch", "val_acc", "test_acc", "members", "history"):
            assert row[field] == alone[field], field
        assert (row["workers"], row["threads"], alone["workers"]) == (2, 1, 1)
    assert len({row["test_acc"] for row in two if row["name"] == "mlp"}) > 1
    note = "Trained in 2 worker processes at once"
    assert note in (tmp_path / "two" / "summary.md").read_text()
    assert note not in (tmp_path / "one" / "summary.md").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_bench_workers_on_a_gpu_stay_in_one_process(data_root: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--models", "gcn", "--seeds", "2", "--devices", "cuda",
                 "--root", str(data_root), "--no-progress", "--out", str(tmp_path / "b"),
                 "--workers", "2"]) == 0
    assert "gnn: warning: --workers: runs on cuda stay in this process" in \
        capsys.readouterr().err
    assert {row["workers"] for row in jsonl_rows(tmp_path / "b" / bench.JSONL)} == {1}


def test_default_models_are_the_configs_present(tmp_path: Path) -> None:
    for name in ("gat", "mlp", "custom"):
        (tmp_path / f"{name}.yaml").write_text("model:\n  name: mlp\n")
    assert config_names(tmp_path) == ["custom", "gat", "mlp"]


# --------------------------------------------------------------------------------------------
# The report's rules, on hand-made rows (no training)


def fake_rows(name: str, accs: list[float], ms: float, mb: float = 10.0,
              sampled: bool = False) -> list[dict[str, Any]]:
    return [{"name": name, "device": "cpu", "dataset": "Cora", "seed": seed, "sampled": sampled,
             "num_params": 100, "test_acc": acc, "test_macro_f1": acc,
             "forward_ms_median": ms, "peak_memory_mb": mb, "total_train_time_s": 1.0,
             "train_loop_time_s": 0.5, "history": {"train_loss": [1.0, 0.5],
                                                   "val_acc": [0.5, acc]}}
            for seed, acc in enumerate(accs)]


def test_pick_is_fastest_within_one_std_of_best() -> None:
    """Six seeds: enough for the paired Wilcoxon test to reach p < 0.05 (2 / 2**6)."""
    rows = (fake_rows("slow_best", [0.82, 0.84, 0.83, 0.835, 0.825, 0.83], ms=10.0)
            + fake_rows("fast_close", [0.825, 0.82, 0.823, 0.83, 0.826, 0.824], ms=1.0)
            + fake_rows("fast_bad", [0.70, 0.71, 0.69, 0.70, 0.72, 0.71], ms=0.5))
    summaries = summarize(rows)
    text = recommendation_markdown(summaries)
    assert "**Pick fast_close**" in text and "10.0x faster" in text
    assert "Most accurate: **slow_best**" in text
    assert "tighter latency budget: fast_bad is 2.0x faster" in text and "a real loss" in text
    front = [s.name for s in pareto_front(summaries)]
    assert front == ["fast_bad", "fast_close", "slow_best"]
    p_bad = {c.other.name: c.p for c in compare_to_best(summaries)}["fast_bad"]
    assert p_bad < 0.05


def test_pick_is_best_when_nothing_close_is_faster() -> None:
    rows = fake_rows("a", [0.80, 0.81], ms=1.0) + fake_rows("b", [0.70, 0.72], ms=0.1)
    text = recommendation_markdown(summarize(rows))
    assert "**Pick a**" in text


def test_memory_budget_and_sampling_only() -> None:
    rows = (fake_rows("full", [0.83, 0.84], ms=1.0, mb=500.0)
            + fake_rows("sampled", [0.80, 0.81], ms=5.0, mb=50.0, sampled=True))
    text = recommendation_markdown(summarize(rows), budget=100.0)
    assert "Only neighbour-sampled training fits in 100 MB: sampled" in text
    assert "**Pick sampled**" in text and "full (500.0 MB)" in text
    text = recommendation_markdown(summarize(rows), budget=10.0)
    assert "No model fits in 10 MB" in text and "**Pick full**" in text


def test_welch_matches_scipy_and_is_nan_when_undefined() -> None:
    from scipy.stats import ttest_ind

    a, b = [0.81, 0.83, 0.82], [0.78, 0.80, 0.75, 0.77]
    assert welch(a, b)[1] == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)
    assert math.isnan(welch([0.8], b)[1])


BAD_ROWS = {
    "missing test_acc": lambda row: row.pop("test_acc"),
    "test_acc high": lambda row: row.update(test_acc="high"),
    "test_acc NaN": lambda row: row.update(test_acc=float("nan")),
    "no history": lambda row: row.pop("history"),
}


@pytest.fixture(scope="module")
def two_runs(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "bench"
    argv = ["bench", "--quick", "--models", "mlp", "--seeds", "2", "--epochs", "2",
            "--no-progress", "--root", str(data_root), "--out", str(out)]
    assert main(argv) == 0
    return out


@pytest.mark.parametrize("damage", [*BAD_ROWS, "deep JSON"])
def test_resume_retrains_a_damaged_row(two_runs: Path, tmp_path: Path, damage: str,
                                       data_root: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A hand-edited or foreign line in runs.jsonl is dropped and its run trained again; the
    report is built from sound rows only."""
    out = tmp_path / "bench"
    shutil.copytree(two_runs, out)
    rows = jsonl_rows(out / "runs.jsonl")
    if damage == "deep JSON":
        lines = ["[" * 100_000 + "]" * 100_000, json.dumps(rows[1])]
    else:
        BAD_ROWS[damage](rows[0])
        lines = [json.dumps(r) for r in rows]
    (out / "runs.jsonl").write_text("\n".join(lines) + "\n")
    counter = Interrupt()
    monkeypatch.setattr(bench, "run_one", counter)
    assert main(["bench", "--quick", "--models", "mlp", "--seeds", "2", "--epochs", "2",
                 "--no-progress", "--root", str(data_root), "--out", str(out),
                 "--resume"]) == 0
    assert counter.calls == 1
    assert "1 cut or repeated lines dropped" in capsys.readouterr().out
    assert sorted(keys(jsonl_rows(out / "runs.jsonl"))) == [("mlp", "cpu", "0"),
                                                             ("mlp", "cpu", "1")]


def test_resume_refuses_a_runs_file_that_is_a_folder(
        tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench"
    (out / "runs.jsonl").mkdir(parents=True)
    assert main(["bench", *SMALL, "--root", str(data_root), "--out", str(out),
                 "--resume"]) == 2
    assert "runs.jsonl is not a regular file" in one_line_error(capsys)


def test_report_is_written_completely_or_not_at_all(
        two_runs: Path, tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills while the report is written: one line, exit 1, and no report file is
    replaced or left half-written (the runs stay, for --resume)."""
    import errno

    import gnn.files

    out = tmp_path / "bench"
    shutil.copytree(two_runs, out)
    before = {name: (out / name).read_bytes() for name in REPORT_FILES}
    real, written = gnn.files.os.fsync, []

    def fill_up(fd: int) -> None:
        written.append(fd)
        if len(written) > 4:  # runs.jsonl and runs.csv rewritten, then two report files
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(gnn.files.os, "fsync", fill_up)
    assert main(["bench", "--quick", "--models", "mlp", "--seeds", "2", "--epochs", "2",
                 "--no-progress", "--root", str(data_root), "--out", str(out),
                 "--resume"]) == 1
    assert "no space left on the device" in one_line_error(capsys)
    assert {name: (out / name).read_bytes() for name in REPORT_FILES} == before
    assert not list(out.glob(".*.tmp"))
