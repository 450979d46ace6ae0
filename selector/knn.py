"""k-nearest-neighbour graphs for millions of rows: exact blocked search, an IVF partition, faiss HNSW, pynndescent.

:func:`knn_graph` returns the binary connectivity scikit-learn's ``kneighbors_graph(X, n_neighbors,
include_self=True)`` returns (each row counts itself as one of its ``n_neighbors``), as a sparse CSR matrix,
without ever building an ``n x n`` matrix:

- ``"exact"``: float32 matrix products over the square tiles on and above the diagonal of the (symmetric)
  distance matrix, a top-k per tile for its rows and for its columns, tiles spread over threads; memory is a few
  tiles plus ``n x k`` candidates per tile column.
- ``"ivf"``: k-means cells of about ``sqrt(n)`` rows; each cell's rows are searched among its ``n_probe`` nearest
  cells by the same blocked products (approximate, BLAS speed, no optional package).
- ``"hnsw"``: faiss ``IndexHNSWFlat`` (extra ``faiss``).
- ``"pynndescent"``: nearest-neighbour descent (extra ``spectral``).
- ``"auto"``: exact up to 20,000 rows, ivf above.

:class:`selector.spectral.SpectralClustering` builds its affinity from this graph.

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(100, 8))
    >>> G = knn_graph(X, 5)
    >>> G.shape, int(G.sum(axis=1).max())
    ((100, 100), 5)
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import numpy as np
from scipy import sparse
from sklearn.utils import check_random_state

from selector.cluster import cluster_sums, validate_rows
from selector.cpus import resolve_n_jobs
from selector.errors import ConfigError, DataError, require

logger = logging.getLogger(__name__)

__all__ = [
    "KNN_METHODS",
    "METRICS",
    "as_float32_rows",
    "check_choice",
    "connectivity",
    "knn_graph",
    "resolve_method",
    "single_threaded_kernels",
]

KNN_METHODS = ("auto", "exact", "ivf", "hnsw", "pynndescent")
METRICS = ("euclidean", "cosine")
# Above this many rows the exact kNN search (n^2 d flops) gives way to the approximate one under knn="auto".
_EXACT_KNN_MAX_ROWS = 20_000
# Rows per query block: bounds the distance block to block x candidates floats.
_QUERY_BLOCK = 1024
# Side of the square tiles of the exact search: 16 MiB of float32 per tile and thread.
_EXACT_TILE = 2048
# Largest candidate buffer (n x tiles-per-row x k, index and value) of the tiled exact search.
_CANDIDATE_BYTES = 512 * 2**20


def _progress(iterable, **kwargs):
    from selector.logs import progress

    # disable=None: a bar on a terminal, silent in logs and CI.
    return progress(iterable, disable=None, leave=False, **kwargs)


def check_choice(param: str, value, choices) -> None:
    """ConfigError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{param} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def as_float32_rows(X, metric: str, *, estimator=None) -> np.ndarray:
    """Validate ``X`` (see :func:`selector.cluster.validate_rows`) and return C-contiguous float32 rows,
    L2-normalised for the cosine metric.

    Raises:
        DataError: ``X`` is not a finite real 2-D matrix with rows, or (cosine) has all-zero rows.
        DataTypeError: sparse or non-numeric input.
    """
    X = np.ascontiguousarray(validate_rows(X, estimator=estimator), dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        if (norms == 0).any():
            rows = np.flatnonzero(norms[:, 0] == 0)
            raise DataError(f"cosine metric: {rows.size} rows are all-zero (first: {rows[:5].tolist()})")
        X = X / norms
    return X


def _torch():
    # torch gives a multi-threaded top-k that is an order of magnitude faster than np.argpartition.
    import torch

    return torch


def _block_knn(queries: np.ndarray, base: np.ndarray, k: int, base_sqnorms: np.ndarray | None = None):
    """Exact k nearest rows of ``base`` for each row of ``queries`` by squared Euclidean distance.

    Returns (indices into ``base`` (m, k) int64, squared distances (m, k) float32), nearest first. Memory is
    bounded by ``_QUERY_BLOCK x len(base)`` floats.
    """
    torch = _torch()
    k = min(k, base.shape[0])
    bn = base_sqnorms if base_sqnorms is not None else np.einsum("ij,ij->i", base, base)
    out_i = np.empty((queries.shape[0], k), dtype=np.int64)
    out_d = np.empty((queries.shape[0], k), dtype=np.float32)
    for start in range(0, queries.shape[0], _QUERY_BLOCK):
        q = queries[start : start + _QUERY_BLOCK]
        # ||q - b||^2 = ||q||^2 - 2 q.b + ||b||^2; ||q||^2 is constant per row, so rank by 2 q.b - ||b||^2.
        # numpy's float32 GEMM (OpenBLAS) ran 1.6x faster than torch's addmm here; torch's top-k is 2x argpartition.
        score = q @ base.T
        score *= 2
        score -= bn
        val, idx = torch.topk(torch.from_numpy(score), k, dim=1, largest=True, sorted=True)
        qn = np.einsum("ij,ij->i", q, q)[:, None]
        out_i[start : start + q.shape[0]] = idx.numpy()
        out_d[start : start + q.shape[0]] = np.maximum(qn - val.numpy(), 0)
    return out_i, out_d


def _coarse_partition(X: np.ndarray, n_cells: int, rng: np.random.RandomState, n_jobs: int | None = None):
    """k-means cells for the IVF search: (cell of each row (n,), centroids (n_cells, d)).

    Plain Lloyd iterations on a sample, written with the same blocked matrix products as the search: a coarse
    partition needs no k-means++ nor convergence, and this keeps the search free of any optional package.
    """
    n, d = X.shape
    # ~40 training rows per centroid is what faiss recommends for a coarse quantizer; 10 iterations suffice.
    n_train = min(n, 40 * n_cells)
    train = X[np.sort(rng.choice(n, size=n_train, replace=False))]
    centroids = train[np.sort(rng.choice(n_train, size=n_cells, replace=False))].copy()
    for _ in range(10):
        assigned = _block_knn(train, centroids, 1)[0][:, 0]
        counts = np.bincount(assigned, minlength=n_cells)
        sums = cluster_sums(train, assigned, n_cells)
        filled = counts > 0
        # An empty cell keeps its centroid; it simply receives no rows.
        centroids[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
    cell = np.empty(n, dtype=np.int64)
    cn = np.einsum("ij,ij->i", centroids, centroids)
    chunk = 8 * _QUERY_BLOCK

    def assign(start):
        cell[start : start + chunk] = _block_knn(X[start : start + chunk], centroids, 1, cn)[0][:, 0]

    _run_threads(assign, list(range(0, n, chunk)), n_jobs, desc="ivf assign")
    return cell, centroids


def _ivf_knn(X: np.ndarray, k: int, n_probe: int, rng: np.random.RandomState, n_jobs: int | None = None):
    """Approximate kNN: partition into k-means cells, search each cell's rows among its ``n_probe`` nearest cells.

    Querying a whole cell at once turns the search into dense matrix products (BLAS speed) instead of one scan
    per row; rows near a cell border still find their neighbours because the probed cells surround the cell.
    Cells run on ``n_jobs`` threads with single-threaded kernels (as the exact search's tiles); each writes only
    its own rows, so the graph does not depend on the thread count.
    """
    n = X.shape[0]
    n_cells = max(1, min(n // 64, int(round(2 * math.sqrt(n)))))
    cell, centroids = _coarse_partition(X, n_cells, rng, n_jobs)
    n_probe = min(n_probe, n_cells)
    probes = _block_knn(centroids, centroids, n_probe)[0]
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(n_cells + 1))
    sqnorms = np.einsum("ij,ij->i", X, X)
    indices = np.full((n, k), -1, dtype=np.int64)
    distances = np.full((n, k), np.inf, dtype=np.float32)

    def search(c):
        members = order[bounds[c] : bounds[c + 1]]
        if members.size == 0:
            return
        cand = np.concatenate([order[bounds[p] : bounds[p + 1]] for p in probes[c]])
        idx, dist = _block_knn(X[members], X[cand], k, sqnorms[cand])
        indices[members, : idx.shape[1]] = cand[idx]
        distances[members, : idx.shape[1]] = dist

    _run_threads(search, list(range(n_cells)), n_jobs, desc="kNN (ivf)")
    return indices, distances


def _hnsw_knn(X: np.ndarray, k: int, rng: np.random.RandomState):
    require("faiss", "faiss", "HNSW nearest neighbours")
    import faiss

    index = faiss.IndexHNSWFlat(X.shape[1], 32)
    index.hnsw.efConstruction = 80
    # faiss seeds the HNSW level generator with a constant, so the graph depends only on the data and its order.
    chunk = 65_536
    for start in _progress(range(0, X.shape[0], chunk), desc="hnsw add", unit="block"):
        index.add(X[start : start + chunk])
    index.hnsw.efSearch = max(64, 2 * k)
    indices = np.empty((X.shape[0], k), dtype=np.int64)
    distances = np.empty((X.shape[0], k), dtype=np.float32)
    for start in _progress(range(0, X.shape[0], chunk), desc="kNN (hnsw)", unit="block"):
        d, i = index.search(X[start : start + chunk], k)
        indices[start : start + chunk] = i
        distances[start : start + chunk] = d
    return indices, distances


def _pynndescent_knn(X: np.ndarray, k: int, rng: np.random.RandomState):
    require("pynndescent", "spectral", "pynndescent nearest neighbours")
    from pynndescent import NNDescent

    nnd = NNDescent(X, n_neighbors=k, metric="euclidean", random_state=int(rng.randint(0, 2**31 - 1)), n_jobs=1)
    indices, distances = nnd.neighbor_graph
    return indices.astype(np.int64), (distances.astype(np.float32) ** 2)


@contextlib.contextmanager
def single_threaded_kernels():
    """BLAS, OpenMP and torch's intra-op pool limited to one thread (restored afterwards).

    For work split into independent pieces that our own threads run: a BLAS or OpenMP team inside each piece
    would oversubscribe the cores, and its threads spin at a barrier whenever one of them is descheduled.
    """
    import sys

    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


def _one_openmp_thread() -> None:
    # OpenMP's thread count is per calling thread: a new worker starts from the default, not from the limit its
    # parent set, so each worker limits itself (for as long as it lives).
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="openmp")


def _tile_topk(score, k: int, offset: int):
    """Largest ``k`` entries of each row of the tensor ``score``: (column + ``offset`` (m, k) int64, values)."""
    torch = _torch()
    val, idx = torch.topk(score, min(k, score.shape[1]), dim=1, largest=True, sorted=False)
    return idx.numpy() + offset, val.numpy()


def _exact_knn(X: np.ndarray, k: int, n_jobs: int | None = None):
    """Exact k nearest rows (squared Euclidean), itself included: (indices (n, k) int64, squared distances).

    The distance matrix is symmetric, so only the tiles on and above the diagonal are multiplied, and each tile
    gives candidates both to its rows and to its columns: half the matrix products of a row-by-row search.
    Tiles run on ``n_jobs`` threads, each with single-threaded BLAS (numpy's float32 GEMM) and top-k: a thread
    that is descheduled on a busy machine delays only its own tile, where a multi-threaded GEMM would hold every
    other thread at a barrier (2x10^4 x 512, k = 11: 9.1 s in one thread as torch products over 1,024-row blocks,
    ~4 s like this). Each (row block, column block) pair writes its own slot of a candidate buffer, so the result
    does not depend on the thread count or on scheduling. When that buffer would exceed ``_CANDIDATE_BYTES``
    (far above the 20,000 rows of ``knn="auto"``) the search runs block row by block row instead.
    """
    n = X.shape[0]
    k = min(k, n)
    tile = _EXACT_TILE
    n_blocks = -(-n // tile)
    sqnorms = np.einsum("ij,ij->i", X, X)
    if n_blocks * k * n * 12 > _CANDIDATE_BYTES:
        return _rowwise_exact_knn(X, k, sqnorms, n_jobs)
    cand_i = np.empty((n, n_blocks * k), dtype=np.int64)
    cand_v = np.empty((n, n_blocks * k), dtype=np.float32)
    torch = _torch()
    norms = torch.from_numpy(sqnorms)

    def bounds(b):
        return b * tile, min(n, (b + 1) * tile)

    def work(pair):
        bi, bj = pair
        (i0, i1), (j0, j1) = bounds(bi), bounds(bj)
        # ||q - b||^2 = ||q||^2 - 2 q.b + ||b||^2; ||q||^2 is constant per row, so rank by 2 q.b - ||b||^2.
        prod = torch.from_numpy(X[i0:i1] @ X[j0:j1].T)
        prod *= 2
        idx, val = _tile_topk(prod - norms[None, j0:j1], k, j0)
        cand_i[i0:i1, bj * k : (bj + 1) * k] = _pad(idx, k, -1)
        cand_v[i0:i1, bj * k : (bj + 1) * k] = _pad(val, k, -np.inf)
        if bi != bj:
            # torch's transposing copy is ~2.5x faster than numpy's on a 2,048-square tile.
            idx, val = _tile_topk((prod.T - norms[None, i0:i1]).contiguous(), k, i0)
            cand_i[j0:j1, bi * k : (bi + 1) * k] = _pad(idx, k, -1)
            cand_v[j0:j1, bi * k : (bi + 1) * k] = _pad(val, k, -np.inf)

    pairs = [(bi, bj) for bi in range(n_blocks) for bj in range(bi, n_blocks)]
    _run_threads(work, pairs, n_jobs, desc="kNN (exact)")
    val, pos = torch.topk(torch.from_numpy(cand_v), k, dim=1, largest=True, sorted=True)
    indices = np.take_along_axis(cand_i, pos.numpy(), axis=1)
    distances = np.maximum(sqnorms[:, None] - val.numpy(), 0, dtype=np.float32)
    return indices, distances


def _pad(a: np.ndarray, k: int, fill) -> np.ndarray:
    # A last tile narrower than k gives fewer candidates; the rest of its slot holds never-chosen fillers.
    if a.shape[1] == k:
        return a
    out = np.full((a.shape[0], k), fill, dtype=a.dtype)
    out[:, : a.shape[1]] = a
    return out


def _rowwise_exact_knn(X: np.ndarray, k: int, sqnorms: np.ndarray, n_jobs: int | None):
    indices = np.empty((X.shape[0], k), dtype=np.int64)
    distances = np.empty((X.shape[0], k), dtype=np.float32)

    def work(start):
        i, d = _block_knn(X[start : start + _QUERY_BLOCK], X, k, sqnorms)
        indices[start : start + _QUERY_BLOCK] = i
        distances[start : start + _QUERY_BLOCK] = d

    _run_threads(work, list(range(0, X.shape[0], _QUERY_BLOCK)), n_jobs, desc="kNN (exact)")
    return indices, distances


def _run_threads(work, items: list, n_jobs: int | None, *, desc: str) -> None:
    """``work(item)`` for every item on ``n_jobs`` threads with single-threaded kernels inside, with a bar."""
    jobs = min(resolve_n_jobs(n_jobs), max(1, len(items)))
    bar = _progress(None, total=len(items), desc=desc, unit="tile")
    with single_threaded_kernels():
        if jobs == 1:
            for item in items:
                work(item)
                bar.update()
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=jobs, initializer=_one_openmp_thread) as pool:
                for _ in pool.map(work, items):
                    bar.update()
    bar.close()


def resolve_method(method: str, n: int) -> str:
    """The kNN method ``"auto"`` stands for with ``n`` rows; other methods as they are."""
    if method != "auto":
        return method
    if n <= _EXACT_KNN_MAX_ROWS:
        return "exact"
    return "ivf"


def knn_graph(
    X,
    n_neighbors: int = 10,
    *,
    metric: str = "euclidean",
    method: str = "auto",
    n_probe: int = 8,
    random_state=None,
    n_jobs: int | None = None,
) -> sparse.csr_matrix:
    """Binary k-nearest-neighbour connectivity, each row counting itself as one of its ``n_neighbors``.

    Same convention as ``sklearn.neighbors.kneighbors_graph(X, n_neighbors, include_self=True)``: row ``i`` has
    a 1 at ``i`` and at its ``n_neighbors - 1`` nearest other rows. Not symmetric.

    Args:
        X: (n_samples, n_features) array.
        n_neighbors: neighbours per row, including the row itself (>= 2).
        metric: ``"euclidean"`` or ``"cosine"`` (rows are L2-normalised first).
        method: ``"exact"``, ``"ivf"`` (k-means cells searched cell by cell, approximate), ``"hnsw"`` (faiss),
            ``"pynndescent"``, or ``"auto"`` (exact up to 20,000 rows, ivf above).
        n_probe: cells searched per cell by ``"ivf"``; more is slower and closer to exact.
        random_state: seed for the approximate methods.
        n_jobs: threads of the exact and IVF searches (None: every CPU this process may use); the graph does not
            depend on it.

    Returns:
        (n_samples, n_samples) CSR matrix with float64 ones.
    """
    check_choice("metric", metric, METRICS)
    check_choice("knn", method, KNN_METHODS)
    Xf = as_float32_rows(X, metric)
    n = Xf.shape[0]
    if not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 2:
        raise ConfigError(f"n_neighbors must be an integer >= 2, got {n_neighbors!r}")
    if n_neighbors > n:
        raise ConfigError(f"n_neighbors={n_neighbors} exceeds the number of rows ({n})")
    if not isinstance(n_probe, (int, np.integer)) or n_probe < 1:
        raise ConfigError(f"n_probe must be a positive integer, got {n_probe!r}")
    resolve_n_jobs(n_jobs)
    return connectivity(
        Xf, n_neighbors, resolve_method(method, n), n_probe, check_random_state(random_state), n_jobs=n_jobs
    )


def connectivity(
    Xf: np.ndarray, n_neighbors: int, method: str, n_probe: int, rng, *, n_jobs: int | None = None
) -> sparse.csr_matrix:
    """:func:`knn_graph` on rows already checked by :func:`as_float32_rows`, with a resolved ``method`` and a
    ``RandomState``; parameters are not checked again."""
    n = Xf.shape[0]
    # One spare neighbour: with duplicate rows the search may return a twin before the row itself.
    k = min(n, n_neighbors + 1)
    start = time.perf_counter()
    if method == "exact":
        indices, _ = _exact_knn(Xf, k, n_jobs)
    elif method == "ivf":
        indices, _ = _ivf_knn(Xf, k, n_probe, rng, n_jobs)
    elif method == "hnsw":
        indices, _ = _hnsw_knn(Xf, k, rng)
    else:
        indices, _ = _pynndescent_knn(Xf, k, rng)
    logger.info("kNN graph (%s, n=%d, k=%d) in %.1fs", method, n, n_neighbors, time.perf_counter() - start)
    rows = np.arange(n)[:, None]
    keep = (indices >= 0) & (indices != rows)
    keep &= np.cumsum(keep, axis=1) <= n_neighbors - 1
    counts = keep.sum(axis=1)
    others = indices[keep]
    # Self first, then the nearest others: rows stay in CSR order with one explicit self loop each.
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts + 1, out=indptr[1:])
    cols = np.empty(indptr[-1], dtype=np.int64)
    self_pos = indptr[:-1]
    cols[self_pos] = np.arange(n)
    other_mask = np.ones(indptr[-1], dtype=bool)
    other_mask[self_pos] = False
    cols[other_mask] = others
    index_dtype = np.int32 if max(n, indptr[-1]) < 2**31 else np.int64
    graph = sparse.csr_matrix(
        (np.ones(indptr[-1]), cols.astype(index_dtype), indptr.astype(index_dtype)), shape=(n, n)
    )
    graph.sort_indices()
    return graph
