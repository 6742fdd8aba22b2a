"""The statistics in the bench report, on hand-made rows (no training): ``summary.json`` follows
its schema and holds the figures of ``summary.md``, every degenerate case gives a one-line
note in every file, the per-split figure is drawn, and the recommendation uses the paired
comparison."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from gnn import stats
from gnn.plots import accuracy_per_split_png, bench_figures
from gnn.report import (
    SPLITS_PNG,
    SUMMARY_JSON,
    SUMMARY_MD,
    bench_documents,
    compare_to_best,
    recommendation_markdown,
    summarize,
    summary_record,
)

#: the JSON schema validator: a test dependency, absent on machines that run the GPU checks
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "summary.schema.json").read_text())
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
META = {"command": "gnn bench --splits 3", "date": "2026-01-01 00:00 UTC", "cpu": "test"}


def row(name: str, split: int, seed: int, acc: float, ms: float = 1.0) -> dict[str, Any]:
    """One row as ``runs.jsonl`` holds it, with the ``split`` key every row carries."""
    return {"name": name, "device": "cpu", "dataset": "Cora", "split": split, "seed": seed,
            "sampled": False, "num_params": 100, "test_acc": acc, "val_acc": acc,
            "test_macro_f1": acc, "forward_ms_median": ms, "peak_memory_mb": 10.0,
            "total_train_time_s": 1.0, "train_loop_time_s": 0.5, "memory_measure": "rss_growth",
            "history": {"train_loss": [1.0, 0.5], "val_acc": [0.5, acc]}}


def grid(name: str, accs: list[list[float]], ms: float = 1.0) -> list[dict[str, Any]]:
    """``accs[split][seed]``."""
    return [row(name, split, seed, acc, ms) for split, seeds in enumerate(accs)
            for seed, acc in enumerate(seeds)]


def strict_json(text: str) -> Any:
    """Parse, refusing the NaN and Infinity that strict JSON readers refuse."""
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def report(rows: list[dict[str, Any]]) -> tuple[str, dict[str, Any], str]:
    """summary.md, summary.json (parsed, checked against the schema) and recommendation.md."""
    files = bench_documents(summarize(rows), META)
    record = strict_json(files[SUMMARY_JSON].decode())
    jsonschema.validate(record, SCHEMA)
    return files[SUMMARY_MD].decode(), record, files["recommendation.md"].decode()


# Three models, three splits of three seeds; the split moves every model by far more than the
# gap between gcn and appnp, which is the same sign on every run.
SPLIT_EFFECT = [0.0, -0.06, 0.05]
ROWS = (grid("gcn", [[0.80 + e + d for d in (0.0, 0.004, -0.003)] for e in SPLIT_EFFECT], 2.0)
        + grid("appnp", [[0.81 + e + d for d in (0.001, 0.006, 0.0)] for e in SPLIT_EFFECT],
               5.0)
        + grid("mlp", [[0.60 + e + d for d in (0.01, 0.0, 0.02)] for e in SPLIT_EFFECT], 0.5))


def test_summary_json_follows_the_schema_and_matches_the_markdown() -> None:
    md, record, _ = report(ROWS)
    assert record["splits"] == [0, 1, 2] and record["seeds"] == [0, 1, 2]
    models = {m["name"]: m for m in record["models"]}
    gcn = [r["test_acc"] for r in ROWS if r["name"] == "gcn"]
    assert models["gcn"]["test_acc"]["mean"] == pytest.approx(np.mean(gcn))
    assert models["gcn"]["test_acc"]["std"] == pytest.approx(np.std(gcn, ddof=1))
    spread = models["gcn"]["test_acc"]
    assert spread["variance_between_splits"] + spread["variance_within_splits"] == \
        pytest.approx(spread["variance"])
    assert f"| gcn | cpu | 9 | 3 | {spread['mean']:.4f} ± {spread['std']:.4f} | " \
           f"{spread['std_between_splits']:.4f} | {spread['std_within_splits']:.4f} |" in md
    for c in record["comparisons"]:
        assert c["test"] == "wilcoxon" and c["pairs"] == 9
        cells = (f"| cpu | {c['best']} | {c['other']} | Wilcoxon (paired) | 9 | "
                 f"{c['diff']:+.4f} | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | "
                 f"{c['statistic']:.4g} | {c['p']:.3g} |")
        assert cells in md
    ranks = {m["label"]: m for m in record["ranks"][0]["models"]}
    assert ranks["appnp"]["first"] == 3 and ranks["appnp"]["mean_rank"] == 1.0
    assert f"| cpu | mlp | 3 | 0 (0%) | {ranks['mlp']['mean_rank']:.2f} |" in md


def test_schema_rejects_a_nan_and_a_missing_figure() -> None:
    """The schema is not vacuous: what it is there to refuse, it refuses."""
    _, record, _ = report(ROWS)
    broken = json.loads(json.dumps(record))
    del broken["models"][0]["test_acc"]["std_between_splits"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)
    broken = json.loads(json.dumps(record))
    broken["comparisons"][0]["test"] = "t-test"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)
    with pytest.raises(ValueError, match="NaN"):
        strict_json('{"p": NaN}')


def test_paired_comparison_matches_scipy_on_the_rows() -> None:
    _, record, _ = report(ROWS)
    c = next(c for c in record["comparisons"] if c["other"] == "gcn")
    diffs = [a["test_acc"] - g["test_acc"] for a, g in zip(ROWS[9:18], ROWS[:9], strict=True)]
    assert c["best"] == "appnp"
    assert c["diff"] == pytest.approx(np.mean(diffs))
    assert c["p"] == pytest.approx(scipy.stats.wilcoxon(diffs).pvalue)


EDGE_CASES = {
    "one run per model": (grid("a", [[0.8]]) + grid("b", [[0.7]], 0.5),
                          ["one run: no spread to measure", "one pair: no confidence interval"]),
    "all differences zero": (grid("a", [[0.8, 0.7], [0.75, 0.72]])
                             + grid("b", [[0.8, 0.7], [0.75, 0.72]], 0.5),
                             ["every paired difference is 0"]),
    "disjoint runs": (grid("a", [[0.8, 0.81, 0.79]])
                      + [row("b", 1, seed, acc, 0.5) for seed, acc in enumerate([0.7, 0.72])],
                      ["no (split, seed) run in common: unpaired Welch's t-test",
                       "no split common to all models"]),
    "one split only": (grid("a", [[0.8, 0.81, 0.79]]) + grid("b", [[0.7, 0.72, 0.71]], 0.5),
                       ["one split only: the between-split variance is undefined"]),
    "NaN accuracies": (grid("a", [[0.8, math.nan], [0.75, 0.76]])
                       + grid("b", [[math.nan, math.nan], [math.nan, math.nan]], 0.5),
                       ["1 run(s) with a NaN test accuracy left out",
                        "no run with a finite test accuracy"]),
    "one model": (grid("a", [[0.8, 0.81], [0.7, 0.72]]), ["only one model: nothing to rank"]),
}


@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_cases_give_a_note_not_a_crash(case: str) -> None:
    rows, notes = EDGE_CASES[case]
    md, record, recommendation = report(rows)
    for note in notes:
        lines = [line for line in md.splitlines() if note in line]
        assert len(lines) == 1 or (lines and all(line.startswith("- ") for line in lines)), note
        assert note in json.dumps(record), note
    assert "**Pick " in recommendation or "No pick" in recommendation
    assert bench_figures(summarize(rows))[SPLITS_PNG].startswith(PNG_SIGNATURE)


def test_all_nan_device_has_no_pick() -> None:
    rows = grid("a", [[math.nan, math.nan]]) + grid("b", [[math.nan]])
    _, record, recommendation = report(rows)
    assert "No pick: no model has a finite test accuracy." in recommendation
    assert record["models"][0]["test_acc"]["mean"] is None


def test_rows_without_a_split_count_as_split_zero() -> None:
    old = [{k: v for k, v in r.items() if k != "split"} for r in grid("a", [[0.8, 0.82]])]
    _, record, _ = report(old + grid("b", [[0.7, 0.72]], 0.5))
    assert record["splits"] == [0]
    assert record["comparisons"][0]["pairs"] == 2


@settings(max_examples=10, deadline=None)
@given(st.permutations(range(len(ROWS))))
def test_report_figures_ignore_row_order(order: list[int]) -> None:
    """Shuffled rows give the same comparisons, spreads and ranks (models may be listed in
    another order)."""
    def by_model(record: dict[str, Any]) -> tuple[Any, ...]:
        return (sorted(map(json.dumps, record["models"])),
                sorted(map(json.dumps, record["comparisons"])),
                sorted(json.dumps(m) for g in record["ranks"] for m in g["models"]))

    shuffled = summary_record(summarize([ROWS[i] for i in order]), META)
    assert by_model(shuffled) == by_model(summary_record(summarize(ROWS), META))


# --------------------------------------------------------------------------------------------
# The recommendation uses the paired comparison


def test_recommendation_uses_the_paired_test() -> None:
    """The slow model beats the fast one by 0.01 on every one of 12 runs, while the splits
    move both by 0.1: Welch cannot separate them, the paired test can, and the recommendation
    says the gap is real."""
    effects = [0.0, 0.1, -0.1, 0.05, -0.05, 0.08]
    slow = [[0.80 + e, 0.802 + e] for e in effects]
    fast = [[a - 0.01 - 0.001 * i for a in accs] for i, accs in enumerate(slow)]
    summaries = summarize(grid("slow", slow, 10.0) + grid("fast", fast, 1.0))
    a = [acc for accs in slow for acc in accs]
    b = [acc for accs in fast for acc in accs]
    assert scipy.stats.ttest_ind(a, b, equal_var=False).pvalue > 0.5
    (comparison,) = compare_to_best(summaries)
    assert comparison.test.test == "wilcoxon" and comparison.p < stats.ALPHA
    text = recommendation_markdown(summaries)
    assert "**Pick fast**" in text
    assert "Wilcoxon signed-rank on 12 paired runs" in text
    assert "the gap is unlikely to be noise" in text


def test_recommendation_falls_back_to_welch_without_shared_runs() -> None:
    rows = (grid("slow", [[0.80, 0.82, 0.81]], 10.0)
            + [row("fast", 1, s, acc, 1.0) for s, acc in enumerate([0.80, 0.79, 0.81])])
    text = recommendation_markdown(summarize(rows))
    assert "no shared run; Welch's t-test, unpaired" in text


# --------------------------------------------------------------------------------------------
# The per-split figure


def test_accuracy_per_split_figure_is_a_png() -> None:
    png = accuracy_per_split_png(summarize(ROWS))
    assert png.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(io.BytesIO(png))
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


def test_figures_are_drawn_without_pyplot(tmp_path: Path) -> None:
    """Every bench figure, in a fresh interpreter: pyplot (global state, a display backend) is
    never imported."""
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(ROWS))
    code = ("import json, sys; from gnn.report import summarize; "
            "from gnn.plots import bench_figures; "
            "figs = bench_figures(summarize(json.loads(open(sys.argv[1]).read()))); "
            "assert all(f.startswith(b'\\x89PNG') for f in figs.values()), 'not a PNG'; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'")
    proc = subprocess.run([sys.executable, "-c", code, str(rows)], cwd=ROOT, timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
