"""The report's statistics (``gnn.stats``) against hand-computed values and scipy, and their
properties: the variance decomposition sums to the total, pairing ignores row order, ranks
sum as ranks must; every degenerate input gives NaN and a note, never an exception."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from gnn import stats

ACC = st.floats(0.0, 1.0, allow_nan=False)


def keyed(values: dict[tuple[int, int], float]) -> dict[stats.RunKey, float]:
    """(split, seed) -> accuracy, on one dataset."""
    return {("Cora", split, seed): v for (split, seed), v in values.items()}


# --------------------------------------------------------------------------------------------
# Spread


def test_spread_by_hand() -> None:
    """Two splits of two seeds: means 0.81 and 0.71 around 0.76."""
    sp = stats.spread({("Cora", 0): [0.80, 0.82], ("Cora", 1): [0.70, 0.72]})
    ss_between = 2 * 0.05**2 + 2 * 0.05**2
    ss_within = 4 * 0.01**2
    assert sp.mean == pytest.approx(0.76)
    assert sp.var_between == pytest.approx(ss_between / 3)
    assert sp.var_within == pytest.approx(ss_within / 3)
    assert sp.std == pytest.approx(np.std([0.80, 0.82, 0.70, 0.72], ddof=1))
    assert sp.between_share == pytest.approx(ss_between / (ss_between + ss_within))
    assert (sp.runs, sp.splits, sp.notes()) == (4, 2, [])


def test_one_split_leaves_the_between_part_undefined() -> None:
    sp = stats.spread({("Cora", 0): [0.80, 0.82, 0.81]})
    assert math.isnan(sp.std_between) and math.isnan(sp.between_share)
    assert sp.std_within == pytest.approx(np.std([0.80, 0.82, 0.81], ddof=1)) == sp.std
    assert sp.notes() == ["one split only: the between-split variance is undefined, the whole "
                          "spread is over seeds"]


def test_one_seed_per_split_leaves_the_within_part_undefined() -> None:
    sp = stats.spread({("Cora", 0): [0.80], ("Cora", 1): [0.70], ("Cora", 2): [0.75]})
    assert math.isnan(sp.std_within)
    assert sp.std_between == pytest.approx(np.std([0.80, 0.70, 0.75], ddof=1)) == sp.std
    assert "one seed per split" in sp.notes()[0]


@pytest.mark.parametrize(("groups", "runs", "note"), [
    ({("Cora", 0): [0.8]}, 1, "one run: no spread to measure"),
    ({("Cora", 0): [math.nan, 0.8], ("Cora", 1): [math.nan]}, 1,
     "2 run(s) with a NaN test accuracy left out"),
    ({("Cora", 0): [math.nan]}, 0, "no run with a finite test accuracy"),
])
def test_degenerate_spreads_give_a_note(groups: dict[stats.SplitKey, list[float]], runs: int,
                                        note: str) -> None:
    sp = stats.spread(groups)
    assert sp.runs == runs and note in sp.notes()
    assert runs or math.isnan(sp.mean)


split_groups = st.dictionaries(st.tuples(st.just("Cora"), st.integers(0, 9)),
                               st.lists(ACC, min_size=1, max_size=6), min_size=1, max_size=6)


@given(split_groups)
def test_decomposition_sums_to_the_sample_variance(groups: dict[stats.SplitKey, list[float]]
                                                   ) -> None:
    """var_between + var_within is the sample variance of all runs, and the between part is
    the weighted variance of the split means (law of total variance, times N / (N - 1))."""
    values = [v for vs in groups.values() for v in vs]
    sp = stats.spread(groups)
    n = len(values)
    if n < 2:
        assert sp.var == 0.0
        return
    assert sp.var_between + sp.var_within == pytest.approx(np.var(values, ddof=1), abs=1e-12)
    means = np.array([np.mean(vs) for vs in groups.values()])
    sizes = np.array([len(vs) for vs in groups.values()])
    pooled_between = np.sum(sizes * (means - np.mean(values)) ** 2) / n  # Var E[X | split]
    assert sp.var_between * (n - 1) / n == pytest.approx(pooled_between, abs=1e-12)


@given(split_groups, st.randoms(use_true_random=False))
def test_spread_ignores_the_order_of_runs_and_splits(groups: dict[stats.SplitKey, list[float]],
                                                     rng: random.Random) -> None:
    items = [(k, rng.sample(vs, len(vs))) for k, vs in groups.items()]
    rng.shuffle(items)
    a, b = stats.spread(groups), stats.spread(dict(items))
    for name in ("mean", "var", "var_between", "var_within"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), abs=1e-15)


# --------------------------------------------------------------------------------------------
# Paired comparisons


A = keyed({(0, 0): 0.81, (0, 1): 0.83, (1, 0): 0.74, (1, 1): 0.76, (2, 0): 0.79, (2, 1): 0.80,
           (3, 0): 0.70, (3, 1): 0.72})
B = keyed({(0, 0): 0.79, (0, 1): 0.80, (1, 0): 0.73, (1, 1): 0.735, (2, 0): 0.78,
           (2, 1): 0.775, (3, 0): 0.69, (3, 1): 0.715})


def test_paired_test_matches_scipy() -> None:
    diffs = np.array([A[k] - B[k] for k in sorted(A)])
    test = stats.compare(A, B)
    expected = scipy.stats.wilcoxon(diffs)
    assert (test.test, test.pairs) == ("wilcoxon", 8)
    assert test.p == pytest.approx(expected.pvalue) and test.statistic == expected.statistic
    assert test.diff == pytest.approx(diffs.mean())
    interval = scipy.stats.bootstrap((diffs,), np.mean, confidence_level=0.95,
                                     rng=np.random.default_rng(stats.BOOTSTRAP_SEED))
    assert (test.ci_low, test.ci_high) == pytest.approx(tuple(interval.confidence_interval))
    assert test.ci_low < test.diff < test.ci_high
    assert test.significant is bool(expected.pvalue < stats.ALPHA)


def test_pairing_sees_what_welch_cannot() -> None:
    """B is below A on every run but the splits move both far more than the gap: Welch on the
    two samples finds nothing, the paired test does."""
    welch_p = scipy.stats.ttest_ind(list(A.values()), list(B.values()), equal_var=False).pvalue
    assert welch_p > stats.ALPHA
    assert stats.compare(A, B).p < stats.ALPHA


def test_all_differences_zero_is_a_note_not_an_error() -> None:
    test = stats.compare(A, dict(A))
    assert test.test == "wilcoxon" and math.isnan(test.p) and test.significant is None
    assert (test.diff, test.ci_low, test.ci_high) == (0.0, 0.0, 0.0)
    assert any("every paired difference is 0" in note for note in test.notes)


def test_one_run_each() -> None:
    test = stats.compare(keyed({(0, 0): 0.8}), keyed({(0, 0): 0.7}))
    assert test.pairs == 1 and test.diff == pytest.approx(0.1)
    assert test.p == pytest.approx(scipy.stats.wilcoxon([0.1]).pvalue)
    assert math.isnan(test.ci_low) and "one pair: no confidence interval" in test.notes
    assert any("cannot go below 1" in note for note in test.notes)


def test_few_pairs_say_no_difference_could_be_significant() -> None:
    test = stats.compare(keyed({(0, 0): 0.8, (0, 1): 0.9, (1, 0): 0.85}),
                         keyed({(0, 0): 0.7, (0, 1): 0.7, (1, 0): 0.7}))
    assert test.p == pytest.approx(0.25)  # the exact test's floor for 3 pairs: 2 / 2**3
    assert any("cannot go below 0.25" in note for note in test.notes) and test.underpowered
    assert not stats.compare(A, B).underpowered  # 8 pairs: the floor is 2 / 2**8


@pytest.mark.parametrize("pairs", [2, 9, 10, 30])
def test_a_bootstrap_interval_from_few_pairs_is_flagged(pairs: int) -> None:
    rng = np.random.default_rng(pairs)
    a = keyed({(0, seed): float(v) for seed, v in enumerate(rng.uniform(0.7, 0.9, pairs))})
    b = {key: v - 0.01 * (1 + key[2] % 3) for key, v in a.items()}
    flagged = any("too narrow" in note for note in stats.compare(a, b).notes)
    assert flagged is (pairs < stats.MIN_BOOTSTRAP_PAIRS)


def test_disjoint_runs_fall_back_to_welch() -> None:
    a = keyed({(0, 0): 0.81, (0, 1): 0.83, (0, 2): 0.82})
    b = keyed({(1, 0): 0.78, (1, 1): 0.80, (1, 2): 0.75, (1, 3): 0.77})
    test = stats.compare(a, b)
    expected = scipy.stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    assert (test.test, test.pairs) == ("welch", 0)
    assert test.p == pytest.approx(expected.pvalue)
    assert test.statistic == pytest.approx(expected.statistic)
    assert test.diff == pytest.approx(np.mean(list(a.values())) - np.mean(list(b.values())))
    assert math.isnan(test.ci_low) and "unpaired Welch" in test.notes[0]


def test_disjoint_single_runs_have_no_test() -> None:
    test = stats.compare(keyed({(0, 0): 0.8}), keyed({(1, 0): 0.7}))
    assert test.test == "welch" and math.isnan(test.p)
    assert any("undefined" in note for note in test.notes)


def test_partial_overlap_pairs_the_shared_runs() -> None:
    a = {**A, ("Cora", 9, 0): 0.5}
    b = {k: v for k, v in B.items() if k != ("Cora", 3, 1)}
    test = stats.compare(a, b)
    assert test.pairs == 7 and "2 run(s) without a partner" in test.notes[0]


def test_nan_runs_are_left_out() -> None:
    a = {**A, ("Cora", 0, 0): math.nan}
    test = stats.compare(a, B)
    assert test.pairs == 7
    diffs = [A[k] - B[k] for k in sorted(A) if k != ("Cora", 0, 0)]
    assert test.diff == pytest.approx(np.mean(diffs))
    nothing = stats.compare({k: math.nan for k in A}, B)
    assert nothing.test == "none" and math.isnan(nothing.p) and nothing.notes


paired_runs = st.dictionaries(st.tuples(st.integers(0, 4), st.integers(0, 4)),
                              st.tuples(ACC, ACC), min_size=1, max_size=20)


@settings(max_examples=30, deadline=None)
@given(paired_runs, st.randoms(use_true_random=False))
def test_pairing_ignores_row_order(runs: dict[tuple[int, int], tuple[float, float]],
                                   rng: random.Random) -> None:
    """Identical results, bootstrap interval included, whatever order the runs come in."""
    a = keyed({k: v[0] for k, v in runs.items()})
    b = keyed({k: v[1] for k, v in runs.items()})
    order = list(a)
    rng.shuffle(order)
    first, second = stats.compare(a, b), stats.compare({k: a[k] for k in order},
                                                       {k: b[k] for k in reversed(order)})
    assert repr(first) == repr(second)  # NaN-safe equality of every field
    assert first.pairs == len(runs)
    if len(runs) > 1 and not math.isnan(first.ci_low):
        assert first.ci_low <= first.diff + 1e-12 and first.diff <= first.ci_high + 1e-12


# --------------------------------------------------------------------------------------------
# Rank stability


def test_ranks_by_hand_with_a_tie() -> None:
    """Split 0: a > b > c; split 1: b > a > c; split 2: a = b > c (0.1 + 0.2 and 0.3 tie)."""
    means = {"a": {("Cora", 0): 0.8, ("Cora", 1): 0.7, ("Cora", 2): 0.3},
             "b": {("Cora", 0): 0.7, ("Cora", 1): 0.8, ("Cora", 2): 0.1 + 0.2},
             "c": {("Cora", 0): 0.6, ("Cora", 1): 0.6, ("Cora", 2): 0.2}}
    ranks, notes = stats.rank_stability(means)
    assert notes == []
    assert ranks["a"] == stats.Rank(3, 2, (1 + 2 + 1.5) / 3)
    assert ranks["b"] == stats.Rank(3, 2, (2 + 1 + 1.5) / 3)
    assert ranks["c"] == stats.Rank(3, 0, 3.0)
    assert ranks["a"].first_fraction == pytest.approx(2 / 3)


def test_ranks_use_only_splits_every_model_ran() -> None:
    means = {"a": {("Cora", 0): 0.8, ("Cora", 1): 0.7},
             "b": {("Cora", 0): 0.7, ("Cora", 1): math.nan, ("Cora", 2): 0.9}}
    ranks, notes = stats.rank_stability(means)
    assert ranks["a"] == stats.Rank(1, 1, 1.0) and ranks["b"] == stats.Rank(1, 0, 2.0)
    assert notes == ["2 split(s) left out of the ranking: not run (or NaN) for every model"]


@pytest.mark.parametrize(("means", "note"), [
    ({"a": {("Cora", 0): 0.8}}, "only one model: nothing to rank"),
    ({"a": {("Cora", 0): 0.8}, "b": {("Cora", 1): 0.7}}, "no split common to all models"),
])
def test_no_ranking_is_a_note(means: dict[str, dict[stats.SplitKey, float]], note: str) -> None:
    ranks, notes = stats.rank_stability(means)
    assert ranks == {} and note in notes[-1]


@given(st.integers(2, 6).flatmap(lambda k: st.lists(
    st.lists(st.sampled_from([0.7, 0.75, 0.8, 0.85]), min_size=k, max_size=k),
    min_size=1, max_size=8)))
def test_ranks_behave_like_ranks(table: list[list[float]]) -> None:
    """Per split the ranks of k models sum to k (k + 1) / 2, so the mean ranks average to
    (k + 1) / 2; at least one model is first in every split."""
    k = len(table[0])
    means = {f"m{i}": {("Cora", s): row[i] for s, row in enumerate(table)} for i in range(k)}
    ranks, _ = stats.rank_stability(means)
    assert np.mean([r.mean_rank for r in ranks.values()]) == pytest.approx((k + 1) / 2)
    assert sum(r.first for r in ranks.values()) >= len(table)
    assert all(1 <= r.mean_rank <= k for r in ranks.values())
