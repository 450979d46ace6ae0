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
