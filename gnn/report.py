"""Every table the project writes: the bench report (``summary.md``, its machine-readable twin
``summary.json``, ``recommendation.md``, the terminal table) derived only from the recorded rows,
``gnn scale``'s ``scale.md`` and ``scale.csv``, and ``gnn tune``'s ``tuning.md``, ``trials.csv``
and best configs. The statistics come from :mod:`gnn.stats`, figures are drawn by
:mod:`gnn.plots`; :func:`write_files` writes a report's files together.

Nothing here names a particular model: every sentence is computed from the numbers by the rules
written at the top of ``recommendation.md``, so a different graph or machine gives a different,
still justified, answer.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gnn.config import Config
from gnn.files import atomic_write_many
from gnn.scale import ScaleRow
from gnn.stats import (
    ALPHA,
    BOOTSTRAP_METHOD,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    Rank,
    RunKey,
    SplitKey,
    Spread,
    Test,
    compare,
    finite,
    rank_stability,
    spread,
)
from gnn.tune import TrialRow, TuneOutcome

SUMMARY_MD, SUMMARY_JSON, RECOMMENDATION_MD = "summary.md", "summary.json", "recommendation.md"
ACCURACY_PNG, CURVES_PNG = "accuracy_vs_latency.png", "learning_curves.png"
SPLITS_PNG = "accuracy_per_split.png"
SUMMARY_SCHEMA_VERSION = 1

MEMORY_MEASURES = {
    "cuda_max_allocated": "CUDA max allocated bytes above the level at the start of the run",
    "rss_peak_growth": "growth of the process's peak resident memory (kernel high-water mark, "
                       "reset at the start of the run)",
    "rss_growth": "growth of the process's resident memory from start to end of the run "
                  "(a lower bound of the peak)",
}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value, NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def split_of(row: Mapping[str, Any]) -> int:
    """A row's split id; rows recorded before splits existed were all on the public split, 0."""
    return int(row.get("split", 0))


def run_key(row: Mapping[str, Any]) -> RunKey:
    """What two models' runs must share to be paired: dataset, split and seed."""
    return (str(row["dataset"]), split_of(row), int(row["seed"]))


@dataclass
class Summary:
    """One model x device over its runs (every split and seed)."""

    name: str
    device: str
    dataset: str
    sampled: bool
    num_params: int
    rows: list[dict[str, Any]] = field(repr=False)
    label: str = ""

    def values(self, key: str) -> list[float]:
        return [float(row[key]) for row in self.rows]

    @property
    def runs(self) -> int:
        return len(self.rows)

    @property
    def acc(self) -> tuple[float, float]:
        """Mean and sample std of the test accuracy over the runs (NaN accuracies left out),
        the same figures as :attr:`spread`."""
        sp = self.spread
        return sp.mean, sp.std

    def accuracies(self) -> dict[RunKey, float]:
        """Test accuracy per run (the first row of a run recorded twice)."""
        out: dict[RunKey, float] = {}
        for row in self.rows:
            out.setdefault(run_key(row), float(row["test_acc"]))
        return out

    def by_split(self) -> dict[SplitKey, list[float]]:
        """Test accuracies grouped by (dataset, split), splits in ascending order."""
        groups: dict[SplitKey, list[float]] = {}
        for (dataset, split, _), acc in sorted(self.accuracies().items()):
            groups.setdefault((dataset, split), []).append(acc)
        return groups

    def split_means(self) -> dict[SplitKey, float]:
        """Mean test accuracy over each split's seeds (NaN for a split without a finite one)."""
        return {key: mean_std(finite(values))[0] for key, values in self.by_split().items()}

    @property
    def spread(self) -> Spread:
        return spread(self.by_split())

    @property
    def f1(self) -> tuple[float, float]:
        return mean_std(finite(self.values("test_macro_f1")))

    @property
    def forward_ms(self) -> float:
        """Median over seeds of each run's median forward latency."""
        return self.median("forward_ms_median")

    @property
    def peak_memory_mb(self) -> float:
        """The largest peak over the runs: what a machine must have."""
        return max(self.values("peak_memory_mb"))

    def median(self, key: str) -> float:
        """Times are summarised by the median: a run slowed by other load on the machine moves
        a mean, not a median."""
        return statistics.median(self.values(key))


def summarize(rows: Sequence[dict[str, Any]]) -> list[Summary]:
    """Group rows by model x device, in the order they first appear."""
    groups: dict[tuple[str, str], Summary] = {}
    for row in rows:
        key = (row["name"], row["device"])
        if key not in groups:
            groups[key] = Summary(row["name"], row["device"], row["dataset"],
                                  bool(row.get("sampled")), int(row["num_params"]), [])
        groups[key].rows.append(row)
    summaries = list(groups.values())
    several_devices = len({s.device for s in summaries}) > 1
    for s in summaries:
        s.label = f"{s.name} ({s.device})" if several_devices else s.name
    return summaries


@dataclass
class Comparison:
    """The best model on a device against another there: paired on the (split, seed) runs they
    share, Welch's t-test where they share none (:func:`gnn.stats.compare`)."""

    best: Summary
    other: Summary
    test: Test

    @property
    def diff(self) -> float:
        return self.test.diff

    @property
    def p(self) -> float:
        return self.test.p


def compare_summaries(a: Summary, b: Summary) -> Test:
    return compare(a.accuracies(), b.accuracies())


def best_per_device(summaries: Sequence[Summary]) -> dict[str, Summary]:
    """The highest mean test accuracy per device (a model without any finite one is never
    best unless it is alone)."""
    def mean(s: Summary) -> float:
        return -math.inf if math.isnan(s.acc[0]) else s.acc[0]

    best: dict[str, Summary] = {}
    for s in summaries:
        if s.device not in best or mean(s) > mean(best[s.device]):
            best[s.device] = s
    return best


def compare_to_best(summaries: Sequence[Summary]) -> list[Comparison]:
    best = best_per_device(summaries)
    return [Comparison(best[s.device], s, compare_summaries(best[s.device], s))
            for s in summaries if s is not best[s.device]]


@dataclass
class DeviceRanks:
    """Rank stability of the models of one device over the splits they all ran on."""

    device: str
    ranks: dict[str, Rank]  # by summary label
    notes: list[str]


def ranks_per_device(summaries: Sequence[Summary]) -> list[DeviceRanks]:
    out = []
    for device in dict.fromkeys(s.device for s in summaries):
        group = [s for s in summaries if s.device == device]
        ranks, notes = rank_stability({s.label: s.split_means() for s in group})
        out.append(DeviceRanks(device, ranks, notes))
    return out


def pareto_front(summaries: Sequence[Summary]) -> list[Summary]:
    """Points no other point beats on both accuracy (higher) and latency (lower), fastest
    first."""
    def dominated(s: Summary) -> bool:
        return any(o.forward_ms <= s.forward_ms and o.acc[0] >= s.acc[0]
                   and (o.forward_ms < s.forward_ms or o.acc[0] > s.acc[0]) for o in summaries)

    return sorted((s for s in summaries if not dominated(s)), key=lambda s: s.forward_ms)


# --------------------------------------------------------------------------------------------
# Tables


SUMMARY_HEADERS = ("model", "device", "runs", "test_acc", "test_macro_f1",
                   "total_train_time_s (median)", "train_loop_time_s (median)",
                   "avg_forward_ms (median)", "peak_memory_mb", "params")


def _pm(mean_and_std: tuple[float, float]) -> str:
    mean, std = mean_and_std
    return "n/a" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def summary_cells(s: Summary) -> list[str]:
    return [s.name, s.device, str(s.runs), _pm(s.acc), _pm(s.f1),
            f"{s.median('total_train_time_s'):.2f}", f"{s.median('train_loop_time_s'):.2f}",
            f"{s.forward_ms:.3f}", f"{s.peak_memory_mb:.1f}", f"{s.num_params:,}"]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def terminal_table(summaries: Sequence[Summary]) -> str:
    return text_table(SUMMARY_HEADERS, [summary_cells(s) for s in summaries])


def _num(value: float, spec: str = ".4f", signed: bool = False) -> str:
    if math.isnan(value):
        return "n/a"
    return format(value, ("+" if signed else "") + spec)


TEST_NAMES = {"wilcoxon": "Wilcoxon (paired)", "welch": "Welch (unpaired)", "none": "none"}
COMPARISON_HEADERS = ("device", "best", "other", "test", "pairs", "Δ test_acc",
                      f"{CONFIDENCE:.0%} CI of Δ", "statistic", "p", f"p < {ALPHA}")


def _comparison_cells(c: Comparison) -> list[str]:
    t = c.test
    significant = {None: "n/a", True: "yes", False: "no"}[t.significant]
    ci = "n/a" if math.isnan(t.ci_low) else \
        f"[{_num(t.ci_low, signed=True)}, {_num(t.ci_high, signed=True)}]"
    return [c.other.device, c.best.label, c.other.label, TEST_NAMES[t.test],
            str(t.pairs) if t.test == "wilcoxon" else "-", _num(t.diff, signed=True), ci,
            _num(t.statistic, ".4g"), _p(t.p), significant]


def _notes(subjects: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """One bullet per distinct note, naming what it is about, and a blank line after them if
    any."""
    about: dict[str, list[str]] = {}
    for subject, notes in subjects:
        for note in notes:
            about.setdefault(note, []).append(subject)
    lines = [f"- {', '.join(names)}: {note}." for note, names in about.items()]
    return [*lines, ""] if lines else []


def comparison_section(summaries: Sequence[Summary]) -> list[str]:
    comparisons = compare_to_best(summaries)
    if not comparisons:
        return ["## Is the best model really better?", "", "(only one model)", ""]
    return [
        "## Is the best model really better?", "",
        "The most accurate model on each device (highest mean test accuracy) against every "
        "other model there. Where the two share runs (same split and seed): the Wilcoxon "
        "signed-rank test of the per-run differences (`scipy.stats.wilcoxon`, two-sided) and "
        f"the mean difference with its {CONFIDENCE:.0%} bootstrap interval "
        f"(`scipy.stats.bootstrap`, {BOOTSTRAP_METHOD}, {BOOTSTRAP_RESAMPLES} resamples, seed "
        f"{BOOTSTRAP_SEED}); where they share none: Welch's t-test on the two unpaired samples. "
        f"Δ = best - other; `p < {ALPHA}` means the runs separate the two, otherwise the "
        "difference may be noise. Paired because a split that is easy or hard for one model "
        "is so for the other: the difference cancels it (docs/statistics.md).",
        "",
        markdown_table(COMPARISON_HEADERS, [_comparison_cells(c) for c in comparisons]),
        "",
        *_notes([(f"{c.other.label} vs {c.best.label}", c.test.notes) for c in comparisons]),
    ]


SPREAD_HEADERS = ("model", "device", "runs", "splits", "test_acc", "std between splits",
                  "std within splits (seeds)", "share of variance between splits")


def _spread_cells(s: Summary) -> list[str]:
    sp = s.spread
    share = "n/a" if math.isnan(sp.between_share) else f"{sp.between_share:.0%}"
    return [s.name, s.device, str(sp.runs), str(sp.splits), _pm((sp.mean, sp.std)),
            _num(sp.std_between), _num(sp.std_within), share]


def spread_section(summaries: Sequence[Summary]) -> list[str]:
    return [
        "## Where the spread comes from: splits and seeds", "",
        "The sample variance of each model's test accuracy over all its runs, split into a "
        "part between splits (how far each split's mean over seeds lies from the overall mean) "
        "and a part within splits (seeds around their split's mean): std² = between² + "
        "within², the law of total variance over splits (docs/statistics.md).",
        "",
        markdown_table(SPREAD_HEADERS, [_spread_cells(s) for s in summaries]),
        "",
        *_notes([(s.label, s.spread.notes()) for s in summaries]),
    ]


RANK_HEADERS = ("device", "model", "splits ranked", "ranks first", "mean rank")


def rank_section(summaries: Sequence[Summary]) -> list[str]:
    rows, notes = [], []
    for group in ranks_per_device(summaries):
        notes += [(group.device, group.notes)]
        rows += [[group.device, label, str(r.splits), f"{r.first} ({r.first_fraction:.0%})",
                  f"{r.mean_rank:.2f}"] for label, r in group.ranks.items()]
    return [
        "## Rank stability over splits", "",
        "In each split the models of a device are ranked by their mean test accuracy over the "
        "split's seeds (1 = best; tied models share the average of their ranks, and each model "
        "tied for the best mean counts the split as ranking first); only splits every model "
        "ran on are ranked.",
        "",
        markdown_table(RANK_HEADERS, rows) if rows else "(no ranking)",
        "",
        *_notes(notes),
    ]


def _batched_note(summaries: Sequence[Summary]) -> str:
    """Which rows were trained as members of batched runs, and what their times mean."""
    batched = [f"{s.label} ({max(int(r.get('members', 1)) for r in s.rows)} members per run)"
               for s in summaries if any(int(r.get("members", 1)) > 1 for r in s.rows)]
    if not batched:
        return "- Every run trained on its own (one model per run)."
    return ("- Trained batched, several seeds as members of one run: " + ", ".join(batched)
            + ". Their train times are each member's share of the run's wall time "
            "(`run_time_s` in the rows); peak memory is the whole run's.")


def _workers_note(summaries: Sequence[Summary]) -> list[str]:
    """Whether runs trained side by side in worker processes, whose times then include the
    wait for the machine the others shared."""
    workers = max(int(r.get("workers") or 1) for s in summaries for r in s.rows)
    if workers == 1:
        return []
    return [f"- Trained in {workers} worker processes at once: train times and forward "
            "latencies were measured while the other workers ran, so they are slower than "
            "on an idle machine; compare them from a bench with `--workers 1`."]


def _ids(values: set[int], noun: str) -> str:
    return f"{_count(len(values), noun)} ({', '.join(map(str, sorted(values)))})"


def _header(summaries: Sequence[Summary], meta: dict[str, Any]) -> list[str]:
    first = summaries[0].rows[0]
    versions = first.get("versions", {})
    splits = {split_of(row) for s in summaries for row in s.rows}
    seeds = {int(row["seed"]) for s in summaries for row in s.rows}
    return [
        f"# Benchmark: {', '.join(sorted({s.dataset for s in summaries}))}",
        "",
        f"{_ids(splits, 'split')} × {_ids(seeds, 'seed')} per model and device; "
        f"{meta.get('date', time.strftime('%Y-%m-%d %H:%M'))}; gnn {first.get('gnn_version')}, "
        f"torch {versions.get('torch')}, torch_geometric {versions.get('torch_geometric')}, "
        f"python {versions.get('python')}; {first.get('threads')} CPU threads on "
        f"{meta.get('cpu') or platform.machine()}"
        + (f"; GPU {meta['gpu']}" if meta.get("gpu") else "") + ".",
        "",
        f"Command: `{meta['command']}`" if meta.get("command") else "",
        "",
        *([meta["tuned"], ""] if meta.get("tuned") else []),
    ]


def summary_markdown(summaries: Sequence[Summary], meta: dict[str, Any]) -> str:
    first = summaries[0].rows[0]
    measures = sorted({row["memory_measure"] for s in summaries for row in s.rows})
    front = pareto_front(summaries)
    parts = [
        *_header(summaries, meta),
        markdown_table(SUMMARY_HEADERS, [summary_cells(s) for s in summaries]),
        "",
        "- test_acc, test_macro_f1: mean ± sample std over all runs (every split and seed), "
        "each on its split's test nodes, for the weights of the best validation epoch.",
        "- total_train_time_s: the whole fit (training steps, per-epoch validation, model "
        "selection); train_loop_time_s: the training steps only. Medians over runs (robust to "
        "a run slowed by other load on the machine).",
        f"- avg_forward_ms: median over runs of each run's median full-graph forward "
        f"(eval mode, `torch.inference_mode`, {first.get('latency_warmup')} warm-up + "
        f"{first.get('latency_iters')} timed calls, device synchronised around each).",
        "- peak_memory_mb: the largest over the runs of the "
        + "; ".join(MEMORY_MEASURES.get(m, m) for m in measures) + ".",
        _batched_note(summaries),
        *_workers_note(summaries),
        "",
        *spread_section(summaries),
        *comparison_section(summaries),
        *rank_section(summaries),
        "## Pareto front (accuracy vs forward latency)",
        "",
        "Models that no other model beats on both mean test accuracy and forward latency, "
        "fastest first: " + ", ".join(f"{s.label} ({s.acc[0]:.4f}, {s.forward_ms:.3f} ms)"
                                      for s in front) + ".",
        "",
    ]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Recommendation


RULES = """\
Derived from the numbers in `summary.md` by these rules, applied per device:

1. **Memory budget.** With `--memory-budget-mb B`, models whose peak memory exceeds B are left
   out before the other rules (and it is said when only neighbour-sampled training fits).
2. **Best accuracy.** The most accurate model is the one with the highest mean test accuracy.
3. **Fastest within one std.** Among models whose mean test accuracy is at least the best mean
   minus the best model's standard deviation over its runs (splits × seeds), the fastest
   (lowest median forward latency). Within one std, the runs do not tell the models apart, so
   speed decides.
4. **Pick** the rule-3 model. How sure the accuracy gap to the most accurate model is comes
   from the paired comparison: the Wilcoxon signed-rank test on the runs both models share
   (same split and seed) and the bootstrap interval of the mean paired difference; Welch's
   t-test only where they share no run.
5. **Trade-offs.** Models on the accuracy-latency Pareto front that are faster than the pick are
   listed with their speed-up, accuracy cost and the same comparison against the pick."""


def _describe(s: Summary) -> str:
    mean, std = s.acc
    return (f"**{s.name}**: test accuracy {mean:.4f} ± {std:.4f} over "
            f"{_count(s.spread.runs, 'run')}, {s.forward_ms:.3f} ms per full-graph forward, "
            f"{s.median('total_train_time_s'):.1f} s to train, peak memory "
            f"{s.peak_memory_mb:.1f} MB")


def describe_test(t: Test) -> str:
    """The comparison in words, for a sentence of the recommendation."""
    if t.test == "wilcoxon":
        ci = "" if math.isnan(t.ci_low) else \
            f", {CONFIDENCE:.0%} CI [{t.ci_low:+.4f}, {t.ci_high:+.4f}]"
        few = f" (too few for any p below {ALPHA})" if t.underpowered else ""
        return (f"Wilcoxon signed-rank on {_count(t.pairs, 'paired run')}{few}: p = {_p(t.p)}; "
                f"mean paired difference {t.diff:+.4f}{ci}")
    if t.test == "welch":
        return f"no shared run; Welch's t-test, unpaired: p = {_p(t.p)}"
    return "no test: " + "; ".join(t.notes)


def _budget_lines(group: list[Summary], budget: float | None) -> tuple[list[Summary], list[str]]:
    if budget is None:
        low = min(group, key=lambda s: s.peak_memory_mb)
        high = max(group, key=lambda s: s.peak_memory_mb)
        return group, [f"- No memory budget given (`--memory-budget-mb`); peak memory ranges "
                       f"from {low.peak_memory_mb:.1f} MB ({low.name}) to "
                       f"{high.peak_memory_mb:.1f} MB ({high.name})."]
    fits = [s for s in group if s.peak_memory_mb <= budget]
    over = [s for s in group if s.peak_memory_mb > budget]
    lines = []
    if over:
        lines.append(f"- Over the {budget:g} MB budget, left out: " + ", ".join(
            f"{s.name} ({s.peak_memory_mb:.1f} MB)" for s in over) + ".")
    if not fits:
        low = min(group, key=lambda s: s.peak_memory_mb)
        lines.append(f"- No model fits in {budget:g} MB (smallest peak: {low.name}, "
                     f"{low.peak_memory_mb:.1f} MB); the rules below ignore the budget.")
        return group, lines
    if all(s.sampled for s in fits) and any(not s.sampled for s in over):
        lines.append(f"- Only neighbour-sampled training fits in {budget:g} MB: "
                     + ", ".join(s.name for s in fits) + ".")
    else:
        lines.append(f"- Within the {budget:g} MB budget: "
                     + ", ".join(s.name for s in fits) + ".")
    return fits, lines


def _device_section(group: list[Summary], budget: float | None) -> list[str]:
    """Rules 1-5 on one device's models (those with a finite mean test accuracy)."""
    unmeasured = [s for s in group if math.isnan(s.acc[0])]
    candidates, lines = _budget_lines([s for s in group if s not in unmeasured] or group, budget)
    if unmeasured:
        lines.append("- Left out, no finite test accuracy: "
                     + ", ".join(s.name for s in unmeasured) + ".")
    candidates = [s for s in candidates if s not in unmeasured]
    if not candidates:
        return [*lines, "", "No pick: no model has a finite test accuracy.", ""]
    best = max(candidates, key=lambda s: s.acc[0])
    floor = best.acc[0] - best.acc[1]
    close = [s for s in candidates if s.acc[0] >= floor]
    pick = min(close, key=lambda s: s.forward_ms)
    others = [s.name for s in close if s is not best]
    within = f"- Within one std of it (mean test accuracy >= {floor:.4f}): "
    lines.append(f"- Most accurate: {_describe(best)}.")
    if pick is best:
        lines.append(within + (f"{', '.join(others)}, none faster." if others
                               else "no other model."))
        verdict = ("the most accurate model is also the fastest of those the runs cannot tell "
                   "apart from it.")
    else:
        test = compare_summaries(best, pick)
        gap, speedup = best.acc[0] - pick.acc[0], best.forward_ms / pick.forward_ms
        lines.append(within + f"{', '.join(others)}; the fastest is {_describe(pick)}.")
        separated = (f"the gap is unlikely to be noise (p < {ALPHA}); prefer {best.name} when "
                     f"{gap:.4f} accuracy matters more than {speedup:.1f}x latency"
                     if test.significant else "too few runs to separate the two"
                     if test.underpowered else "the runs do not separate the two")
        verdict = (f"{gap:.4f} below the most accurate model in mean test accuracy "
                   f"({describe_test(test)}: {separated}) and {speedup:.1f}x faster per "
                   "forward pass.")
    lines += ["", f"**Pick {pick.name}**: {verdict}", ""]
    for s in pareto_front(candidates):
        if s.forward_ms < pick.forward_ms:  # necessarily less accurate than one std allows
            test = compare_summaries(pick, s)
            noise = "a real loss" if test.significant else \
                "too few runs to tell" if test.underpowered else "within run-to-run noise"
            lines.append(f"- Under a tighter latency budget: {s.name} is "
                         f"{pick.forward_ms / s.forward_ms:.1f}x faster per forward at "
                         f"{pick.acc[0] - s.acc[0]:.4f} lower mean test accuracy "
                         f"({describe_test(test)}: {noise}).")
    return lines


def recommendation_markdown(summaries: Sequence[Summary], budget: float | None = None) -> str:
    parts = [f"# Recommendation: {', '.join(sorted({s.dataset for s in summaries}))}", "",
             RULES, ""]
    for device in dict.fromkeys(s.device for s in summaries):
        parts += [f"## {device}", ""]
        parts += _device_section([s for s in summaries if s.device == device], budget)
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------
# summary.json: the figures of summary.md for programs


def _jsonable(value: Any) -> Any:
    """NaN and infinities (undefined figures) become null: strict JSON, readable anywhere."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _jsonable(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _spread_record(sp: Spread) -> dict[str, Any]:
    return {"mean": sp.mean, "std": sp.std, "variance": sp.var,
            "variance_between_splits": sp.var_between if sp.between_defined else math.nan,
            "variance_within_splits": sp.var_within if sp.within_defined else math.nan,
            "std_between_splits": sp.std_between, "std_within_splits": sp.std_within,
            "between_share": sp.between_share, "runs": sp.runs, "splits": sp.splits,
            "nan_runs": sp.nan_runs, "notes": sp.notes()}


def _model_record(s: Summary) -> dict[str, Any]:
    f1_mean, f1_std = s.f1
    return {"label": s.label, "name": s.name, "device": s.device, "dataset": s.dataset,
            "sampled": s.sampled, "num_params": s.num_params, "runs": s.runs,
            "test_acc": _spread_record(s.spread),
            "test_macro_f1": {"mean": f1_mean, "std": f1_std},
            "total_train_time_s_median": s.median("total_train_time_s"),
            "train_loop_time_s_median": s.median("train_loop_time_s"),
            "forward_ms_median": s.forward_ms, "peak_memory_mb": s.peak_memory_mb,
            "members_per_run": max(int(r.get("members", 1)) for r in s.rows)}


def _comparison_record(c: Comparison) -> dict[str, Any]:
    t = c.test
    return {"device": c.other.device, "best": c.best.label, "other": c.other.label,
            "test": t.test, "pairs": t.pairs, "diff": t.diff, "ci_low": t.ci_low,
            "ci_high": t.ci_high, "statistic": t.statistic, "p": t.p,
            "significant": t.significant, "notes": list(t.notes)}


def _ranks_record(group: DeviceRanks) -> dict[str, Any]:
    return {"device": group.device, "notes": group.notes,
            "models": [{"label": label, "splits": r.splits, "first": r.first,
                        "first_fraction": r.first_fraction, "mean_rank": r.mean_rank}
                       for label, r in group.ranks.items()]}


def summary_record(summaries: Sequence[Summary], meta: dict[str, Any]) -> dict[str, Any]:
    """Every figure of ``summary.md`` as one JSON-ready object (undefined figures are null)."""
    first = summaries[0].rows[0]
    versions = first.get("versions", {})
    record = {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "datasets": sorted({s.dataset for s in summaries}),
        "splits": sorted({split_of(row) for s in summaries for row in s.rows}),
        "seeds": sorted({int(row["seed"]) for s in summaries for row in s.rows}),
        "meta": {**meta, "gnn_version": first.get("gnn_version"),
                 "torch": versions.get("torch"),
                 "torch_geometric": versions.get("torch_geometric"),
                 "python": versions.get("python"), "threads": first.get("threads")},
        "settings": {"alpha": ALPHA, "confidence_level": CONFIDENCE,
                     "bootstrap_method": BOOTSTRAP_METHOD,
                     "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
                     "bootstrap_seed": BOOTSTRAP_SEED},
        "models": [_model_record(s) for s in summaries],
        "comparisons": [_comparison_record(c) for c in compare_to_best(summaries)],
        "ranks": [_ranks_record(group) for group in ranks_per_device(summaries)],
        "pareto_front": [s.label for s in pareto_front(summaries)],
    }
    return _jsonable(record)


def summary_json(summaries: Sequence[Summary], meta: dict[str, Any]) -> str:
    return json.dumps(summary_record(summaries, meta), indent=2, allow_nan=False) + "\n"


# --------------------------------------------------------------------------------------------
# Writing everything


def machine_meta(command: str, devices: Sequence[str]) -> dict[str, Any]:
    """Where and how the bench ran, for the header of ``summary.md``."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    meta: dict[str, Any] = {"command": command, "cpu": cpu,
                            "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    if "cuda" in devices:
        import torch

        meta["gpu"] = torch.cuda.get_device_name()
    return meta


def bench_documents(summaries: Sequence[Summary], meta: dict[str, Any],
                    budget: float | None = None) -> dict[str, bytes]:
    """The bench's text files (two markdown, one JSON), by file name."""
    return {SUMMARY_MD: summary_markdown(summaries, meta).encode(),
            SUMMARY_JSON: summary_json(summaries, meta).encode(),
            RECOMMENDATION_MD: recommendation_markdown(summaries, budget).encode()}


def write_files(out: Path, files: Mapping[str, bytes]) -> list[Path]:
    """Write a report's files into ``out`` all together: each is complete, and if one cannot be
    written (a full disk) none of them is replaced."""
    paths = {out / name: payload for name, payload in files.items()}
    atomic_write_many(paths)
    return list(paths)


# --------------------------------------------------------------------------------------------
# gnn scale


def _fmt(value: float, spec: str) -> str:
    return "" if isinstance(value, float) and math.isnan(value) else format(value, spec)


def scale_csv(rows: Sequence[ScaleRow]) -> str:
    """``scale.csv``: one line per model and size, every field of :class:`ScaleRow`."""
    buffer = io.StringIO()
    names = [f.name for f in dataclasses.fields(ScaleRow)]
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v
                         for k, v in dataclasses.asdict(row).items()})
    return buffer.getvalue()


def scale_markdown(rows: Sequence[ScaleRow], budget_gib: float, cfg: Config,
                   meta: Mapping[str, Any]) -> str:
    """``scale.md``: the setting (graph family, training, machine) and one table row per
    model and size; ``meta`` gives ``threads``, ``torch``, ``machine`` and ``memory``."""
    d = cfg.data
    lines = [
        "# gnn scale", "",
        f"CSBM graphs: {d.num_classes} classes, average degree {d.avg_degree:g}, homophily "
        f"{d.homophily:g}, {d.num_features} {d.features} features (signal "
        f"{d.feature_signal:g}), {d.train_per_class} training nodes per class, graph seed "
        f"{d.graph_seed}. {cfg.train.epochs} epochs, lr {cfg.train.lr:g}, device "
        f"{cfg.train.device}, {meta['threads']} threads, torch {meta['torch']}, "
        f"{meta['machine']}. Memory budget {budget_gib:g} GiB; memory measured as "
        f"{meta['memory']}.",
        "",
        "Each model trains for the epoch budget and is evaluated once, after it (full-graph "
        "evaluation: layer-wise for sampled models). "
        "epoch: median training time per epoch (evaluation excluded). step peak: peak memory "
        "above the level before the step, for one training step (a sampled model: one "
        "mini-batch, sampling included; full-batch: one epoch). run peak: the same over the "
        "whole run (all epochs and every full-graph evaluation). predicted: what the run "
        "allocates beyond the graph, predicted from sizes before allocating (compare with run "
        "peak); a model is skipped when graph + predicted exceeds the budget. fit: wall time "
        "of the run, evaluations included.",
        "",
        "| model | nodes | edges | status | epoch (s) | step peak (GiB) | run peak (GiB) "
        "| predicted (GiB) | graph (GiB) | test acc | fit (s) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.num_nodes:,} | {r.num_edges:,} | {r.status} | "
            f"{_fmt(r.epoch_s, '.3f')} | {_fmt(r.step_peak_gib, '.4f')} | "
            f"{_fmt(r.run_peak_gib, '.3f')} | {r.predicted_gib:.3f} | {r.graph_gib:.3f} | "
            f"{_fmt(r.test_acc, '.3f')} | {_fmt(r.fit_s, '.1f')} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# gnn tune

TUNING_MD, TRIALS_CSV, TUNING_JSON = "tuning.md", "trials.csv", "best/tuning.json"


def _params_text(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in params.items())


def trial_line(row: TrialRow) -> str:
    """The line ``gnn tune`` prints when one of its trials ends."""
    value = f"val_acc={row.value:.4f}" if row.value is not None else row.note or row.state
    seconds = f" [{row.seconds:.1f} s]" if row.seconds is not None else ""
    retry = f" (retry of trial {row.retry_of})" if row.retry_of is not None else ""
    return f"{row.model} trial {row.number} {row.state.lower()}: {value}{retry} " \
           f"{_params_text(row.params)}{seconds}".rstrip()


def tune_done_line(result: TuneOutcome) -> str:
    c, job = result.counts, result.job
    best = ("no complete trial" if result.best_number is None else
            f"best val_acc={result.best_value:.4f} (trial {result.best_number})")
    return (f"{job.name}: {c.finished}/{job.trials} trials finished ({c.complete} complete, "
            f"{c.pruned} pruned, {c.failed} failed; {result.ran_here} here); {best}")


def trials_csv(outcomes: Sequence[TuneOutcome]) -> str:
    """``trials.csv``: every trial of every tuned model; parameters one column each."""
    params = sorted({k for o in outcomes for r in o.rows for k in r.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "trial", "state", "val_acc", "seconds", "worker", "retry_of",
                     "note", *params])
    for o in outcomes:
        for r in o.rows:
            writer.writerow([r.model, r.number, r.state,
                             "" if r.value is None else f"{r.value:.6f}",
                             "" if r.seconds is None else f"{r.seconds:.3f}", r.worker,
                             "" if r.retry_of is None else r.retry_of, r.note,
                             *(r.params.get(k, "") for k in params)])
    return buffer.getvalue()


def tuned_config_yaml(result: TuneOutcome) -> str:
    """``best/NAME.yaml``: the complete config of the best trial, with where it came from."""
    import yaml

    job = result.job
    assert result.best_config is not None
    header = [
        f"# {job.name}, tuned by gnn tune: the best of {result.counts.finished} finished trials "
        f"(budget {job.trials}),",
        f"# trial {result.best_number}: mean validation accuracy {result.best_value:.4f} over "
        f"{job.splits} split(s) x {job.seeds} seed(s).",
        f"# Search space {job.space.source}; study {job.name} in {result.storage}.",
        "# Tuning never read the test masks: gnn bench --configs on this folder measures them.",
    ]
    body = yaml.safe_dump(result.best_config.to_dict(), sort_keys=False)
    return "\n".join(header) + "\n" + body


def tuning_record(outcomes: Sequence[TuneOutcome]) -> dict[str, Any]:
    """``best/tuning.json``: what was tuned and with what budget, for the bench's report."""
    return {"models": {o.job.name: {
        "trials": o.job.trials, "finished": o.counts.finished, "splits": o.job.splits,
        "seeds": o.job.seeds, "sampler_seed": o.job.sampler_seed,
        "best_trial": o.best_number, "best_val_acc": o.best_value, "params": o.best_params,
        "search_space": o.job.space.source} for o in outcomes}}


def tuned_line(record: Mapping[str, Any]) -> str:
    """The bench report's line on configs that ``gnn tune`` wrote (``best/tuning.json``)."""
    models = record.get("models", {})
    budgets = {(m["trials"], m["splits"], m["seeds"]) for m in models.values()}
    if len(budgets) == 1:
        trials, splits, seeds = budgets.pop()
        budget = (f"the same budget of {trials} trials each, {splits} split(s) x {seeds} "
                  "seed(s) per trial")
    else:
        budget = "budgets " + ", ".join(f"{name}: {m['trials']} trials of {m['splits']} x "
                                        f"{m['seeds']}" for name, m in models.items())
    return (f"- Configs tuned by `gnn tune` on validation accuracy only: "
            f"{', '.join(models)}; {budget}.")


def tuning_markdown(outcomes: Sequence[TuneOutcome], meta: Mapping[str, Any]) -> str:
    """``tuning.md``: which configs were tuned with what budget, and each study's result."""
    first = outcomes[0].job
    rows = [[o.job.name, f"{o.counts.finished}/{o.job.trials}", str(o.counts.complete),
             str(o.counts.pruned), str(o.counts.failed),
             "" if o.best_value is None else f"{o.best_value:.4f}",
             "" if o.best_number is None else str(o.best_number), f"{o.wall_time_s:.0f}",
             _params_text(o.best_params)] for o in outcomes]
    spaces = [f"- {o.job.name} ({o.job.space.source}): "
              + "; ".join(p.describe() for p in o.job.space.params) for o in outcomes]
    datasets = ", ".join(sorted({o.job.base.data.name for o in outcomes}))
    return "\n".join([
        f"# Tuning: {datasets}", "",
        f"Tuned configs: {', '.join(o.job.name for o in outcomes)}. Budget: {first.trials} "
        "finished (complete or pruned) trials per model, counted over every worker of the "
        f"study. Each trial trains {first.splits} split(s) x {first.seeds} seed(s) and scores "
        "the mean validation accuracy; the test masks are never read. TPE sampler (seed "
        f"{first.sampler_seed}); each study's first trial is its base config's values.", "",
        f"Command: `{meta.get('command', '')}`; {meta.get('date', '')}; {meta.get('cpu', '')}.",
        f"Storage: {outcomes[0].storage}.", "",
        markdown_table(("model", "finished/budget", "complete", "pruned", "failed",
                        "best val acc", "best trial", "wall time (s)", "best params"), rows),
        "",
        "- failed: surplus trials (two workers started the last trials at once; the later one "
        "trained nothing) and trials whose worker stopped (no heartbeat: retried with the same "
        "parameters, `retry_of` in trials.csv).",
        "- wall time: first trial's start to last trial's end, every worker included.",
        "- Test accuracy of the tuned configs: `gnn bench --configs OUT/best`.", "",
        "## Search spaces", "", *spaces, ""])


def tuning_documents(outcomes: Sequence[TuneOutcome], meta: Mapping[str, Any],
                     earlier: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """``tuning.md``, ``trials.csv``, and ``best/NAME.yaml`` + ``best/tuning.json``, by path
    relative to the output folder. ``tuning.md`` and ``trials.csv`` describe this call's
    models; ``best/`` keeps the configs of models tuned into the same folder before
    (``earlier``: the ``tuning.json`` there), so ``tuning.json`` keeps their records too."""
    import json

    files = {TUNING_MD: tuning_markdown(outcomes, meta).encode(),
             TRIALS_CSV: trials_csv(outcomes).encode()}
    tuned = [o for o in outcomes if o.best_config is not None]
    for o in tuned:
        files[f"best/{o.job.name}.yaml"] = tuned_config_yaml(o).encode()
    if tuned:
        record = tuning_record(tuned)
        record["models"] = {**(earlier or {}).get("models", {}), **record["models"]}
        files[TUNING_JSON] = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    return files
