"""CCS (coverage-centric coreset selection), the budget-aware keep="auto" rule, and per-stratum quotas."""

from __future__ import annotations

import numpy as np
import pytest

from selector.coreset import ccs_bin_quota, ccs_order
from selector.errors import ConfigError
from selector.prototypes import AUTO_EASY_BELOW_FRACTION, SSLPrototypes, auto_keep, keep_scores, resolve_keep
from selector.selection import select_arrays
from selector.strategies import ccs_beta


def test_bin_quota_takes_small_bins_whole_and_splits_the_rest_evenly():
    # budget 30 over 5 bins: the two small bins are taken whole (1 and 2), the other three share 27 equally
    assert ccs_bin_quota([1, 50, 2, 50, 50], 30).tolist() == [1, 9, 2, 9, 9]
    # the official bin_allocate floors each share; the largest bin, visited last, takes the remainder
    assert ccs_bin_quota([10, 10, 10], 20).tolist() == [6, 7, 7]
    assert ccs_bin_quota([0, 3], 10).tolist() == [0, 3]


@pytest.mark.parametrize("seed", range(20))
def test_bin_quota_sums_exactly_and_respects_sizes(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 40, size=rng.integers(1, 30))
    budget = int(rng.integers(0, sizes.sum() + 5))
    q = ccs_bin_quota(sizes, budget)
    assert q.sum() == min(budget, sizes.sum())
    assert np.all(q >= 0) and np.all(q <= sizes)


def test_ccs_order_cuts_the_hardest_beta_share_and_covers_every_bin():
    difficulty = np.linspace(0.0, 1.0, 200)
    order, info = ccs_order(difficulty, 40, beta=0.25, n_bins=4, random_state=0)
    assert info["n_cut"] == 50
    picked = order[:40]
    assert difficulty[picked].max() < difficulty[149] + 1e-12  # nothing from the hardest 25%
    # the uncut rows span [0, 0.75] in 4 equal bins of ~37 rows: 10 rows from each
    assert info["bin_quota"] == [10, 10, 10, 10]
    bins = np.minimum((difficulty[picked] / (difficulty[149] / 4)).astype(int), 3)
    assert np.bincount(bins, minlength=4).tolist() == [10, 10, 10, 10]
    # the order continues through every row: uncut rest, then the cut rows least hard first
    assert sorted(order.tolist()) == list(range(200))
    assert order[-50:].tolist() == list(range(150, 200))


def test_ccs_order_skewed_difficulty_oversamples_the_sparse_bins_relative_to_random():
    rng = np.random.default_rng(0)
    difficulty = np.concatenate([rng.uniform(0, 0.1, 900), rng.uniform(0.9, 1.0, 100)])
    order, info = ccs_order(difficulty, 100, beta=0.0, n_bins=2, random_state=0)
    # random sampling would take ~10 hard rows; CCS gives each of the 2 bins half the budget
    assert (difficulty[order[:100]] > 0.5).sum() == 50
    assert info["bin_sizes"] == [900, 100]


def test_ccs_nan_difficulty_is_never_sampled():
    d = np.array([0.1, np.nan, 0.3, 0.5, np.nan])
    order, _ = ccs_order(d, 3, n_bins=2)
    assert set(order[:3].tolist()) == {0, 2, 3}
    assert order[3:].tolist() == [1, 4]


def test_ccs_beta_auto_follows_the_paper_table():
    assert ccs_beta(9_000, 10_000) == 0.0  # 10% pruned
    assert ccs_beta(5_000, 10_000) == 0.0  # 50%
    assert ccs_beta(3_000, 10_000) == 0.1  # 70%
    assert ccs_beta(2_000, 10_000) == 0.1  # 80%
    assert ccs_beta(1_000, 10_000) == 0.3  # 90%


def test_ccs_strategy_with_a_score_column_and_either_direction():
    n = 300
    scores = np.arange(n, dtype=float)  # e.g. EL2N: high = hard
    ids = [f"r{i:03d}" for i in range(n)]
    sel = select_arrays(None, 30, "ccs", scores=scores, ids=ids, beta=0.2, n_bins=5)
    assert sel.n_selected == 30
    assert scores[sel.mask].max() < 240  # the 60 highest (hardest) were cut
    info = sel.info["all"]
    assert info["difficulty"] == "scores" and info["n_cut"] == 60 and info["beta"] == 0.2
    low = select_arrays(None, 30, "ccs", scores=scores, ids=ids, beta=0.2, n_bins=5, hard="low")
    assert scores[low.mask].min() >= 60  # quality-like score: the 60 lowest were cut
    again = select_arrays(None, 30, "ccs", scores=scores, ids=ids, beta=0.2, n_bins=5)
    assert np.array_equal(sel.mask, again.mask)
    with pytest.raises(ConfigError, match="beta"):
        select_arrays(None, 30, "ccs", scores=scores, beta=1.5)
    with pytest.raises(ConfigError, match="hard"):
        select_arrays(None, 30, "ccs", scores=scores, hard="up")


def test_ccs_strategy_prototype_difficulty_meets_the_budget_at_every_fraction():
    X = np.random.default_rng(1).normal(size=(400, 8)).astype(np.float32)
    for frac, beta in ((0.1, 0.3), (0.3, 0.1), (0.5, 0.0), (0.7, 0.0)):
        sel = select_arrays(X, frac, "ccs", n_clusters=4)
        assert sel.n_selected == round(frac * 400)
        assert sel.info["all"]["beta"] == beta and sel.info["all"]["difficulty"] == "prototype"


def test_auto_keep_is_easy_below_the_fraction_threshold_and_hard_above():
    assert AUTO_EASY_BELOW_FRACTION == 0.2
    assert auto_keep(1_000, 10_000) == "easy"
    assert auto_keep(1_999, 10_000) == "easy"
    assert auto_keep(2_000, 10_000) == "hard"
    assert auto_keep(3_000, 10_000) == "hard"
    assert auto_keep(0, 0) == "easy"
    assert resolve_keep("easy", 9_000, 10_000) == "easy"
    with pytest.raises(ConfigError, match="resolve"):
        keep_scores(np.zeros(3), "auto")
    with pytest.raises(ConfigError, match="keep rule"):
        resolve_keep("medium", 1, 2)


def test_keep_auto_in_the_strategies_and_the_estimator():
    X = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    for name in ("ssl_prototypes", "semdedup", "dbp"):
        small = select_arrays(X, 0.1, name, n_clusters=4, keep="auto")
        large = select_arrays(X, 0.7, name, n_clusters=4, keep="auto")
        assert small.info["all"]["keep"] == "easy" and large.info["all"]["keep"] == "hard", name
    # ssl_prototypes defaults to auto; with it the small budget keeps the rows closest to their prototype
    auto = select_arrays(X, 0.1, "ssl_prototypes", n_clusters=4)
    easy = select_arrays(X, 0.1, "ssl_prototypes", n_clusters=4, keep="easy")
    assert np.array_equal(auto.mask, easy.mask)
    assert SSLPrototypes(n_clusters=4, budget=0.1).fit(X).keep_ == "easy"
    assert SSLPrototypes(n_clusters=4, budget=0.5).fit(X).keep_ == "hard"


@pytest.mark.parametrize("budget", [1, 7, 60, 150, 333, 499, 500])
def test_uniform_stratify_quota_is_equal_capped_and_exact(budget):
    X = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    strata = np.array(["a"] * 400 + ["b"] * 80 + ["c"] * 20)
    sel = select_arrays(X, budget, "random", strata=strata, stratify_quota="uniform")
    per = [int(sel.mask[strata == k].sum()) for k in "abc"]
    assert sum(per) == budget
    sizes = [400, 80, 20]
    # water-filling: a stratum is either full or within one row of the largest share
    assert all(p == size or p >= max(per) - 1 for p, size in zip(per, sizes)), per
    if budget == 150:
        assert per == [65, 65, 20]  # c is capped at its 20 rows, the rest is split between a and b
    proportional = select_arrays(X, budget, "random", strata=strata)
    assert proportional.mask.sum() == budget


def test_stratify_quota_is_checked():
    X = np.zeros((10, 2), dtype=np.float32)
    with pytest.raises(ConfigError, match="stratify_quota"):
        select_arrays(X, 5, "random", strata=["a"] * 10, stratify_quota="equal")
