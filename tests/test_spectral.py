"""SpectralClustering: agreement with scikit-learn, planted clusters, approximate kNN, memory, errors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import sparse
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score

from selector import knn, spectral
from selector.errors import ConfigError, DataError, DataTypeError, MissingDependencyError
from selector.knn import knn_graph
from selector.spectral import SpectralClustering, spectral_embedding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blobs(n: int, k: int, d: int = 16, spread: float = 0.3, seed: int = 0):
    """``k`` well-separated Gaussian blobs of ``n`` rows in total (float32), with their planted labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 4.0
    y = np.arange(n) % k
    rng.shuffle(y)
    X = (centres[y] + rng.normal(scale=spread, size=(n, d))).astype(np.float32)
    return X, y


def touching_blobs(n: int, seed: int = 0):
    """Three blobs close enough that the kNN graph is connected (a single component)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [1.5, 2.6]])
    y = np.arange(n) % 3
    return (centres[y] + rng.normal(scale=0.7, size=(n, 2))).astype(np.float32), y


@pytest.mark.parametrize("solver", ["lobpcg", "arpack", "subspace"])
def test_recovers_planted_clusters(solver):
    X, y = blobs(1500, 6)
    sc = SpectralClustering(n_clusters=6, eigen_solver=solver, random_state=0).fit(X)
    assert sc.eigen_solver_ == solver
    assert adjusted_rand_score(y, sc.labels_) > 0.99
    assert sc.labels_.dtype == np.int64 and sc.labels_.shape == (1500,)
    assert sc.embedding_.shape == (1500, 6) and sc.embedding_.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(sc.embedding_, axis=1), 1.0, atol=1e-5)
    assert np.all(np.diff(sc.eigenvalues_) >= 0) and sc.eigenvalues_.min() >= 0


@pytest.mark.parametrize("solver", ["lobpcg", "arpack", "subspace"])
def test_connected_graph_clusters(solver):
    X, y = touching_blobs(1200)
    sc = SpectralClustering(n_clusters=3, n_neighbors=15, eigen_solver=solver, random_state=0).fit(X)
    assert sc.n_connected_components_ == 1
    assert adjusted_rand_score(y, sc.labels_) > 0.8


def test_solvers_agree_on_the_eigenvalues():
    X, _ = touching_blobs(1500, seed=2)
    A = SpectralClustering(n_clusters=3, n_neighbors=12, random_state=0).fit(X).affinity_matrix_
    reference = spectral_embedding(A, 6, eigen_solver="arpack", random_state=0)[0]
    for solver in ("lobpcg", "subspace"):
        vals, vecs, used = spectral_embedding(A, 6, eigen_solver=solver, random_state=0)
        assert used == solver
        np.testing.assert_allclose(vals, reference, atol=1e-3)
        np.testing.assert_allclose(vecs.T @ vecs, np.eye(6), atol=1e-4)


def test_auto_solver_switches_to_subspace_for_large_graphs(monkeypatch):
    monkeypatch.setattr(spectral, "_ITERATIVE_BLOCK_MAX_ROWS", 1000)
    X, y = blobs(1500, 5)
    sc = SpectralClustering(n_clusters=5, random_state=0).fit(X)
    assert sc.eigen_solver_ == "subspace"
    assert adjusted_rand_score(y, sc.labels_) > 0.99


def test_small_problems_are_solved_densely():
    X, y = blobs(200, 4)
    sc = SpectralClustering(n_clusters=4, random_state=0).fit(X)
    assert sc.eigen_solver_ == "dense"
    assert adjusted_rand_score(y, sc.labels_) > 0.99


def test_matches_scikit_learn():
    from sklearn.cluster import SpectralClustering as SkSpectral

    X, _ = touching_blobs(1500, seed=3)
    ours = SpectralClustering(n_clusters=3, n_neighbors=10, random_state=0).fit_predict(X)
    theirs = SkSpectral(n_clusters=3, affinity="nearest_neighbors", n_neighbors=10, random_state=0).fit_predict(X)
    assert adjusted_rand_score(theirs, ours) >= 0.9


def test_affinity_is_scikit_learns():
    from sklearn.neighbors import kneighbors_graph

    X, _ = touching_blobs(600, seed=1)
    ours = knn_graph(X, 7, method="exact")
    theirs = kneighbors_graph(X, 7, include_self=True)
    assert (ours != theirs).nnz == 0
    sc = SpectralClustering(n_clusters=3, n_neighbors=7, random_state=0).fit(X)
    expected = 0.5 * (theirs + theirs.T)
    assert abs(sc.affinity_matrix_ - expected).max() == 0
    assert (sc.affinity_matrix_ != sc.affinity_matrix_.T).nnz == 0


def test_ivf_clusters_like_exact():
    X, y = blobs(4000, 8, d=32)
    sc = SpectralClustering(n_clusters=8, knn="ivf", random_state=0).fit(X)
    assert sc.knn_method_ == "ivf"
    assert adjusted_rand_score(y, sc.labels_) > 0.99


@pytest.mark.parametrize("n_rows", [600, 2000])
def test_eigensolver_and_kmeans_threads(monkeypatch, n_rows):
    # Up to _ITERATIVE_BLOCK_MAX_ROWS the eigensolver and k-means run single-threaded (a BLAS/OpenMP team in small
    # dense products stalls on a busy machine); above it they may use every thread.
    from threadpoolctl import threadpool_info

    import selector.cluster

    monkeypatch.setattr(spectral, "_ITERATIVE_BLOCK_MAX_ROWS", 1000)
    seen = {}
    real_embedding, real_fit = spectral.spectral_embedding, selector.cluster.KMeans.fit_predict

    def threads():
        return max(info["num_threads"] for info in threadpool_info())

    def embedding(*args, **kwargs):
        seen["eigen"] = threads()
        return real_embedding(*args, **kwargs)

    def fit_predict(self, *args, **kwargs):
        seen["kmeans"] = threads()
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(spectral, "spectral_embedding", embedding)
    monkeypatch.setattr(selector.cluster.KMeans, "fit_predict", fit_predict)
    X, _ = blobs(n_rows, 4)
    SpectralClustering(n_clusters=4, random_state=0, n_jobs=2).fit(X)
    expected = 1 if n_rows <= 1000 else min(2, threads())
    assert seen == {"eigen": expected, "kmeans": expected}


def test_labels_do_not_depend_on_n_jobs(monkeypatch):
    monkeypatch.setattr(knn, "_EXACT_TILE", 128)
    X, _ = touching_blobs(900)
    one = SpectralClustering(n_clusters=3, random_state=0, n_jobs=1).fit(X)
    two = SpectralClustering(n_clusters=3, random_state=0, n_jobs=2).fit(X)
    np.testing.assert_array_equal(one.labels_, two.labels_)
    assert (one.affinity_matrix_ != two.affinity_matrix_).nnz == 0


def test_auto_knn_switches_to_approximate_above_threshold(monkeypatch):
    monkeypatch.setattr(knn, "_EXACT_KNN_MAX_ROWS", 500)
    X, y = blobs(800, 4)
    sc = SpectralClustering(n_clusters=4, random_state=0).fit(X)
    assert sc.knn_method_ == "ivf"
    assert adjusted_rand_score(y, sc.labels_) > 0.99
    X, _ = blobs(400, 4)
    assert SpectralClustering(n_clusters=4, random_state=0).fit(X).knn_method_ == "exact"


def test_duplicate_rows_keep_self_loops():
    X = np.repeat(np.eye(3, dtype=np.float32), 30, axis=0)  # every row has 29 exact twins
    graph = knn_graph(X, 5)
    assert np.all(graph.diagonal() == 1)
    assert np.all(np.diff(graph.indptr) == 5)
    labels = SpectralClustering(n_clusters=3, n_neighbors=5, random_state=0).fit_predict(X)
    assert adjusted_rand_score(np.repeat(np.arange(3), 30), labels) == 1.0


def test_same_seed_same_labels_and_seed_matters_only_through_rng():
    X, _ = touching_blobs(1500, seed=5)
    a = SpectralClustering(n_clusters=5, random_state=7).fit(X)
    b = SpectralClustering(n_clusters=5, random_state=7).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.embedding_, b.embedding_)
    # pyamg draws from the global numpy RNG: the estimator must neither depend on nor disturb it.
    np.random.seed(1)
    before = np.random.random()
    np.random.seed(1)
    c = SpectralClustering(n_clusters=5, random_state=7).fit(X)
    assert np.random.random() == before
    np.testing.assert_array_equal(a.labels_, c.labels_)


def test_cosine_metric_ignores_row_scale():
    X, y = blobs(600, 4, d=8)
    X -= X.mean(axis=0)
    scaled = X * np.random.default_rng(0).uniform(0.1, 10.0, size=(600, 1)).astype(np.float32)
    a = SpectralClustering(n_clusters=4, metric="cosine", random_state=0).fit_predict(X)
    b = SpectralClustering(n_clusters=4, metric="cosine", random_state=0).fit_predict(scaled)
    assert adjusted_rand_score(a, b) > 0.99


def test_estimator_conventions():
    sc = SpectralClustering()
    assert sc.get_params()["n_clusters"] == 8
    assert not [k for k in vars(sc) if k.endswith("_")]
    other = clone(SpectralClustering(n_clusters=3, knn="exact", random_state=1))
    assert other.get_params()["knn"] == "exact"
    X, _ = blobs(300, 3)
    assert sc.set_params(n_clusters=3).fit(X) is sc


def test_single_row_and_single_cluster():
    one = SpectralClustering(n_clusters=1).fit(np.ones((1, 4)))
    assert one.labels_.tolist() == [0]
    X, _ = blobs(100, 2)
    assert set(SpectralClustering(n_clusters=1, random_state=0).fit_predict(X)) == {0}


def test_more_components_than_clusters_warns(caplog):
    X = np.repeat(np.eye(6, dtype=np.float32) * 10, 20, axis=0)  # six far-apart groups of identical rows
    with caplog.at_level(logging.WARNING, logger="selector.spectral"):
        labels = SpectralClustering(n_clusters=3, n_neighbors=5, eigen_solver="arpack", random_state=0).fit_predict(X)
    assert "connected components" in caplog.text
    assert labels.shape == (120,) and set(labels) <= {0, 1, 2}


@pytest.mark.parametrize(
    ("X", "params", "error", "match"),
    [
        (np.ones(10), {}, DataError, "2-D.*Reshape your data"),
        (np.ones((0, 3)), {}, DataError, r"0 sample\(s\)"),
        (np.ones((4, 0)), {}, DataError, r"0 feature\(s\)"),
        (np.array([[0.0, 1.0], [np.nan, 1.0], [1.0, 1.0]]), {"n_clusters": 2}, DataError, r"NaN.*first: \[1\]"),
        (np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 2.0]]), {"n_clusters": 2, "metric": "cosine"}, DataError, "all-zero"),
        (np.array([["a", "b"], ["c", "d"]]), {"n_clusters": 1}, DataError, "could not convert"),
        (np.ones((3, 2), dtype=complex), {"n_clusters": 1}, DataError, "Complex data not supported"),
        (np.array([[{"a": 1}, 1.0]], dtype=object), {"n_clusters": 1}, DataTypeError, "dict"),
        (sparse.random(10, 3, density=0.5, format="csr"), {}, DataTypeError, "sparse"),
        (np.ones((5, 2)), {"n_clusters": 6}, ConfigError, "exceeds"),
        (np.ones((5, 2)), {"n_clusters": 0}, ConfigError, "n_clusters"),
        (np.ones((5, 2)), {"n_clusters": 2, "n_neighbors": 1}, ConfigError, "n_neighbors"),
        (np.ones((5, 2)), {"n_clusters": 2, "knn": "annoy"}, ConfigError, "knn"),
        (np.ones((5, 2)), {"n_clusters": 2, "metric": "manhattan"}, ConfigError, "metric"),
        (np.ones((5, 2)), {"n_clusters": 2, "eigen_solver": "amg"}, ConfigError, "eigen_solver"),
        (np.ones((5, 2)), {"n_clusters": 2, "n_neighbors": 2.5}, ConfigError, "n_neighbors"),
        (np.ones((5, 2)), {"n_clusters": 2, "n_components": 9}, ConfigError, "n_components"),
        (np.ones((5, 2)), {"n_clusters": 2, "n_probe": 0}, ConfigError, "n_probe"),
        (np.ones((5, 2)), {"n_clusters": 2, "n_init": 0}, ConfigError, "n_init"),
        (np.ones((5, 2)), {"n_clusters": 2, "n_jobs": 0}, ConfigError, "n_jobs"),
    ],
)
def test_bad_input_is_a_clear_error(X, params, error, match):
    with pytest.raises(error, match=match) as caught:
        SpectralClustering(**params).fit(X)
    # one line for the CLI, and the built-in type scikit-learn's contract expects
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, TypeError if error is DataTypeError else ValueError)


def test_object_arrays_of_numbers_and_lists_are_accepted():
    X, y = blobs(90, 3)
    as_objects = SpectralClustering(n_clusters=3, random_state=0).fit_predict(X.astype(object))
    as_lists = SpectralClustering(n_clusters=3, random_state=0).fit_predict(X.tolist())
    assert adjusted_rand_score(y, as_objects) == 1.0 and np.array_equal(as_objects, as_lists)


def test_missing_extras_name_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyamg" else real(name, *a))
    X, y = blobs(1200, 3)
    with pytest.raises(MissingDependencyError, match=r"vlselect\[spectral\]"):
        SpectralClustering(n_clusters=3, eigen_solver="lobpcg").fit(X)
    # without pyamg, "auto" falls back to ARPACK and still clusters
    sc = SpectralClustering(n_clusters=3, random_state=0).fit(X)
    assert sc.eigen_solver_ == "arpack"
    assert adjusted_rand_score(y, sc.labels_) > 0.99
    if real("pynndescent") is None:
        with pytest.raises(MissingDependencyError, match=r"vlselect\[spectral\]"):
            SpectralClustering(n_clusters=3, knn="pynndescent").fit(X)


def test_spectral_embedding_rejects_isolated_rows():
    A = sparse.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(DataError, match="positive degree"):
        spectral_embedding(A, 1)


def test_reexported_from_cluster_module():
    from selector.cluster import SpectralClustering as FromCluster

    assert FromCluster is SpectralClustering


_PROBE = """
import json, resource, sys
import numpy as np
from selector.spectral import SpectralClustering
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rng = np.random.default_rng(0)
X = np.repeat(rng.normal(size=(4, 8)) * 5, 10, axis=0).astype(np.float32)
SpectralClustering(n_clusters=4, knn=sys.argv[1], random_state=0).fit(X)  # warm-up: imports, thread pools
base = peak()
n = int(sys.argv[2])
X = (rng.normal(size=(4, 8))[np.arange(n) % 4] * 5 + rng.normal(size=(n, 8))).astype(np.float32)
labels = SpectralClustering(n_clusters=4, knn=sys.argv[1], random_state=0).fit_predict(X)
print(json.dumps({"growth_mb": peak() - base, "clusters": len(set(labels.tolist()))}))
"""


@pytest.mark.parametrize("knn", ["exact", pytest.param("ivf", marks=pytest.mark.slow)])
def test_memory_is_linear_not_quadratic(knn):
    # 20,000 rows: a dense n x n float64 matrix alone would be 3.2 GB; the sparse pipeline needs a few hundred MB.
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, knn, "20000"], capture_output=True, text=True, env=env, timeout=600, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["clusters"] == 4
    assert result["growth_mb"] < 1000, result


def _laplacian_and_hierarchy(n: int = 3000, seed: int = 0):
    pyamg = pytest.importorskip("pyamg")
    X, _ = touching_blobs(n, seed=seed)
    A = sparse.csr_matrix(SpectralClustering(n_clusters=3, n_neighbors=12, random_state=0).fit(X).affinity_matrix_)
    d = np.asarray(A.sum(axis=1)).ravel()
    S = sparse.diags(1 / np.sqrt(d)) @ A @ sparse.diags(1 / np.sqrt(d))
    L = sparse.csr_matrix(sparse.identity(n) - S)
    ml = pyamg.smoothed_aggregation_solver(sparse.csr_matrix(L + 1e-5 * sparse.identity(n, format="csr")))
    return L, d, ml


def test_block_vcycle_is_a_symmetric_positive_preconditioner():
    # LOBPCG needs a symmetric positive definite preconditioner; the block cycle must also equal itself applied
    # column by column (no mixing between the vectors of a block).
    L, _, ml = _laplacian_and_hierarchy()
    apply = spectral._block_vcycle(ml)
    rng = np.random.default_rng(0)
    B = rng.standard_normal((L.shape[0], 5))
    MB = apply(B)
    G = B.T @ MB
    np.testing.assert_allclose(G, G.T, rtol=1e-8, atol=1e-8)
    assert np.linalg.eigvalsh(0.5 * (G + G.T)).min() > 0
    np.testing.assert_allclose(MB[:, 2], apply(B[:, 2]), rtol=1e-10, atol=1e-12)
    # and it preconditions: M L is much better conditioned on smooth vectors than L alone
    x = rng.standard_normal(L.shape[0])
    assert np.linalg.norm(x - apply(L @ x)) < np.linalg.norm(x)


def test_coarse_start_spans_the_wanted_eigenvectors():
    L, d, ml = _laplacian_and_hierarchy()
    from scipy.sparse.linalg import eigsh

    k = 8
    _, exact = eigsh(L, k=k + 1, sigma=-1e-3, which="LM")
    exact = exact[:, 1:]  # the first is the known component vector D^1/2 1
    X0 = spectral._coarse_start(ml, L, 1, k)
    assert X0 is not None and X0.shape == (L.shape[0], k)
    Q = np.linalg.qr(X0)[0]
    captured = np.linalg.norm(exact.T @ Q) ** 2 / k  # 1 = the same subspace, ~k/n for a random block
    random_q = np.linalg.qr(np.random.default_rng(0).standard_normal(X0.shape))[0]
    assert captured > 0.5 > 10 * np.linalg.norm(exact.T @ random_q) ** 2 / k


def test_default_lobpcg_clusters_many_touching_clusters_like_arpack():
    # 12 overlapping clusters on one connected graph: the default LOBPCG (coarse start, 20 iterations, tol 1e-4)
    # must give the labels a converged ARPACK embedding gives.
    pytest.importorskip("pyamg")
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(12, 8)) * 0.9
    y = np.arange(2400) % 12
    X = (centres[y] + rng.normal(scale=0.5, size=(2400, 8))).astype(np.float32)
    fits = {
        solver: SpectralClustering(n_clusters=12, eigen_solver=solver, random_state=0).fit(X)
        for solver in ("lobpcg", "arpack")
    }
    assert fits["lobpcg"].n_connected_components_ == 1
    assert adjusted_rand_score(fits["arpack"].labels_, fits["lobpcg"].labels_) > 0.9
    assert adjusted_rand_score(y, fits["lobpcg"].labels_) > 0.8
