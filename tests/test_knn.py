"""kNN graph backends: scikit-learn's connectivity, approximate recall, duplicates, cosine, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from selector.errors import ConfigError, DataError, DataTypeError
from selector.knn import knn_graph


def blobs(n: int, k: int, d: int = 16, spread: float = 0.3, seed: int = 0) -> np.ndarray:
    """``n`` float32 rows around ``k`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 4.0
    return (centres[np.arange(n) % k] + rng.normal(scale=spread, size=(n, d))).astype(np.float32)


def _recall(approx: sparse.csr_matrix, exact: sparse.csr_matrix) -> float:
    return approx.multiply(exact).nnz / exact.nnz


def test_exact_graph_is_scikit_learns():
    from sklearn.neighbors import kneighbors_graph

    X = blobs(500, 5, spread=2.0)
    ours = knn_graph(X, 7, method="exact")
    assert ours.format == "csr" and ours.shape == (500, 500)
    assert (ours != kneighbors_graph(X, 7, include_self=True)).nnz == 0


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_knn_recall(method):
    pytest.importorskip("faiss") if method == "hnsw" else None
    X = blobs(6000, 20, d=32, spread=1.0)
    exact = knn_graph(X, 10, method="exact")
    approx = knn_graph(X, 10, method=method, random_state=0)
    assert approx.shape == exact.shape
    assert np.all(np.diff(approx.indptr) == 10)  # self + 9 others on every row
    assert np.all(approx.diagonal() == 1)
    assert _recall(approx, exact) > 0.95


@pytest.mark.slow  # numba compiles pynndescent on first use: minutes on a busy two-core machine
def test_pynndescent_knn():
    pytest.importorskip("pynndescent")
    X = blobs(3000, 10, d=16, spread=1.0)
    exact = knn_graph(X, 10, method="exact")
    approx = knn_graph(X, 10, method="pynndescent", random_state=0)
    assert _recall(approx, exact) > 0.9


def test_duplicate_rows_keep_one_self_loop_each():
    X = np.repeat(np.eye(3, dtype=np.float32), 30, axis=0)  # every row has 29 exact twins
    graph = knn_graph(X, 5)
    assert np.all(graph.diagonal() == 1)
    assert np.all(np.diff(graph.indptr) == 5)


def test_cosine_is_euclidean_on_unit_rows():
    X = blobs(300, 4, spread=1.0)
    scaled = X * np.random.default_rng(1).uniform(0.5, 5.0, size=(300, 1)).astype(np.float32)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert (knn_graph(scaled, 6, metric="cosine") != knn_graph(unit, 6)).nnz == 0


def test_permuted_rows_give_the_permuted_graph():
    X = blobs(400, 4, spread=2.0)
    perm = np.random.default_rng(2).permutation(400)
    graph = knn_graph(X, 8, method="exact")
    assert (knn_graph(X[perm], 8, method="exact") != graph[perm][:, perm]).nnz == 0


@pytest.mark.parametrize(
    ("X", "kwargs", "error", "match"),
    [
        (np.ones((5, 2)), {"n_neighbors": 1}, ConfigError, "n_neighbors"),
        (np.ones((5, 2)), {"n_neighbors": 6}, ConfigError, "exceeds the number of rows"),
        (np.ones((5, 2)), {"method": "annoy"}, ConfigError, "knn"),
        (np.ones((5, 2)), {"metric": "manhattan"}, ConfigError, "metric"),
        (np.ones((5, 2)), {"n_probe": 0}, ConfigError, "n_probe"),
        (np.ones(5), {}, DataError, "2-D"),
        (np.array([[1.0, np.inf], [0.0, 1.0], [1.0, 1.0]]), {"n_neighbors": 2}, DataError, "infinite"),
        (sparse.random(10, 3, density=0.5, format="csr"), {}, DataTypeError, "sparse"),
    ],
)
def test_bad_input_is_a_clear_error(X, kwargs, error, match):
    with pytest.raises(error, match=match):
        knn_graph(X, **{"n_neighbors": 3, **kwargs})


@pytest.mark.parametrize("n_jobs", [1, 3])
def test_tiled_exact_search_is_scikit_learns_across_tiles(monkeypatch, n_jobs):
    from sklearn.neighbors import kneighbors_graph

    from selector import knn

    # 8-row tiles over 203 rows: 26 tile rows, a last tile 3 rows wide (narrower than k), off-diagonal tiles
    # feeding both their rows and their columns.
    monkeypatch.setattr(knn, "_EXACT_TILE", 8)
    X = blobs(203, 5, spread=2.0)
    ours = knn_graph(X, 7, method="exact", n_jobs=n_jobs)
    assert (ours != kneighbors_graph(X, 7, include_self=True)).nnz == 0


def test_exact_search_falls_back_to_row_blocks_when_candidates_would_not_fit(monkeypatch):
    from selector import knn

    X = blobs(300, 4, spread=2.0)
    tiled = knn_graph(X, 6, method="exact")
    monkeypatch.setattr(knn, "_CANDIDATE_BYTES", 0)
    monkeypatch.setattr(knn, "_QUERY_BLOCK", 64)
    assert (knn_graph(X, 6, method="exact", n_jobs=2) != tiled).nnz == 0


@pytest.mark.parametrize("n_jobs", [0, -1, 1.5, True])
def test_bad_n_jobs_is_a_config_error(n_jobs):
    with pytest.raises(ConfigError, match="n_jobs"):
        knn_graph(blobs(20, 2), 3, n_jobs=n_jobs)


def test_tiles_run_with_single_threaded_kernels(monkeypatch):
    from threadpoolctl import threadpool_info

    from selector import knn

    seen = []
    real = knn._tile_topk

    def spy(score, k, offset):
        seen.append(max(info["num_threads"] for info in threadpool_info()))
        return real(score, k, offset)

    monkeypatch.setattr(knn, "_tile_topk", spy)
    monkeypatch.setattr(knn, "_EXACT_TILE", 64)
    knn_graph(blobs(200, 3), 5, method="exact", n_jobs=2)
    assert seen and max(seen) == 1


def test_ivf_graph_does_not_depend_on_n_jobs():
    X = blobs(3000, 10, d=16, spread=1.0)
    one = knn_graph(X, 8, method="ivf", random_state=0, n_jobs=1)
    assert (knn_graph(X, 8, method="ivf", random_state=0, n_jobs=3) != one).nnz == 0
