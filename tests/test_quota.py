from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from selector.errors import ConfigError
from selector.quota import (
    compute_quota,
    dbp_quota,
    dbp_weights,
    project_capped_simplex,
    proportional_quota,
    round_preserving_total,
    uniform_quota,
)


def qp_projection(y, lower, upper, total):
    """The projection as a generic QP (scipy's trust-constr), independent of the sorting algorithm under test."""
    from scipy.optimize import Bounds, LinearConstraint

    x0 = np.clip(np.full_like(y, total / y.size), lower, upper)
    res = minimize(
        lambda x: 0.5 * np.sum((x - y) ** 2),
        x0,
        jac=lambda x: x - y,
        hess=lambda x: np.eye(x.size),
        bounds=Bounds(lower, upper),
        constraints=[LinearConstraint(np.ones((1, y.size)), total, total)],
        method="trust-constr",
        options={"gtol": 1e-10, "xtol": 1e-12, "maxiter": 5000},
    )
    return res.x


@pytest.mark.parametrize("seed", range(5))
def test_projection_matches_generic_qp(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 25))
    sizes = rng.integers(1, 60, size=k).astype(float)
    total = float(rng.integers(1, int(sizes.sum()) + 1))
    lower = np.minimum(np.floor(total / k * 0.5), sizes)
    y = total * rng.dirichlet(np.ones(k) * 0.5)
    ours = project_capped_simplex(y, lower, sizes, total)
    ref = qp_projection(y, lower, sizes, total)
    # the interior-point QP is accurate to ~1e-3; the exact projection must be at least as good as it.
    np.testing.assert_allclose(ours, ref, atol=1e-2)
    assert 0.5 * np.sum((ours - y) ** 2) <= 0.5 * np.sum((ref - y) ** 2) + 1e-6
    assert ours.sum() == pytest.approx(total)
    assert np.all(ours >= lower - 1e-9) and np.all(ours <= sizes + 1e-9)


def test_dbp_quota_matches_qp_then_rounding():
    rng = np.random.default_rng(3)
    sizes = rng.integers(5, 80, size=12)
    d_intra, d_inter = rng.uniform(0.05, 0.6, 12), rng.uniform(0.2, 1.0, 12)
    budget = 150
    q = dbp_quota(sizes, budget, d_intra=d_intra, d_inter=d_inter)
    weights = np.exp(d_intra * d_inter / 0.5)
    weights /= weights.sum()
    floor = np.minimum(int(budget / 12 * 0.5), sizes)
    ref = qp_projection(budget * weights, floor.astype(float), sizes.astype(float), budget)
    assert q.sum() == budget
    assert np.all(np.abs(q - ref) < 1.0 + 1e-6)  # rounding moves each entry by less than one
    assert np.all(q >= floor) and np.all(q <= sizes)


def test_dbp_weights_favour_complex_clusters():
    w = dbp_weights([0.1, 0.4], [1.0, 1.0])
    assert w.sum() == pytest.approx(1.0) and w[1] > w[0]
    with pytest.raises(ConfigError, match="temperature"):
        dbp_weights([0.1], [0.1], temperature=0)
    with pytest.raises(ConfigError, match="same shape"):
        dbp_weights([0.1, 0.2], [0.1])
    with pytest.raises(ConfigError, match="finite"):
        dbp_weights([np.nan], [0.1])


def test_proportional_examples():
    assert proportional_quota([50, 30, 20], 10).tolist() == [5, 3, 2]
    # every cluster gets one while the budget covers the clusters, even a tiny one
    assert proportional_quota([1000, 1000, 1], 3).tolist() == [1, 1, 1]
    # fewer rows than clusters: the largest clusters get one each, ties by index
    assert proportional_quota([5, 9, 9, 2], 2).tolist() == [0, 1, 1, 0]
    # budget beyond the pool is capped at the pool
    assert proportional_quota([2, 3], 100).tolist() == [2, 3]
    assert proportional_quota([4, 0, 6], 5).tolist() == [2, 0, 3]
    assert proportional_quota([], 0).tolist() == []


def test_uniform_water_fills_small_clusters():
    assert uniform_quota([2, 50, 50], 30).tolist() == [2, 14, 14]
    assert uniform_quota([10, 10, 10], 7).sum() == 7


def test_compute_quota_dispatch_and_errors():
    assert compute_quota("uniform", [3, 3], 4).tolist() == [2, 2]
    with pytest.raises(ConfigError, match="unknown quota"):
        compute_quota("nope", [3], 1)
    with pytest.raises(ConfigError, match="non-negative integer"):
        proportional_quota([3, 4], -1)
    with pytest.raises(ConfigError, match="non-negative integers"):
        proportional_quota([3, -4], 1)
    with pytest.raises(ConfigError, match="one value per cluster"):
        dbp_quota([3, 4], 2, d_intra=[0.1], d_inter=[0.1, 0.2])


def test_projection_rejects_infeasible_total():
    with pytest.raises(ConfigError, match="outside"):
        project_capped_simplex([1.0, 1.0], [0, 0], [1, 1], 3)
    with pytest.raises(ConfigError, match="lower bound"):
        project_capped_simplex([1.0], [2], [1], 1)


def test_rounding_keeps_total_on_near_integers():
    x = np.array([2.9999999999, 1.0000000001, 3.0])
    assert round_preserving_total(x, 0, 5, 7).tolist() == [3, 1, 3]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=30),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(["proportional", "uniform", "dbp"]),
)
def test_quota_properties(sizes, frac, seed, method):
    sizes = np.array(sizes)
    budget = int(round(frac * sizes.sum()))
    rng = np.random.default_rng(seed)
    kwargs = {}
    if method == "dbp":
        kwargs = {"d_intra": rng.uniform(0, 1, sizes.size), "d_inter": rng.uniform(0, 1, sizes.size)}
    q = compute_quota(method, sizes, budget, **kwargs)
    assert q.sum() == budget
    assert np.all(q >= 0) and np.all(q <= sizes)
    nonempty = sizes > 0
    if method == "dbp":
        floor = np.minimum(int(budget / max(nonempty.sum(), 1) * 0.5), sizes)
        assert np.all(q[nonempty] >= floor[nonempty])
    if method == "proportional" and budget >= nonempty.sum():
        assert np.all(q[nonempty] >= 1)


def test_large_k_projection_runs_vectorised():
    rng = np.random.default_rng(0)
    k = 50_000
    sizes = rng.integers(1, 200, size=k)
    q = dbp_quota(sizes, 1_000_000, d_intra=rng.uniform(0, 1, k), d_inter=rng.uniform(0, 1, k))
    assert q.sum() == 1_000_000 and np.all(q <= sizes)


def test_quality_quota_discounts_low_quality_clusters():
    from selector.quota import proportional_quota, quality_quota

    sizes = np.array([40, 40, 20])
    # cluster 1 holds only poor rows: its share moves to the others, it keeps its floor of one row.
    q = quality_quota(sizes, 50, mass=np.array([36.0, 2.0, 18.0]))
    assert q.sum() == 50 and np.all(q <= sizes) and q[1] >= 1
    assert q[1] < proportional_quota(sizes, 50)[1]
    assert q[0] > q[2]
    # equal qualities give the proportional quotas; NaN mass counts 0 and an all-zero mass falls back.
    np.testing.assert_array_equal(quality_quota(sizes, 50, mass=sizes * 0.5), proportional_quota(sizes, 50))
    np.testing.assert_array_equal(quality_quota(sizes, 50, mass=np.zeros(3)), proportional_quota(sizes, 50))
    assert quality_quota(sizes, 50, mass=np.array([np.nan, 1.0, 1.0])).sum() == 50
    with pytest.raises(ConfigError, match="shape"):
        quality_quota(sizes, 50, mass=np.ones(2))


def test_instructiongpt4_quality_quota_keeps_a_junk_cluster_small():
    from selector import select_arrays

    rng = np.random.default_rng(0)
    clusters = np.repeat([0, 1, 2], [40, 40, 20])
    scores = rng.uniform(0.5, 1.0, size=100)
    scores[clusters == 1] = rng.uniform(0.0, 0.2, size=40)  # a cluster of junk
    prop = select_arrays(None, 50, "instructiongpt4", scores=scores, clusters=clusters)
    qual = select_arrays(None, 50, "instructiongpt4", scores=scores, clusters=clusters, quota="quality")
    assert qual.mask.sum() == prop.mask.sum() == 50
    assert qual.mask[clusters == 1].sum() < prop.mask[clusters == 1].sum()
    assert qual.mask[clusters == 1].sum() >= 1
    with pytest.raises(ConfigError, match="needs scores"):
        select_arrays(np.eye(100, 8, dtype="float32"), 50, "instructiongpt4", clusters=clusters, quota="quality")


def test_quality_quota_fills_clusters_without_mass_when_the_others_are_full():
    from selector.quota import quality_quota

    # cluster 1 has no quality mass (all NaN scores) but the budget needs its rows: it must not hang.
    q = quality_quota(np.array([5, 5, 4]), 12, mass=np.array([3.0, 0.0, 2.0]))
    assert q.tolist() == [5, 3, 4]
    q = quality_quota(np.array([5, 5]), 8, mass=np.array([1.0, np.nan]))
    assert q.tolist() == [5, 3]


def brute_force_balanced(quotas, labels, quality, balance):
    """The best summed quality over every per-cluster count vector within the bounds (each cluster takes its best
    rows), by enumeration: independent of the greedy under test."""
    import itertools

    sizes = np.bincount(labels, minlength=quotas.size)
    lower = np.floor(quotas / balance).astype(int)
    upper = sizes if np.isinf(balance) else np.minimum(sizes, np.ceil(quotas * balance).astype(int))
    best = -np.inf
    for counts in itertools.product(*(range(lo, hi + 1) for lo, hi in zip(lower, upper))):
        if sum(counts) != quotas.sum():
            continue
        total = sum(np.sort(quality[labels == j])[::-1][:c].sum() for j, c in enumerate(counts))
        best = max(best, total)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("balance", [1.0, 1.5, 2.0, np.inf])
def test_balanced_quota_is_the_best_within_its_bounds(seed, balance):
    from selector.prototypes import keep_order
    from selector.quota import balanced_quota

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=24)
    labels[:4] = np.arange(4)  # every cluster non-empty
    quality = rng.uniform(size=24)
    sizes = np.bincount(labels, minlength=4)
    quotas = proportional_quota(sizes, int(rng.integers(4, 20)))
    order = keep_order(np.zeros(24, dtype=np.int64), quality)
    q = balanced_quota(quotas, labels, order, balance)
    assert q.sum() == quotas.sum() and np.all(q <= sizes)
    assert np.all(q >= np.floor(quotas / balance)) and np.all(q <= np.ceil(quotas * balance))
    got = sum(np.sort(quality[labels == j])[::-1][:c].sum() for j, c in enumerate(q))
    assert got == pytest.approx(brute_force_balanced(quotas, labels, quality, balance))
    if balance == 1:
        np.testing.assert_array_equal(q, quotas)
    if np.isinf(balance):  # plain top-k: the counts of the best rows of the pool
        top = order[: quotas.sum()]
        np.testing.assert_array_equal(q, np.bincount(labels[top], minlength=4))


def test_balanced_quota_rejects_bad_balance_and_shapes():
    from selector.quota import balanced_quota

    for bad in (0.5, 0, -1, "2", True, float("nan"), None):
        with pytest.raises(ConfigError, match="balance must be a number >= 1"):
            balanced_quota(np.array([1, 1]), np.array([0, 1]), np.array([0, 1]), bad)
    with pytest.raises(ConfigError, match="one entry per row"):
        balanced_quota(np.array([1, 1]), np.array([0, 1]), np.array([0]), 2.0)


def test_instructiongpt4_balance_trades_a_cluster_s_worst_rows_for_better_ones():
    """Strict quotas keep a poor cluster's share; a balance lets better rows elsewhere replace its worst rows, but
    never below half its share, and the selection stays deterministic and permutation invariant."""
    from selector import select_arrays

    rng = np.random.default_rng(1)
    clusters = np.repeat([0, 1, 2], [40, 40, 20])
    scores = rng.uniform(0.5, 1.0, size=100)
    scores[40:60] = rng.uniform(0.0, 0.1, size=20)  # half of cluster 1 is junk
    ids = np.array([f"r{i:03d}" for i in range(100)], dtype=object)
    strict = select_arrays(None, 70, "instructiongpt4", scores=scores, clusters=clusters, ids=ids)
    loose = select_arrays(None, 70, "instructiongpt4", scores=scores, clusters=clusters, ids=ids, balance=2)
    junk = np.zeros(100, bool)
    junk[40:60] = True
    assert strict.mask.sum() == loose.mask.sum() == 70
    assert strict.mask[junk].sum() == 8 and loose.mask[junk].sum() == 0  # quota 28 of cluster 1's 20 good rows
    assert loose.mask[clusters == 1].sum() >= 14  # floor: half of the strict share
    assert loose.info["all"]["strict_quota"] == strict.info["all"]["quota"] and loose.info["all"]["balance"] == 2.0
    perm = rng.permutation(100)
    again = select_arrays(
        None, 70, "instructiongpt4", scores=scores[perm], clusters=clusters[perm], ids=ids[perm], balance=2
    )
    assert set(ids[perm][again.mask]) == set(ids[loose.mask])
    with pytest.raises(ConfigError, match="balance"):
        select_arrays(None, 70, "instructiongpt4", scores=scores, clusters=clusters, balance=0.5)
