"""Every table the project writes: the bench report (``summary.md``, ``recommendation.md``,
the terminal table) derived only from the recorded rows, ``gnn scale``'s ``scale.md`` and
``scale.csv``, and ``gnn tune``'s ``tuning.md``, ``trials.csv`` and best configs. Figures
are drawn by :mod:`gnn.plots`; :func:`write_files` writes a report's files together.

Nothing here names a particular model: every sentence is computed from the numbers by the rules
written at the top of ``recommendation.md``, so a different graph or machine gives a different,
still justified, answer.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import platform
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gnn.config import Config
from gnn.files import atomic_write_many
from gnn.scale import ScaleRow
from gnn.tune import TrialRow, TuneOutcome

SUMMARY_MD, RECOMMENDATION_MD = "summary.md", "recommendation.md"
ACCURACY_PNG, CURVES_PNG = "accuracy_vs_latency.png", "learning_curves.png"
ALPHA = 0.05  # significance level quoted next to Welch's p-values

MEMORY_MEASURES = {
    "cuda_max_allocated": "CUDA max allocated bytes above the level at the start of the run",
    "rss_peak_growth": "growth of the process's peak resident memory (kernel high-water mark, "
                       "reset at the start of the run)",
    "rss_growth": "growth of the process's resident memory from start to end of the run "
                  "(a lower bound of the peak)",
}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class Summary:
    """One model x device over its seeds."""

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
        return mean_std(self.values("test_acc"))

    @property
    def f1(self) -> tuple[float, float]:
        return mean_std(self.values("test_macro_f1"))

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
    """Welch's t-test of the best model's test accuracies against another's, same device."""

    best: Summary
    other: Summary
    t: float
    p: float

    @property
    def diff(self) -> float:
        return self.best.acc[0] - self.other.acc[0]


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Welch's t statistic and two-sided p-value; NaN when either side has < 2 values or both
    have no spread (the test is undefined there)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    from scipy.stats import ttest_ind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy returns NaN
        result = ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def best_per_device(summaries: Sequence[Summary]) -> dict[str, Summary]:
    best: dict[str, Summary] = {}
    for s in summaries:
        if s.device not in best or s.acc[0] > best[s.device].acc[0]:
            best[s.device] = s
    return best


def compare_to_best(summaries: Sequence[Summary]) -> list[Comparison]:
    best = best_per_device(summaries)
    return [Comparison(best[s.device], s, *welch(best[s.device].values("test_acc"),
                                                 s.values("test_acc")))
            for s in summaries if s is not best[s.device]]


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
    return f"{mean_and_std[0]:.4f} ± {mean_and_std[1]:.4f}"


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


def _welch_rows(comparisons: Sequence[Comparison]) -> list[list[str]]:
    return [[c.other.device, c.best.name, c.other.name, f"{c.diff:+.4f}",
             "n/a" if math.isnan(c.t) else f"{c.t:.2f}", _p(c.p),
             "n/a" if math.isnan(c.p) else ("yes" if c.p < ALPHA else "no")]
            for c in comparisons]


def _batched_note(summaries: Sequence[Summary]) -> str:
    """Which rows were trained as members of batched runs, and what their times mean."""
    batched = [f"{s.label} ({max(int(r.get('members', 1)) for r in s.rows)} members per run)"
               for s in summaries if any(int(r.get("members", 1)) > 1 for r in s.rows)]
    if not batched:
        return "- Every run trained on its own (one model per run)."
    return ("- Trained batched, several seeds as members of one run: " + ", ".join(batched)
            + ". Their train times are each member's share of the run's wall time "
            "(`run_time_s` in the rows); peak memory is the whole run's.")


def summary_markdown(summaries: Sequence[Summary], meta: dict[str, Any]) -> str:
    first = summaries[0].rows[0]
    versions = first.get("versions", {})
    measures = sorted({row["memory_measure"] for s in summaries for row in s.rows})
    seeds = sorted({int(row["seed"]) for s in summaries for row in s.rows})
    comparisons = compare_to_best(summaries)
    front = pareto_front(summaries)
    parts = [
        f"# Benchmark: {', '.join(sorted({s.dataset for s in summaries}))}",
        "",
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}) per model and device; "
        f"{meta.get('date', time.strftime('%Y-%m-%d %H:%M'))}; gnn {first.get('gnn_version')}, "
        f"torch {versions.get('torch')}, torch_geometric {versions.get('torch_geometric')}, "
        f"python {versions.get('python')}; {first.get('threads')} CPU threads on "
        f"{meta.get('cpu') or platform.machine()}"
        + (f"; GPU {meta['gpu']}" if meta.get("gpu") else "") + ".",
        "",
        f"Command: `{meta['command']}`" if meta.get("command") else "",
        "",
        *([meta["tuned"], ""] if meta.get("tuned") else []),
        markdown_table(SUMMARY_HEADERS, [summary_cells(s) for s in summaries]),
        "",
        "- test_acc, test_macro_f1: mean ± sample std over seeds, on the public test split, for "
        "the weights of the best validation epoch.",
        "- total_train_time_s: the whole fit (training steps, per-epoch validation, model "
        "selection); train_loop_time_s: the training steps only. Medians over seeds (robust to "
        "a run slowed by other load on the machine).",
        f"- avg_forward_ms: median over seeds of each run's median full-graph forward "
        f"(eval mode, `torch.inference_mode`, {first.get('latency_warmup')} warm-up + "
        f"{first.get('latency_iters')} timed calls, device synchronised around each).",
        "- peak_memory_mb: the largest over the runs of the "
        + "; ".join(MEMORY_MEASURES.get(m, m) for m in measures) + ".",
        _batched_note(summaries),
        "",
        "## Is the best model really better?",
        "",
        "Welch's t-test (unequal variances, two-sided) of the per-seed test accuracies of the most "
        f"accurate model on each device against every other model there; `p < {ALPHA}` means "
        "the seeds separate the two, otherwise the difference may be seed noise.",
        "",
        markdown_table(("device", "best", "other", "Δ test_acc", "t", "p", f"p < {ALPHA}"),
                       _welch_rows(comparisons)) if comparisons else "(only one model)",
        "",
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
   minus the best model's standard deviation over seeds, the fastest (lowest median forward
   latency). Within one std, seeds do not tell the models apart, so speed decides.
4. **Pick** the rule-3 model; Welch's p-value against the most accurate model says how sure the
   accuracy gap is.
5. **Trade-offs.** Models on the accuracy-latency Pareto front that are faster than the pick are
   listed with their speed-up, accuracy cost and Welch's p-value against the pick."""


def _describe(s: Summary) -> str:
    mean, std = s.acc
    return (f"**{s.name}**: test accuracy {mean:.4f} ± {std:.4f} over {s.runs} seeds, "
            f"{s.forward_ms:.3f} ms per full-graph forward, {s.median('total_train_time_s'):.1f} s "
            f"to train, peak memory {s.peak_memory_mb:.1f} MB")


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
    """Rules 1-5 on one device's models."""
    candidates, lines = _budget_lines(group, budget)
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
        verdict = ("the most accurate model is also the fastest of those the seeds cannot tell "
                   "apart from it.")
    else:
        _, p = welch(best.values("test_acc"), pick.values("test_acc"))
        gap, speedup = best.acc[0] - pick.acc[0], best.forward_ms / pick.forward_ms
        lines.append(within + f"{', '.join(others)}; the fastest is {_describe(pick)}.")
        separated = ("the seeds do not separate the two" if math.isnan(p) or p >= ALPHA
                     else f"the gap is unlikely to be seed noise (p < {ALPHA}); prefer "
                          f"{best.name} when {gap:.4f} accuracy matters more than "
                          f"{speedup:.1f}x latency")
        verdict = (f"{gap:.4f} below the most accurate model in mean test accuracy (Welch's "
                   f"p = {_p(p)}: {separated}) and {speedup:.1f}x faster per forward pass.")
    lines += ["", f"**Pick {pick.name}**: {verdict}", ""]
    for s in pareto_front(candidates):
        if s.forward_ms < pick.forward_ms:  # necessarily less accurate than one std allows
            _, p = welch(pick.values("test_acc"), s.values("test_acc"))
            noise = "within seed noise" if math.isnan(p) or p >= ALPHA else "a real loss"
            lines.append(f"- Under a tighter latency budget: {s.name} is "
                         f"{pick.forward_ms / s.forward_ms:.1f}x faster per forward at "
                         f"{pick.acc[0] - s.acc[0]:.4f} lower mean test accuracy (Welch's "
                         f"p = {_p(p)}: {noise}).")
    return lines


def recommendation_markdown(summaries: Sequence[Summary], budget: float | None = None) -> str:
    parts = [f"# Recommendation: {', '.join(sorted({s.dataset for s in summaries}))}", "",
             RULES, ""]
    for device in dict.fromkeys(s.device for s in summaries):
        parts += [f"## {device}", ""]
        parts += _device_section([s for s in summaries if s.device == device], budget)
    return "\n".join(parts) + "\n"


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
    """The bench's two markdown files, by file name."""
    return {SUMMARY_MD: summary_markdown(summaries, meta).encode(),
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


def tuning_documents(outcomes: Sequence[TuneOutcome],
                     meta: Mapping[str, Any]) -> dict[str, bytes]:
    """``tuning.md``, ``trials.csv``, and ``best/NAME.yaml`` + ``best/tuning.json``, by path
    relative to the output folder."""
    import json

    files = {TUNING_MD: tuning_markdown(outcomes, meta).encode(),
             TRIALS_CSV: trials_csv(outcomes).encode()}
    tuned = [o for o in outcomes if o.best_config is not None]
    for o in tuned:
        files[f"best/{o.job.name}.yaml"] = tuned_config_yaml(o).encode()
    if tuned:
        files[TUNING_JSON] = (json.dumps(tuning_record(tuned), indent=2, sort_keys=True)
                              + "\n").encode()
    return files
