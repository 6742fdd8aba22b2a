"""The statistics behind the bench report, on plain numbers keyed by run: where the spread of a
model's test accuracy comes from (splits or seeds), comparisons of two models paired on the runs
they share, and how stable the ranking of models is from one split to the next.

Why paired: two models trained on the same split with the same seed are tested on the same test
nodes after training on the same training nodes. Much of what moves an accuracy from run to run
(an easy or a hard split) moves both models alike and cancels in their difference, so a test on
the per-run differences separates models that a test on the two unpaired samples (Welch's)
cannot. Every definition is stated in ``docs/statistics.md``; nothing here raises on degenerate
input (one run, all differences zero, no shared run, NaN): each such case gives NaN where a
number is undefined and a one-line note saying why.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ALPHA = 0.05  # significance level quoted next to every p-value
CONFIDENCE = 0.95  # of the bootstrap interval of a paired mean difference
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_METHOD = "BCa"  # bias-corrected and accelerated; percentile where BCa is undefined
BOOTSTRAP_SEED = 0  # the same resamples on every call: the report is reproducible
MIN_BOOTSTRAP_PAIRS = 10  # below, the interval is flagged as too narrow
RANK_DECIMALS = 10  # split means equal to this many decimals tie (accuracies are k / n_test)

#: A run two models can share: (dataset, split id, seed).
RunKey = tuple[str, int, int]
#: A split of a dataset: (dataset, split id).
SplitKey = tuple[str, int]


def finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if math.isfinite(v)]


# --------------------------------------------------------------------------------------------
# Spread: splits vs seeds


@dataclass(frozen=True)
class Spread:
    """Mean and sample variance of one model's test accuracy over its runs, the variance split
    into a between-split and a within-split (seed) part.

    With N runs in K splits, split s holding n_s runs of mean m_s around the grand mean m, the
    sum of squares splits exactly (one-way ANOVA):
    ``sum (x - m)^2 = sum_s n_s (m_s - m)^2 + sum_s sum_{x in s} (x - m_s)^2``.
    Dividing all three by N - 1 gives ``var = var_between + var_within``: the sample variance
    (whose root is the reported std) and the law of total variance
    ``Var X = Var E[X | split] + E Var[X | split]`` over the runs, scaled by N / (N - 1).
    The between part is undefined with one split and the within part when every split holds one
    run (the numbers are then exactly 0 and say nothing); ``between_defined`` and
    ``within_defined`` tell, and the report prints n/a.
    """

    runs: int  # runs with a finite accuracy
    splits: int
    mean: float
    var: float  # 0 for one run (the convention of the rest of the report), NaN for none
    var_between: float
    var_within: float
    nan_runs: int = 0  # runs left out for a NaN accuracy

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    @property
    def std_between(self) -> float:
        return math.sqrt(self.var_between) if self.between_defined else math.nan

    @property
    def std_within(self) -> float:
        return math.sqrt(self.var_within) if self.within_defined else math.nan

    @property
    def between_defined(self) -> bool:
        return self.splits > 1

    @property
    def within_defined(self) -> bool:
        return self.runs > self.splits

    @property
    def between_share(self) -> float:
        """Fraction of the variance that lies between splits (NaN where undefined)."""
        if not self.between_defined or not self.var > 0:
            return math.nan
        return self.var_between / self.var

    def notes(self) -> list[str]:
        notes = []
        if self.nan_runs:
            notes.append(f"{self.nan_runs} run(s) with a NaN test accuracy left out")
        if self.runs == 0:
            notes.append("no run with a finite test accuracy")
        elif self.runs == 1:
            notes.append("one run: no spread to measure")
        elif not self.between_defined:
            notes.append("one split only: the between-split variance is undefined, the whole "
                         "spread is over seeds")
        elif not self.within_defined:
            notes.append("one seed per split: the within-split (seed) variance is undefined, "
                         "split and seed effects are confounded")
        return notes


def spread(by_split: Mapping[SplitKey, Sequence[float]]) -> Spread:
    """:class:`Spread` of accuracies grouped by split (NaN values are left out and counted)."""
    groups = {split: finite(values) for split, values in by_split.items()}
    nan_runs = sum(len(values) for values in by_split.values()) - sum(map(len, groups.values()))
    groups = {split: values for split, values in groups.items() if values}
    runs = sum(map(len, groups.values()))
    if runs == 0:
        return Spread(0, 0, math.nan, math.nan, math.nan, math.nan, nan_runs)
    mean = math.fsum(v for values in groups.values() for v in values) / runs
    split_means = {split: math.fsum(values) / len(values) for split, values in groups.items()}
    ss_between = math.fsum(len(values) * (split_means[split] - mean) ** 2
                           for split, values in groups.items())
    ss_within = math.fsum((v - split_means[split]) ** 2
                          for split, values in groups.items() for v in values)
    dof = max(runs - 1, 1)
    return Spread(runs, len(groups), mean, (ss_between + ss_within) / dof, ss_between / dof,
                  ss_within / dof, nan_runs)


# --------------------------------------------------------------------------------------------
# Comparing two models


@dataclass(frozen=True)
class Test:
    """One model against another: which test was run, on how many runs, and its numbers.

    ``test`` is ``"wilcoxon"`` (paired on the shared runs), ``"welch"`` (no shared run: the two
    samples unpaired) or ``"none"`` (nothing to test). ``diff`` is a - b: the mean paired
    difference, or the difference of the means for Welch. The interval is the bootstrap
    interval of the mean paired difference (NaN for Welch). ``statistic`` is Wilcoxon's W (the
    smaller signed-rank sum) or Welch's t.
    """

    test: str
    pairs: int
    diff: float
    ci_low: float
    ci_high: float
    statistic: float
    p: float
    notes: tuple[str, ...] = ()
    underpowered: bool = False  # too few non-zero differences for any p below ALPHA

    @property
    def significant(self) -> bool | None:
        """p < ALPHA; None where no p-value could be computed."""
        return None if math.isnan(self.p) else self.p < ALPHA


def compare(a: Mapping[RunKey, float], b: Mapping[RunKey, float]) -> Test:
    """Model a against model b, given each one's test accuracy per run: paired on the runs both
    have (Wilcoxon signed-rank + bootstrap interval of the mean difference); Welch's t-test on
    all runs where they share none. Runs with a NaN accuracy are left out. The result depends
    on the runs, not on the order of the mappings."""
    a = {key: float(v) for key, v in a.items() if math.isfinite(v)}
    b = {key: float(v) for key, v in b.items() if math.isfinite(v)}
    shared = sorted(a.keys() & b.keys())
    if shared:
        unpaired = len(a) + len(b) - 2 * len(shared)
        left_out = (f"{unpaired} run(s) without a partner (split, seed) left out",) \
            if unpaired else ()
        return paired(np.array([a[k] - b[k] for k in shared]), left_out)
    if not a or not b:
        return Test("none", 0, math.nan, math.nan, math.nan, math.nan, math.nan,
                    ("no run with a finite test accuracy on one side",))
    xs, ys = sorted(a.values()), sorted(b.values())
    t, p = welch(xs, ys)
    notes = ["no (split, seed) run in common: unpaired Welch's t-test"]
    if math.isnan(p):
        notes.append("Welch's test is undefined (fewer than 2 runs on a side, or no spread)")
    return Test("welch", 0, math.fsum(xs) / len(xs) - math.fsum(ys) / len(ys), math.nan,
                math.nan, t, p, tuple(notes))


def paired(diffs: np.ndarray, notes: tuple[str, ...] = ()) -> Test:
    """Wilcoxon signed-rank test and bootstrap interval of the mean of paired differences."""
    statistic, p, test_notes = wilcoxon(diffs)
    low, high, ci_notes = bootstrap_mean(diffs)
    nonzero = int(np.count_nonzero(diffs))
    return Test("wilcoxon", len(diffs), math.fsum(diffs) / len(diffs), low, high, statistic, p,
                (*notes, *test_notes, *ci_notes),
                underpowered=nonzero > 0 and wilcoxon_floor(nonzero) >= ALPHA)


def wilcoxon_floor(nonzero: int) -> float:
    """The smallest two-sided p the exact signed-rank test can give with ``nonzero``
    non-zero differences: all of one sign, probability 2 / 2**n under the null."""
    return 2.0 ** (1 - nonzero)


def wilcoxon(diffs: np.ndarray) -> tuple[float, float, list[str]]:
    """``scipy.stats.wilcoxon`` with its defaults (two-sided; zero differences dropped; exact
    null distribution for small samples without ties); NaN and a note where it is undefined."""
    nonzero = int(np.count_nonzero(diffs))
    if nonzero == 0:
        return math.nan, math.nan, ["every paired difference is 0: the models agree on every "
                                    "shared run, no test"]
    from scipy.stats import wilcoxon as scipy_wilcoxon

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = scipy_wilcoxon(diffs)
    except ValueError as exc:  # scipy's own refusals, whatever the version
        return math.nan, math.nan, [f"Wilcoxon test undefined: {exc}"]
    statistic, p = float(result.statistic), float(result.pvalue)
    floor = wilcoxon_floor(nonzero)
    notes = [f"{nonzero} non-zero paired difference(s): Wilcoxon's p cannot go below "
             f"{floor:.3g}, so no difference could be significant"] \
        if floor >= ALPHA and p >= ALPHA else []
    return statistic, p, notes


def bootstrap_mean(diffs: np.ndarray) -> tuple[float, float, list[str]]:
    """``CONFIDENCE`` bootstrap interval of the mean of ``diffs`` (``scipy.stats.bootstrap``,
    BCa, seeded with ``BOOTSTRAP_SEED``); the percentile interval where BCa is undefined."""
    if len(diffs) < 2:
        return math.nan, math.nan, ["one pair: no confidence interval"]
    if np.all(diffs == diffs[0]):
        value = float(diffs[0])
        return value, value, ["every paired difference is the same: the interval is that value"]
    few = [f"bootstrap interval from only {len(diffs)} pairs: too narrow (it never leaves the "
           "range of the differences), read it with the p-value"] \
        if len(diffs) < MIN_BOOTSTRAP_PAIRS else []
    for method in (BOOTSTRAP_METHOD, "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interval = _bootstrap(diffs, method).confidence_interval
        low, high = float(interval.low), float(interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return low, high, few if method == BOOTSTRAP_METHOD else [
                *few, f"{BOOTSTRAP_METHOD} interval undefined: percentile interval"]
    return math.nan, math.nan, ["bootstrap interval undefined"]


def _bootstrap(diffs: np.ndarray, method: str) -> Any:  # scipy's BootstrapResult
    from scipy.stats import bootstrap

    generator = np.random.default_rng(BOOTSTRAP_SEED)
    seeding = {"rng": generator} if "rng" in inspect.signature(bootstrap).parameters \
        else {"random_state": generator}  # scipy < 1.15
    return bootstrap((diffs,), np.mean, confidence_level=CONFIDENCE,
                     n_resamples=BOOTSTRAP_RESAMPLES, method=method, **seeding)


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


# --------------------------------------------------------------------------------------------
# Rank stability over splits


@dataclass(frozen=True)
class Rank:
    """How one model ranks among others over the splits all of them ran on.

    In each split the models are ranked by their mean test accuracy over that split's seeds,
    1 the best. Ties (means equal to ``RANK_DECIMALS`` decimals) share the average of the ranks
    they span, so the ranks of k models always sum to k (k + 1) / 2; every model tied for the
    best mean counts that split as ranking first (the fractions of first places may then sum
    to more than 1).
    """

    splits: int
    first: int
    mean_rank: float

    @property
    def first_fraction(self) -> float:
        return self.first / self.splits


def rank_stability(split_means: Mapping[str, Mapping[SplitKey, float]]
                   ) -> tuple[dict[str, Rank], list[str]]:
    """:class:`Rank` per model from each model's mean accuracy per split; only the splits where
    every model has a finite mean are ranked. Returns the ranks and notes."""
    from scipy.stats import rankdata

    if len(split_means) < 2:
        return {}, ["only one model: nothing to rank"]
    finite_splits = [{s for s, m in means.items() if math.isfinite(m)}
                     for means in split_means.values()]
    everywhere = set.intersection(*finite_splits)
    shared = sorted(everywhere)
    if not shared:
        return {}, ["no split common to all models: no ranking"]
    left_out = set.union(*finite_splits) - everywhere
    notes = [f"{len(left_out)} split(s) left out of the ranking: not run (or NaN) for every "
             "model"] if left_out else []
    names = list(split_means)
    table = np.array([[round(split_means[name][s], RANK_DECIMALS) for s in shared]
                      for name in names])  # models x splits
    ranks = rankdata(-table, axis=0, method="average")
    firsts = table == table.max(axis=0, keepdims=True)
    return {name: Rank(len(shared), int(firsts[i].sum()), float(ranks[i].mean()))
            for i, name in enumerate(names)}, notes
