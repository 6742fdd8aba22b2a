"""Every figure the project draws: the bench's three (accuracy vs latency, learning curves,
accuracy per split), ``gnn scale``'s cost curves and ``gnn tune``'s study figures, rendered
off-screen (Agg) to PNG bytes for an atomic write.

Figures are built with ``matplotlib.figure.Figure`` and an Agg canvas, never ``pyplot``, so no
display, global state or backend switch is involved (safe in tests and on headless machines).
The one exception is Optuna's figures, which Optuna draws with ``pyplot``: each is rendered
the same way and closed at once, under a style context that leaves the global style as it was.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, FuncFormatter, LogLocator, NullFormatter

from gnn.report import ACCURACY_PNG, CURVES_PNG, SPLITS_PNG, Summary, pareto_front
from gnn.scale import ScaleRow


def _colors(n: int) -> list[tuple[float, ...]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def _log_scale(ax: Axes, which: str) -> None:
    """Log scale on axis ``which`` ("x" or "y"), labelled 0.1, 0.2, 0.5, 1, 2, ... rather than in
    powers of ten."""
    getattr(ax, f"set_{which}scale")("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%.3g"))
    axis.set_minor_formatter(NullFormatter())


def _dataset(summaries: Sequence[Summary]) -> str:
    return ", ".join(sorted({s.dataset for s in summaries}))


def accuracy_vs_latency_png(summaries: Sequence[Summary], front: Sequence[Summary]) -> bytes:
    """Mean test accuracy (error bar: std over seeds) against median forward latency (log x),
    one point per model x device; the Pareto front is drawn as a step line through ringed
    points."""
    fig = Figure(figsize=(7.5, 5))
    ax = fig.add_subplot()
    for s, color in zip(summaries, _colors(len(summaries)), strict=True):
        mean, std = s.acc
        ax.errorbar(s.forward_ms, mean, yerr=std, fmt="o", color=color, capsize=4,
                    markersize=7, label=f"{s.label} (n={s.runs})")
        ax.annotate(s.label, (s.forward_ms, mean), textcoords="offset points", xytext=(7, 5),
                    fontsize=9, color=color)
    if front:
        xs = [s.forward_ms for s in front]
        ys = [s.acc[0] for s in front]
        ax.plot(xs, ys, drawstyle="steps-post", linestyle="--", color="0.35", linewidth=1.2,
                zorder=1)
        ax.scatter(xs, ys, s=260, facecolors="none", edgecolors="0.2", linewidths=1.5,
                   zorder=3, label="Pareto front")
    _log_scale(ax, "x")
    ax.set_xlabel("forward latency, full graph (ms, median; log scale)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title(f"{_dataset(summaries)}: accuracy vs latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _mean_band(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    length = min(len(c) for c in curves)
    stacked = np.array([c[:length] for c in curves], dtype=float)
    return stacked.mean(axis=0), stacked.std(axis=0)


def _evaluated_epochs(s: Summary, length: int) -> np.ndarray:
    """The epochs the history's entries belong to (every ``eval_every``-th and the last), from
    the rows' own ``history.epoch``; 1..n for rows recorded without it."""
    epochs = s.rows[0]["history"].get("epoch")
    return np.asarray(epochs[:length] if epochs else range(1, length + 1), dtype=float)


def learning_curves_png(summaries: Sequence[Summary]) -> bytes:
    """Training loss and validation accuracy per epoch: mean line and ± std band over seeds,
    one line per model x device."""
    fig = Figure(figsize=(12, 4.5))
    loss_ax, val_ax = fig.subplots(1, 2)
    losses = []
    for s, color in zip(summaries, _colors(len(summaries)), strict=True):
        for ax, key in ((loss_ax, "train_loss"), (val_ax, "val_acc")):
            mean, std = _mean_band([row["history"][key] for row in s.rows])
            epochs = _evaluated_epochs(s, len(mean))
            ax.plot(epochs, mean, color=color, linewidth=1.4, label=f"{s.label} (n={s.runs})")
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
            if key == "train_loss":
                losses.append(mean)
    low, high = float(np.min(np.concatenate(losses))), float(np.max(np.concatenate(losses)))
    log_scale = low > 0 and high / low > 3  # a log axis only helps over a wide range
    if log_scale:
        _log_scale(loss_ax, "y")
    loss_ax.set_ylabel("training loss" + (" (log scale)" if log_scale else ""))
    val_ax.set_ylabel("validation accuracy")
    for ax in (loss_ax, val_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    val_ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{_dataset(summaries)}: learning curves (mean and ± std band over seeds)")
    return _png(fig)


def _boxes(ax: Axes, groups: Sequence[Sequence[float]], positions: np.ndarray) -> None:
    """Box (quartiles), median line and whiskers from min to max for each non-empty group.
    Drawn from bars and lines: ``Axes.boxplot`` reads every rcParam, which makes matplotlib
    import pyplot to resolve its backend."""
    for x, values in zip(positions, groups, strict=True):
        if not values:
            continue
        low, q1, median, q3, high = np.percentile(values, [0, 25, 50, 75, 100])
        ax.bar(x, q3 - q1, bottom=q1, width=0.55, fill=False, edgecolor="0.2", linewidth=1)
        ax.hlines(median, x - 0.275, x + 0.275, color="0.2", linewidth=1.5)
        ax.vlines([x, x], [low, q3], [q1, high], color="0.2", linewidth=1)
        ax.hlines([low, high], x - 0.1, x + 0.1, color="0.2", linewidth=1)


def accuracy_per_split_png(summaries: Sequence[Summary]) -> bytes:
    """The distribution over splits of each model's test accuracy: one box per model x device
    over its per-split means (mean over that split's seeds; box: quartiles, whiskers: min to
    max). Each split's mean is a point, and a faint line joins one split's points across the
    models: lines that cross are splits on which the ranking changes; boxes that overlap while
    the lines do not are what a paired comparison separates."""
    fig = Figure(figsize=(max(6.0, 1.1 * len(summaries) + 2), 4.8))
    ax = fig.add_subplot()
    per_split = [s.split_means() for s in summaries]
    finite = [[m for m in means.values() if np.isfinite(m)] for means in per_split]
    positions = np.arange(1, len(summaries) + 1)
    _boxes(ax, finite, positions)
    keys = sorted({key for means in per_split for key in means})
    offsets = np.linspace(-0.15, 0.15, len(keys)) if len(keys) > 1 else np.zeros(1)
    for key, offset in zip(keys, offsets, strict=True):
        points = [(x + offset, means[key]) for x, means in zip(positions, per_split, strict=True)
                  if np.isfinite(means.get(key, np.nan))]
        ax.plot(*zip(*points, strict=True), color="0.5", alpha=0.3, linewidth=0.8, zorder=2)
    for x, means, color in zip(positions, per_split, _colors(len(summaries)), strict=True):
        xs = [x + offset for key, offset in zip(keys, offsets, strict=True) if key in means]
        ax.scatter(xs, [means[key] for key in keys if key in means], s=18, color=color,
                   alpha=0.85, zorder=3)
        if not any(np.isfinite(m) for m in means.values()):
            ax.text(x, 0.5, "no finite\naccuracy", ha="center", fontsize=8,
                    transform=ax.get_xaxis_transform())
    ax.set_xticks(positions, [f"{s.label}\n({s.spread.splits} splits)" for s in summaries],
                  fontsize=8, rotation=30 if len(summaries) > 6 else 0)
    ax.set_xlim(0.4, len(summaries) + 0.6)
    ax.set_ylabel("test accuracy (mean over the seeds of a split)")
    ax.set_title(f"{_dataset(summaries)}: accuracy per split (lines join one split)")
    ax.grid(True, axis="y", alpha=0.3)
    return _png(fig)


def bench_figures(summaries: Sequence[Summary]) -> dict[str, bytes]:
    """The bench's figures, by file name."""
    return {ACCURACY_PNG: accuracy_vs_latency_png(summaries, pareto_front(summaries)),
            CURVES_PNG: learning_curves_png(summaries),
            SPLITS_PNG: accuracy_per_split_png(summaries)}


def scale_png(rows: Sequence[ScaleRow], budget_gib: float) -> bytes:
    """Log-log time per epoch and memory against nodes, one colour per model; models skipped
    for the budget are drawn at their predicted memory as crosses."""
    fig = Figure(figsize=(11, 4.2))
    ax_t, ax_m = fig.subplots(1, 2)
    models = list(dict.fromkeys(r.model for r in rows))
    for model, color in zip(models, _colors(len(models)), strict=True):
        ok = [r for r in rows if r.model == model and r.status == "ok"]
        skipped = [r for r in rows if r.model == model and r.status != "ok"]
        xs = [r.num_nodes for r in ok]
        ax_t.plot(xs, [r.epoch_s for r in ok], "o-", color=color, label=model)
        ax_m.plot(xs, [r.step_peak_gib for r in ok], "o-", color=color,
                  label=f"{model}: per training step")
        ax_m.plot(xs, [r.run_peak_gib for r in ok], "s:", color=color, alpha=0.6,
                  label=f"{model}: whole run")
        if skipped:
            ax_m.plot([r.num_nodes for r in skipped], [r.predicted_gib for r in skipped], "x",
                      color=color, markersize=9,
                      label=f"{model}: skipped, predicted (budget {budget_gib:g} GiB)")
    for ax, title, ylabel in ((ax_t, "time per training epoch", "seconds"),
                              (ax_m, "peak memory above the loaded graph", "GiB")):
        _scale_axes(ax, title, ylabel)
    fig.tight_layout()
    return _png(fig)


def _scale_axes(ax: Axes, title: str, ylabel: str) -> None:
    if any(line.get_xydata()[:, 1].max(initial=0) > 0 for line in ax.get_lines()):
        ax.set_xscale("log")
        ax.set_yscale("log", nonpositive="mask")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    else:
        ax.text(0.5, 0.5, "nothing measured", ha="center", transform=ax.transAxes)
    ax.set_xlabel("nodes (average degree fixed)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def tuning_figures(study: Any, name: str) -> dict[str, bytes]:
    """A study's optimisation history and parameter importances (Optuna's matplotlib
    figures), by file name; the importances need two complete trials that differ."""
    import warnings

    import matplotlib
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as optuna_plots

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    figures: dict[str, bytes] = {}
    with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna sets a global style
        warnings.simplefilter("ignore")  # Optuna's plots are marked experimental
        if complete:
            figures[f"{name}-history.png"] = _optuna_png(optuna_plots.plot_optimization_history(
                study, target_name="mean validation accuracy"), f"{name}: optimisation history")
        if len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
            figures[f"{name}-importances.png"] = _optuna_png(
                optuna_plots.plot_param_importances(
                    study, evaluator=FanovaImportanceEvaluator(seed=0),
                    target_name="mean validation accuracy"), f"{name}: parameter importances")
    return figures


def _optuna_png(ax: Axes, title: str) -> bytes:
    """Render a figure Optuna drew with pyplot, then close it there (Optuna's figures are the
    only pyplot figures: each is closed as soon as it is rendered)."""
    from matplotlib import pyplot

    fig = ax.figure
    try:
        for loc in ("left", "right"):  # Optuna's own titles, in whichever place it put them
            ax.set_title("", loc=loc)
        ax.set_title(title)
        return _png(fig)
    finally:
        pyplot.close(fig)
