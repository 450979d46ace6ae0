from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from selector.errors import ConfigError, DataError
from selector.prototypes import (
    SemDeDup,
    SSLPrototypes,
    centroid_distance,
    cluster_complexity,
    keep_scores,
    max_previous_similarity,
    semdedup,
)


def reference_semdedup(X, labels, priority, eps_list):
    """The definition, as an O(n^2) double loop in float64."""
    n = X.shape[0]
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    max_sim = np.full(n, -np.inf)
    nearest = np.full(n, -1)
    for c in np.unique(labels):
        rows = [i for i in range(n) if labels[i] == c]
        rows.sort(key=lambda i: (-priority[i], i))
        for pos, j in enumerate(rows):
            for i in rows[:pos]:
                s = float(Xn[i] @ Xn[j])
                if s > max_sim[j]:
                    max_sim[j], nearest[j] = s, i
    keep, dup_of = [], []
    for eps in eps_list:
        removed = max_sim > 1 - eps
        root = np.full(n, -1)
        for j in range(n):
            if removed[j]:
                i = nearest[j]
                while removed[i]:
                    i = nearest[i]
                root[j] = i
        keep.append(~removed)
        dup_of.append(root)
    return max_sim, nearest, np.array(keep), np.array(dup_of)


def clustered_data(seed=0, n=240, d=6, k=4):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    labels = rng.integers(0, k, size=n)
    X = centers[labels] + rng.normal(size=(n, d))
    # plant near-copies and an exact copy so several eps thresholds matter
    X[10] = X[11] + 1e-3
    X[20] = X[21]
    labels[10], labels[20] = labels[11], labels[21]
    return X.astype(np.float32), labels


@pytest.mark.parametrize("block_size", [7, 64, 1 << 22])
def test_semdedup_matches_quadratic_loop(block_size):
    X, labels = clustered_data()
    priority = np.random.default_rng(1).random(X.shape[0])
    eps = [0.001, 0.02, 0.1, 0.3]
    res = semdedup(X, labels, eps, priority=priority, block_size=block_size)
    ref_sim, ref_nearest, ref_keep, ref_dup = reference_semdedup(X.astype(np.float64), labels, priority, eps)
    np.testing.assert_allclose(res.max_similarity, ref_sim, atol=1e-5)
    np.testing.assert_array_equal(res.nearest, ref_nearest)
    # rows within float32 error of a threshold may legitimately fall either way
    safe = np.abs(ref_sim[None, :] - (1 - np.array(eps))[:, None]) > 1e-5
    assert np.array_equal(res.keep[safe], ref_keep[safe])
    assert np.array_equal(
        res.dup_of[safe.all(0)[None, :].repeat(len(eps), 0)], ref_dup[safe.all(0)[None, :].repeat(len(eps), 0)]
    )
    # every removed row names a kept row of its own cluster
    for t in range(len(eps)):
        removed = ~res.keep[t]
        assert np.all(res.keep[t][res.dup_of[t][removed]])
        assert np.all(labels[res.dup_of[t][removed]] == labels[removed])
        assert np.all(res.dup_of[t][~removed] == -1)


def test_semdedup_keeps_the_preferred_copy():
    X, labels = clustered_data()
    priority = np.zeros(X.shape[0])
    priority[21] = 1.0  # 21 is preferred over its exact copy 20
    res = semdedup(X, labels, 0.001, priority=priority)
    assert res.keep[0, 21] and not res.keep[0, 20]
    assert res.dup_of[0, 20] == 21
    more = semdedup(X, labels, [0.001, 0.5])
    assert more.keep[1].sum() < more.keep[0].sum()


def test_semdedup_memory_is_bounded_by_the_block():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 8)).astype(np.float32)
    labels = np.zeros(3000, dtype=np.int64)  # one cluster: a full similarity matrix would take 36 MB
    tracemalloc.start()
    try:
        max_previous_similarity(X, labels, block_size=1 << 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, peak


def test_centroid_distance_and_keep_scores():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    C = np.array([[2.0, 0.0]])
    d = centroid_distance(X, C, np.zeros(3, dtype=int))
    np.testing.assert_allclose(d, [0.0, 1.0, 2.0], atol=1e-6)
    assert np.argmax(keep_scores(d, "hard")) == 2
    assert np.argmax(keep_scores(d, "easy")) == 0
    r1, r2 = keep_scores(d, "random", 5), keep_scores(d, "random", 5)
    np.testing.assert_array_equal(r1, r2)
    with pytest.raises(ConfigError, match="keep rule"):
        keep_scores(d, "medium")


def test_cluster_complexity_against_definition():
    rng = np.random.default_rng(0)
    C = rng.normal(size=(6, 4))
    X = rng.normal(size=(60, 4))
    labels = rng.integers(0, 6, 60)
    dist = centroid_distance(X, C, labels)
    d_intra, d_inter = cluster_complexity(dist, labels, C, n_neighbors=3, block_size=7)
    Cn = C / np.linalg.norm(C, axis=1, keepdims=True)
    for j in range(6):
        assert d_intra[j] == pytest.approx(dist[labels == j].mean(), abs=1e-6)
        sims = np.delete(Cn @ Cn[j], j)
        assert d_inter[j] == pytest.approx(np.mean(1 - np.sort(sims)[-3:]), abs=1e-5)
    _, single = cluster_complexity(dist, np.zeros(60, dtype=int), C[:1])
    assert single.tolist() == [1.0]


def test_ssl_prototypes_estimator():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 8))
    est = SSLPrototypes(n_clusters=5, keep="hard", budget=0.25, random_state=0).fit(X)
    mask = est.predict(X)
    assert mask.sum() == 50
    assert est.distance_[mask].min() >= est.distance_[~mask].max() - 1e-6
    easy = SSLPrototypes(n_clusters=5, keep="easy", budget=50).fit(X)
    assert est.distance_[easy.predict(X)].max() <= est.distance_[~easy.predict(X)].min() + 1e-6
    assert SSLPrototypes().n_clusters == 100
    with pytest.raises(NotFittedError, match="not fitted"):
        SSLPrototypes().score_samples(X)
    with pytest.raises(ConfigError, match="budget"):
        SSLPrototypes(n_clusters=2, budget=1.5).fit(X)
    with pytest.raises(ConfigError, match="budget"):
        SSLPrototypes(n_clusters=2, budget=0).fit(X)


@pytest.mark.parametrize(("budget", "n_kept"), [(0.5, 3), (0.3, 2), (0.1, 1), ("40%", 2), (2.0, 2), (9, 5)])
def test_ssl_prototypes_budget_follows_the_shared_rule(budget, n_kept):
    # selector.rows.resolve_budget: fractions round half up (0.5 of 5 rows is 3), counts are capped at the rows
    X = np.random.default_rng(0).normal(size=(5, 4))
    assert SSLPrototypes(n_clusters=2, budget=budget).fit(X).predict(X).sum() == n_kept


def test_semdedup_estimator():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 8))
    X[3] = X[2] * 1.5  # same direction: cosine 1
    est = SemDeDup(n_clusters=3, eps=0.01).fit(X)
    mask = est.predict(X)
    assert mask.sum() == 79 and not (mask[2] and mask[3])
    assert est.score_samples(X).shape == (80,)
    with pytest.raises(DataError, match="fitted on"):
        est.predict(X[:10])


def test_semdedup_bad_input():
    X, labels = clustered_data()
    with pytest.raises(ConfigError, match="eps"):
        semdedup(X, labels, -0.1)
    with pytest.raises(DataError, match="one entry per row"):
        semdedup(X, labels[:5])
    with pytest.raises(DataError, match="non-negative"):
        semdedup(X, labels - 5)
    with pytest.raises(ConfigError, match="block_size"):
        max_previous_similarity(X, labels, block_size=0)
