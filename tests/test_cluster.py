from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError

import selector.cluster as cluster_mod
from selector.cluster import (
    BalancedKMeans,
    KMeans,
    assign,
    cluster_centers,
    faiss_available,
    l2_normalize,
    resolve_backend,
)
from selector.errors import ConfigError, DataError, MissingDependencyError

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed (vlselect[faiss])")
BACKENDS = [pytest.param("faiss", marks=needs_faiss), "sklearn"]


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(2000, n_features=12, centers=15, cluster_std=4.0, random_state=0)
    return X.astype(np.float32), y


@needs_faiss
@pytest.mark.parametrize("spherical", [False, True])
def test_faiss_and_sklearn_inertia_agree(blobs, spherical):
    X, _ = blobs
    inertia = {}
    for backend in ("faiss", "sklearn"):
        km = KMeans(15, spherical=spherical, backend=backend, n_init=2, random_state=0).fit(X)
        assert km.backend_ == backend
        assert km.labels_.shape == (2000,) and km.cluster_centers_.shape == (15, 12)
        inertia[backend] = km.inertia_
    assert abs(inertia["faiss"] / inertia["sklearn"] - 1) < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_result_and_predict_matches_labels(blobs, backend):
    X, _ = blobs
    a = KMeans(8, backend=backend, random_state=3).fit(X)
    b = KMeans(8, backend=backend, random_state=3).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.predict(X), a.labels_)
    # inertia is the sum of squared distances to the assigned centroid
    ref = ((X - a.cluster_centers_[a.labels_]) ** 2).sum()
    assert a.inertia_ == pytest.approx(float(ref), rel=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_spherical_centroids_are_unit_and_assignment_is_cosine(blobs, backend):
    X, _ = blobs
    km = KMeans(6, spherical=True, backend=backend, random_state=0).fit(X * 7.0)
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0, atol=1e-5)
    cos = l2_normalize(X) @ km.cluster_centers_.T
    np.testing.assert_array_equal(km.labels_, np.argmax(cos, axis=1))
    # scale does not change a cosine clustering
    np.testing.assert_array_equal(km.predict(X), km.labels_)


def test_recovers_planted_clusters(blobs):
    from sklearn.metrics import adjusted_rand_score

    X, y = make_blobs(600, n_features=8, centers=5, cluster_std=0.5, random_state=1)
    labels = KMeans(5, random_state=0).fit_predict(X)
    assert adjusted_rand_score(y, labels) > 0.99


def test_constructible_without_arguments_and_stores_params():
    km = KMeans()
    assert km.n_clusters == 8 and km.backend == "auto" and km.random_state == 0
    assert not hasattr(km, "labels_")


def test_bad_input_errors():
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(DataError, match="larger than the number of rows"):
        KMeans(11).fit(X)
    bad = X.copy()
    bad[4, 1] = np.nan
    with pytest.raises(DataError, match="NaN or inf"):
        KMeans(2).fit(bad)
    with pytest.raises(DataError, match="2-D"):
        KMeans(2).fit(X[:, 0])
    with pytest.raises(ConfigError, match="n_clusters must be a positive integer"):
        KMeans(0).fit(X)
    with pytest.raises(ConfigError, match="unknown k-means backend"):
        KMeans(2, backend="cuml").fit(X)
    with pytest.raises(NotFittedError, match="not fitted"):
        KMeans(2).predict(X)
    with pytest.raises(ConfigError, match="random_state"):
        KMeans(2, random_state="seven").fit(X)
    km = KMeans(2).fit(X)
    with pytest.raises(DataError, match="X has 2 features, but KMeans is expecting 3 features"):
        km.predict(X[:, :2])
    with pytest.raises(DataError, match="NaN or infinite"):
        km.predict(bad)


def test_backend_resolution_without_faiss(monkeypatch):
    monkeypatch.setattr(cluster_mod, "faiss_available", lambda: False)
    assert resolve_backend("auto") == "sklearn"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"vlselect\[faiss\]"):
        resolve_backend("faiss")
    X = np.random.default_rng(0).normal(size=(50, 4))
    assert KMeans(3).fit(X).backend_ == "sklearn"


def test_assign_blocks_match_bruteforce(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    C = rng.normal(size=(7, 5)).astype(np.float32)
    monkeypatch.setattr(cluster_mod, "_ASSIGN_BLOCK", 16)
    labels, sq = assign(X, C)
    d = ((X[:, None, :] - C[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, d.argmin(1))
    np.testing.assert_allclose(sq, d.min(1), rtol=1e-4, atol=1e-4)


def test_cluster_centers_of_given_labels():
    X = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    C = cluster_centers(X, np.array([0, 0, 1]), 3, spherical=False)
    np.testing.assert_allclose(C, [[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    np.testing.assert_allclose(cluster_centers(X, np.array([0, 0, 1]), 2), [[1.0, 0.0], [0.0, 1.0]])


def balanced_blobs(sizes, d=6, spread=0.05, seed=0):
    """Blobs of the given sizes around the first ``len(sizes)`` unit axes (times 3), with their labels."""
    rng = np.random.default_rng(seed)
    centers = np.eye(d)[: len(sizes)] * 3.0
    X = np.concatenate([centers[j] + spread * rng.normal(size=(n, d)) for j, n in enumerate(sizes)])
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return X.astype(np.float32), truth


def test_balanced_kmeans_recovers_already_balanced_balanced_blobs():
    X, truth = balanced_blobs([20, 20, 20])
    bkm = BalancedKMeans(n_clusters=3, spherical=False, random_state=0).fit(X)
    assert bkm.subset_size_ == 20 and bkm.n_dropped_ == 0 and bkm.n_moved_ == 0
    # the same partition as the blobs, up to the cluster numbering
    pairs = set(zip(bkm.labels_.tolist(), truth.tolist()))
    assert len(pairs) == 3


def test_balanced_kmeans_equal_sizes_moves_excess_and_drops_the_farthest():
    X, truth = balanced_blobs([30, 12, 9], spread=0.2, seed=1)
    stray = X[:1].copy()
    stray[0, 5] += 1.5  # row 51: still in the big blob, but farther from its centre than any other row
    X = np.concatenate([X, stray])
    bkm = BalancedKMeans(n_clusters=3, spherical=False, random_state=0).fit(X)
    n = X.shape[0]
    assert bkm.subset_size_ == n // 3 == 17 and bkm.n_dropped_ == n % 3 == 1
    assert np.bincount(bkm.labels_[bkm.labels_ >= 0]).tolist() == [17, 17, 17]
    assert bkm.labels_[51] == -1  # the stray row is the dropped remainder row
    # the big blob has 13 rows too many: exactly those moved, and only rows of the big blob moved
    big = np.bincount(truth).argmax()
    assert bkm.n_moved_ == 13
    dist = ((X[:, None, :] - bkm.cluster_centers_[None]) ** 2).sum(-1)
    moved = np.flatnonzero((bkm.labels_ >= 0) & (bkm.labels_ != dist.argmin(1)))
    assert set(truth[moved].tolist()) == {big}
    # the rows that stayed in the big blob's cluster are its closest ones
    home = dist.argmin(1)[np.flatnonzero(truth == big)[0]]
    stayed = np.flatnonzero(bkm.labels_ == home)
    assert dist[stayed, home].max() <= dist[moved, home].min()


def test_balanced_kmeans_same_seed_same_labels_and_fewer_rows_than_clusters():
    X, _ = balanced_blobs([7, 11, 5], spread=0.5, seed=3)
    a = BalancedKMeans(n_clusters=4, random_state=7).fit_predict(X)
    b = BalancedKMeans(n_clusters=4, random_state=7).fit_predict(X)
    assert np.array_equal(a, b)
    assert np.bincount(a[a >= 0]).tolist() == [5, 5, 5, 5] and (a == -1).sum() == 3
    with pytest.raises(DataError, match="larger than the number of rows"):
        BalancedKMeans(n_clusters=30).fit(X)


def test_balanced_kmeans_moved_to_the_clustering_module_and_still_importable_from_labels():
    import selector
    import selector.labels

    assert selector.labels.BalancedKMeans is BalancedKMeans is selector.BalancedKMeans
    assert BalancedKMeans.__module__ == "selector.cluster"


def test_spectral_clustering_is_reachable_from_this_module_without_an_import_cycle():
    import subprocess
    import sys

    # importing the k-means module alone must not import the spectral one (it is resolved on first access)
    code = "import sys, selector.cluster as c; print('selector.spectral' in sys.modules); c.SpectralClustering"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    from selector.spectral import SpectralClustering

    assert cluster_mod.SpectralClustering is SpectralClustering
    with pytest.raises(AttributeError):
        cluster_mod.NoSuchEstimator  # noqa: B018
