"""Clustering estimators: k-means (faiss or scikit-learn), balanced k-means, and input validation.

Arrays in, arrays out. :class:`KMeans` has one API over two backends:

- ``backend="faiss"`` (``pip install vlselect[faiss]``): faiss's multi-threaded Lloyd iterations with k-means++
  initialisation on a subsample of at most ``max_points_per_centroid * n_clusters`` rows (faiss's own speed-up
  for large n; every row is assigned at the end), seeded by the same greedy k-means++ as scikit-learn (on a
  subsample of 64 rows per centroid); ``tol`` becomes faiss's relative ``early_stop_threshold``.
- ``backend="sklearn"``: :class:`sklearn.cluster.KMeans` (k-means++, Lloyd, ``tol``).
- ``backend="auto"`` (default): faiss when it can be imported, else scikit-learn.

``spherical=True`` clusters by cosine similarity: rows are L2-normalised and centroids are re-normalised after
every update (faiss does this natively; the scikit-learn backend seeds with scikit-learn's k-means and continues
with spherical Lloyd iterations). On the same data both backends reach inertias within a few percent of each
other (tested at 2%).

:class:`BalancedKMeans` splits rows into clusters of exactly equal size (InstructionGPT-4's proxy subsets).
Spectral clustering lives in :mod:`selector.spectral` (kNN graph in :mod:`selector.knn`) and is reachable here as
``selector.cluster.SpectralClustering``, imported on first access.

Every estimator follows scikit-learn's contract (``BaseEstimator``: arguments stored unchanged, checked in
``fit``; ``fit`` returns self; fitted state ends in ``_``) and validates input with :func:`validate_rows`, which
raises :class:`~selector.errors.DataError` (a ``ValueError``) with scikit-learn's wording.

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(200, 8)).astype("float32")
    >>> km = KMeans(n_clusters=4, random_state=0).fit(X)
    >>> km.labels_.shape, km.cluster_centers_.shape
    ((200,), (4, 8))
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted

from selector.errors import ConfigError, DataError, DataTypeError, require
from selector.rows import seed_from

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "faiss", "sklearn")

# rows per block when assigning rows to centroids: bounds the (block, k) distance matrix.
_ASSIGN_BLOCK = 1 << 14
# k-means++ seeding for the faiss backend runs on at most this many rows per centroid: seeding cost is
# O(rows * k * d * log k), and 64 rows per centroid already place seeds as well as the full data does.
_INIT_POINTS_PER_CENTROID = 64


# below this many multiply-adds per Lloyd iteration (n * d * k) k-means runs single-threaded: OpenMP start-up and
# spin-waiting cost more than the work, and on a busy machine small fits got 70x slower with every core in use.
_SMALL_PROBLEM = 1 << 26


@contextlib.contextmanager
def _threads_for(work: int, backend: str):
    if work >= _SMALL_PROBLEM:
        yield
        return
    if backend == "faiss":
        import faiss

        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)
    else:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            yield


def faiss_available() -> bool:
    """Whether the faiss backend can be used (the ``faiss`` module is importable)."""
    return importlib.util.find_spec("faiss") is not None


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"faiss"`` when installed else ``"sklearn"``; checks the explicit choices.

    Raises:
        ConfigError: unknown backend name.
        MissingDependencyError: ``backend="faiss"`` without faiss installed.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown k-means backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "faiss" if faiss_available() else "sklearn"
    if backend == "faiss":
        require("faiss", "faiss", "faiss k-means")
    return backend


def validate_rows(X, *, estimator=None, reset: bool = True, name: str = "X") -> np.ndarray:
    """Check an (n_samples, n_features) matrix of finite real numbers and return it as a float32/float64 array.

    scikit-learn's ``validate_data`` (with ``estimator``: also records or checks ``n_features_in_``) or
    ``check_array`` does the checking, so inputs are read and refused as scikit-learn estimators read them (lists,
    DataFrames and object arrays of numbers are accepted; empty, complex, 1-D and sparse input are refused); its
    errors are re-raised as one-line :class:`DataError` (``ValueError``) or :class:`DataTypeError`
    (``TypeError``). float32 input is returned without a copy.

    Args:
        X: the matrix.
        estimator: the estimator being fitted or applied (its name goes into messages; ``n_features_in_`` is set
            when ``reset`` and compared otherwise).
        reset: True in ``fit``, False in ``predict`` / ``transform``.
        name: how ``X`` is named in messages.

    Raises:
        DataError: not 2-D, no rows or no columns, a different number of columns than in ``fit``, complex or
            non-numeric values, NaN or infinite values (the message counts the rows and names the first ones).
        DataTypeError: sparse input, or values that are not numbers at all (e.g. a dict).
    """
    from scipy import sparse
    from sklearn.utils.validation import check_array, validate_data

    who = type(estimator).__name__ if estimator is not None else "this function"
    if sparse.issparse(X):
        raise DataTypeError(f"{who} needs a dense (n_samples, n_features) array, got a sparse matrix")
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) != 2:
        hint = f". Reshape your data with {name}.reshape(-1, 1) (one feature) or {name}.reshape(1, -1) (one sample)"
        raise DataError(
            f"{who} needs a 2-D array {name} of shape (n_samples, n_features), got shape {tuple(shape)}"
            + (hint if len(shape) == 1 else "")
        )
    try:
        if estimator is not None:
            X = validate_data(estimator, X, reset=reset, dtype=(np.float32, np.float64), ensure_all_finite=False)
        else:
            X = check_array(X, dtype=(np.float32, np.float64), ensure_all_finite=False, input_name=name)
    except TypeError as exc:
        raise DataTypeError(_first_line(exc)) from exc
    except ValueError as exc:
        raise DataError(_first_line(exc)) from exc
    # in row blocks: a whole-matrix isfinite mask would be as large as a uint8 copy of X.
    bad = np.concatenate(
        [~np.isfinite(X[i : i + _ASSIGN_BLOCK]).all(axis=1) for i in range(0, X.shape[0], _ASSIGN_BLOCK)]
    )
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(
            f"{name} has {rows.size} rows with NaN or infinite values (first: {rows[:5].tolist()}); drop them first"
        )
    return X


def _first_line(exc: Exception) -> str:
    # scikit-learn's messages sometimes print the whole array on later lines; the first line says what is wrong.
    return str(exc).strip().splitlines()[0].rstrip(":")


def l2_normalize(X: np.ndarray, copy: bool = True) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 (zero rows stay zero). Without ``copy``, float32 unit rows are
    returned as they are, which saves a copy of the matrix for embedding columns that are already normalised."""
    X = np.asarray(X)
    if not copy and X.dtype == np.float32 and X.flags.c_contiguous:
        norms = _row_norms(X)
        if np.all(np.abs(norms - 1.0) < 1e-3):
            return X
    X = np.array(X, dtype=np.float32, order="C", copy=True)
    norms = _row_norms(X)
    norms[norms == 0] = 1.0
    X /= norms[:, None]
    return X


def _row_norms(X: np.ndarray) -> np.ndarray:
    out = np.empty(X.shape[0], dtype=np.float32)
    for start in range(0, X.shape[0], _ASSIGN_BLOCK):
        block = X[start : start + _ASSIGN_BLOCK].astype(np.float32, copy=False)
        out[start : start + block.shape[0]] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return out


def assign(X: np.ndarray, centers: np.ndarray, *, spherical: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row, computed in blocks of rows so memory stays O(block * k).

    Args:
        X: (n, d) rows (already normalised when ``spherical``).
        centers: (k, d) centroids.
        spherical: assign by largest inner product (cosine for unit vectors) instead of smallest L2 distance.

    Returns:
        ``(labels, sq_dist)``: (n,) int64 nearest centroid (ties: lowest index) and (n,) float64 squared
        Euclidean distance to it.
    """
    X = np.asarray(X, dtype=np.float32)
    C = np.asarray(centers, dtype=np.float32)
    c_sq = np.einsum("ij,ij->i", C, C)
    labels = np.empty(X.shape[0], dtype=np.int64)
    sq_dist = np.empty(X.shape[0], dtype=np.float64)
    for start in range(0, X.shape[0], _ASSIGN_BLOCK):
        block = X[start : start + _ASSIGN_BLOCK]
        dots = block @ C.T
        x_sq = np.einsum("ij,ij->i", block, block)
        if spherical:
            lab = np.argmax(dots, axis=1)
        else:
            lab = np.argmin(c_sq[None, :] - 2.0 * dots, axis=1)
        best_dot = dots[np.arange(block.shape[0]), lab]
        labels[start : start + block.shape[0]] = lab
        sq_dist[start : start + block.shape[0]] = np.maximum(x_sq + c_sq[lab] - 2.0 * best_dot, 0.0)
    return labels, sq_dist


class KMeans(ClusterMixin, BaseEstimator):
    """k-means clustering (faiss or scikit-learn backend, optional spherical/cosine variant).

    Args:
        n_clusters: number of clusters ``k`` (at most the number of rows).
        spherical: cluster by cosine similarity (rows and centroids L2-normalised).
        backend: ``"auto"`` (faiss if installed, else scikit-learn), ``"faiss"`` or ``"sklearn"``.
        n_init: number of restarts; the lowest-inertia run is kept.
        max_iter: maximum Lloyd iterations.
        tol: convergence tolerance: scikit-learn's relative centroid shift, faiss's relative objective change.
        max_points_per_centroid: faiss trains on at most this many rows per centroid (subsampled with the seed).
        random_state: seed for initialisation and subsampling; the same seed and row order give the same result
            (None: a fresh seed per fit).
        verbose: log per-iteration progress of the backend.

    Attributes:
        cluster_centers_: (k, d) float32 centroids (unit norm when ``spherical``).
        labels_: (n,) int64 cluster of each training row.
        inertia_: sum of squared Euclidean distances of the (normalised, when spherical) rows to their centroid;
            lower = tighter clusters. For spherical k-means it equals ``sum(2 - 2 cos)``.
        n_iter_: iterations run.
        backend_: the backend used (``"faiss"`` or ``"sklearn"``).
        n_features_in_: number of input features.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(100, 4)).astype("float32")
        >>> bool(KMeans(n_clusters=3, spherical=True, random_state=1).fit_predict(X).max() <= 2)
        True
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        spherical: bool = False,
        backend: str = "auto",
        n_init: int = 1,
        max_iter: int = 100,
        tol: float = 1e-4,
        max_points_per_centroid: int = 256,
        random_state: int | None = 0,
        verbose: bool = False,
    ):
        self.n_clusters = n_clusters
        self.spherical = spherical
        self.backend = backend
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.max_points_per_centroid = max_points_per_centroid
        self.random_state = random_state
        self.verbose = verbose

    def _validate(self, X) -> np.ndarray:
        for name in ("n_clusters", "n_init", "max_iter", "max_points_per_centroid"):
            _check_positive_int(name, getattr(self, name))
        X = validate_rows(X, estimator=self)
        if X.shape[0] < self.n_clusters:
            raise DataError(f"n_clusters={self.n_clusters} is larger than the number of rows (n_samples={X.shape[0]})")
        return l2_normalize(X, copy=False) if self.spherical else np.ascontiguousarray(X, dtype=np.float32)

    def fit(self, X, y=None) -> KMeans:
        """Cluster the rows of ``X`` (n, d) of finite real numbers. ``y`` is ignored (scikit-learn API).

        Raises:
            DataError: bad ``X`` (see :func:`validate_rows`) or fewer rows than ``n_clusters``.
            ConfigError: an invalid parameter.
            MissingDependencyError: ``backend="faiss"`` without faiss.
        """
        X = self._validate(X)
        self.backend_ = resolve_backend(self.backend)
        seed = seed_from(self.random_state)
        with _threads_for(X.shape[0] * X.shape[1] * int(self.n_clusters), self.backend_):
            if self.backend_ == "faiss":
                centers, n_iter = self._fit_faiss(X, seed)
            else:
                centers, n_iter = self._fit_sklearn(X, seed)
        self.cluster_centers_ = centers.astype(np.float32)
        labels, sq_dist = assign(X, self.cluster_centers_, spherical=self.spherical)
        self.labels_ = labels
        self.inertia_ = float(sq_dist.sum())
        self.n_iter_ = int(n_iter)
        return self

    def _fit_faiss(self, X: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
        import faiss

        rng = np.random.default_rng(seed)
        best, best_inertia, n_iter = None, np.inf, 0
        for _ in range(int(self.n_init)):
            run_seed = int(rng.integers(0, 2**31 - 1))
            km = faiss.Kmeans(
                X.shape[1],
                int(self.n_clusters),
                niter=int(self.max_iter),
                nredo=1,
                spherical=bool(self.spherical),
                seed=run_seed,
                verbose=bool(self.verbose),
                max_points_per_centroid=int(self.max_points_per_centroid),
                # silences faiss's warning for fewer than 39 rows per centroid, which small pools legitimately have.
                min_points_per_centroid=1,
            )
            # faiss's random initialisation lands in visibly worse optima than scikit-learn's greedy k-means++
            # (25% higher inertia on separated blobs), so both backends start from the same k-means++ seeding.
            if hasattr(km.cp, "early_stop_threshold"):
                km.cp.early_stop_threshold = float(min(max(self.tol, 0.0), 1.0))
            km.train(X, init_centroids=self._kmeans_plusplus(X, run_seed))
            n_iter = max(n_iter, len(km.obj))
            centers = np.asarray(km.centroids, dtype=np.float32)
            inertia = float(assign(X, centers, spherical=self.spherical)[1].sum()) if self.n_init > 1 else 0.0
            if best is None or inertia < best_inertia:
                best, best_inertia = centers, inertia
        return best, n_iter

    def _kmeans_plusplus(self, X: np.ndarray, seed: int) -> np.ndarray:
        """Greedy k-means++ seeds from a subsample of ``init_points_per_centroid * k`` rows (all rows when fewer)."""
        from sklearn.cluster import kmeans_plusplus

        rng = np.random.default_rng(seed)
        n_sample = min(X.shape[0], int(self.n_clusters) * _INIT_POINTS_PER_CENTROID)
        sample = X if n_sample == X.shape[0] else X[np.sort(rng.choice(X.shape[0], n_sample, replace=False))]
        centers, _ = kmeans_plusplus(sample, int(self.n_clusters), random_state=seed)
        centers = np.ascontiguousarray(centers, dtype=np.float32)
        return l2_normalize(centers) if self.spherical else centers

    def _fit_sklearn(self, X: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
        from sklearn.cluster import KMeans as SKKMeans

        km = SKKMeans(
            n_clusters=int(self.n_clusters),
            n_init=int(self.n_init),
            max_iter=int(self.max_iter),
            tol=float(self.tol),
            random_state=seed,
            verbose=int(bool(self.verbose)),
        ).fit(X)
        centers = np.asarray(km.cluster_centers_, dtype=np.float32)
        n_iter = int(km.n_iter_)
        if self.spherical:
            centers, extra = _spherical_lloyd(X, centers, self.max_iter, self.tol)
            n_iter += extra
        return centers, n_iter

    def predict(self, X) -> np.ndarray:
        """Nearest learned centroid of each row of ``X``: (n,) int64."""
        check_is_fitted(self)
        X = validate_rows(X, estimator=self, reset=False)
        X = l2_normalize(X, copy=False) if self.spherical else np.ascontiguousarray(X, dtype=np.float32)
        return assign(X, self.cluster_centers_, spherical=self.spherical)[0]


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _spherical_lloyd(X: np.ndarray, centers: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, int]:
    """Spherical k-means iterations from ``centers``: assign by cosine, centroid = normalised mean.

    An empty cluster keeps its previous centroid. Stops when no label changes or the largest centroid shift
    falls under ``tol``.
    """
    k = centers.shape[0]
    C = l2_normalize(centers)
    labels = None
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        new_labels, _ = assign(X, C, spherical=True)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        sums = cluster_sums(X, labels, k)
        counts = np.bincount(labels, minlength=k)
        new_C = C.astype(np.float64).copy()
        filled = counts > 0
        new_C[filled] = sums[filled]
        new_C = l2_normalize(new_C)
        shift = float(np.max(np.linalg.norm(new_C - C, axis=1))) if k else 0.0
        C = new_C
        if shift < tol:
            break
    return C, n_iter


def cluster_centers(X: np.ndarray, labels: np.ndarray, n_clusters: int, *, spherical: bool = True) -> np.ndarray:
    """Centroids of given labels: the mean of each cluster's rows (L2-normalised when ``spherical``).

    Used when clusters come from a column (``cluster_<name>``) rather than from :class:`KMeans`. With
    ``spherical`` the rows are L2-normalised before averaging, as spherical k-means and SemDeDup's reference code
    do, so a row's norm never weighs on its cluster's centroid. A label with no rows gets a zero centroid.
    """
    if spherical:
        X = l2_normalize(np.asarray(X), copy=False)
    sums = cluster_sums(X, labels, n_clusters)
    counts = np.bincount(labels, minlength=n_clusters).astype(np.float64)
    centers = sums / np.maximum(counts, 1.0)[:, None]
    return l2_normalize(centers) if spherical else centers.astype(np.float32)


def cluster_sums(X: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """(k, d) float64 sum of each cluster's rows, as one sparse-indicator product (much faster than a loop)."""
    from scipy import sparse

    labels = np.asarray(labels, dtype=np.int64)
    indicator = sparse.csr_matrix(
        (np.ones(labels.size, dtype=np.float32), (labels, np.arange(labels.size))), shape=(n_clusters, labels.size)
    )
    # float32 product: a float64 copy of a (10^6, 512) embedding matrix would double peak memory.
    return np.asarray(indicator @ np.asarray(X, dtype=np.float32), dtype=np.float64)


class BalancedKMeans(ClusterMixin, BaseEstimator):
    """k-means whose clusters all have the same size ``n // n_clusters``; the remainder rows are dropped.

    The rows are clustered by :class:`KMeans`; then the ``n mod n_clusters`` rows farthest from their nearest
    centroid are dropped (``labels_ == -1``) and the others are assigned greedily: every unplaced row proposes to
    its nearest centroid that still has room, each centroid accepts its closest proposers up to its capacity,
    rejected rows try again without the centroids that filled up (at most ``n_clusters`` rounds). On clusters that
    are already balanced nothing moves. Used by :func:`selector.labels.partition_pool` for InstructionGPT-4's
    equal-size proxy subsets.

    Args:
        n_clusters: number of subsets ``k`` (at most the number of rows).
        spherical: cluster by cosine similarity (rows L2-normalised), as for embeddings.
        backend: k-means backend: ``"auto"`` (faiss when installed), ``"faiss"`` or ``"sklearn"``.
        n_init: k-means restarts; the lowest-inertia run is kept.
        max_iter: maximum Lloyd iterations.
        random_state: seed of the k-means initialisation; same seed and row order give the same labels.

    Attributes:
        labels_: (n,) int64 subset of each row, ``-1`` for the dropped remainder rows.
        cluster_centers_: (k, d) float32 k-means centroids.
        subset_size_: rows per subset, ``n // k``.
        n_dropped_: rows dropped to make the subsets equal (``n mod k``).
        n_moved_: kept rows placed in another subset than their nearest centroid's, because it was full.
        inertia_: sum of squared distances of the kept rows to their subset's centroid (lower = tighter).
        n_iter_: Lloyd iterations of the underlying k-means.
        n_features_in_: number of input features.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(103, 4))
        >>> bkm = BalancedKMeans(n_clusters=5, random_state=0).fit(X)
        >>> np.bincount(bkm.labels_[bkm.labels_ >= 0]).tolist(), bkm.n_dropped_
        ([20, 20, 20, 20, 20], 3)
    """

    def __init__(
        self,
        n_clusters: int = 30,
        *,
        spherical: bool = True,
        backend: str = "auto",
        n_init: int = 1,
        max_iter: int = 100,
        random_state: int | None = 0,
    ):
        self.n_clusters = n_clusters
        self.spherical = spherical
        self.backend = backend
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y=None) -> BalancedKMeans:
        """Cluster and balance the rows of ``X`` (n, d); ``y`` is ignored (scikit-learn API).

        Raises:
            DataError: bad ``X`` (see :func:`validate_rows`) or fewer rows than ``n_clusters``.
            ConfigError: an invalid parameter.
        """
        X = validate_rows(X, estimator=self)
        km = KMeans(
            n_clusters=self.n_clusters,
            spherical=self.spherical,
            backend=self.backend,
            n_init=self.n_init,
            max_iter=self.max_iter,
            random_state=self.random_state,
        ).fit(X)
        X = l2_normalize(X, copy=False) if self.spherical else np.ascontiguousarray(X, dtype=np.float32)
        centers = km.cluster_centers_
        dist = _sq_distances(X, centers)
        n, k = dist.shape
        size = n // k
        nearest = dist.argmin(axis=1)
        nearest_d = dist[np.arange(n), nearest]
        n_drop = n - size * k
        # farthest rows first; equal distances drop the later row, so the result is a function of row order only.
        drop = np.lexsort((-np.arange(n), -nearest_d))[:n_drop]
        labels = np.full(n, -1, dtype=np.int64)
        capacity = np.full(k, size, dtype=np.int64)
        is_open = capacity > 0
        keep = np.ones(n, dtype=bool)
        keep[drop] = False
        active = np.flatnonzero(keep)
        while active.size:
            masked = dist[active]
            masked[:, ~is_open] = np.inf
            choice = masked.argmin(axis=1)
            chosen_d = masked[np.arange(active.size), choice]
            # closest proposers first within each centroid (ties by row position); one sort per round
            order = np.lexsort((active, chosen_d, choice))
            proposed = choice[order]
            starts = np.concatenate([[0], np.cumsum(np.bincount(proposed, minlength=k))[:-1]])
            accept = np.arange(order.size) - starts[proposed] < capacity[proposed]
            labels[active[order[accept]]] = proposed[accept]
            capacity -= np.bincount(proposed[accept], minlength=k)
            is_open &= capacity > 0
            active = active[order[~accept]]
        kept = labels >= 0
        self.labels_ = labels
        self.cluster_centers_ = centers
        self.subset_size_ = int(size)
        self.n_dropped_ = int(n_drop)
        self.n_moved_ = int((kept & (labels != nearest)).sum())
        self.inertia_ = float(dist[np.flatnonzero(kept), labels[kept]].sum(dtype=np.float64))
        self.n_iter_ = km.n_iter_
        return self


def _sq_distances(X: np.ndarray, centers: np.ndarray, block: int = _ASSIGN_BLOCK) -> np.ndarray:
    """(n, k) float32 squared Euclidean distances, computed in row blocks (float32 halves the n x k matrix)."""
    C = np.asarray(centers, dtype=np.float32)
    c_sq = np.einsum("ij,ij->i", C, C)
    out = np.empty((X.shape[0], C.shape[0]), dtype=np.float32)
    for start in range(0, X.shape[0], block):
        part = X[start : start + block]
        x_sq = np.einsum("ij,ij->i", part, part)
        out[start : start + part.shape[0]] = np.maximum(x_sq[:, None] + c_sq[None, :] - 2.0 * (part @ C.T), 0.0)
    return out


def __getattr__(name: str):
    # SpectralClustering is a clustering estimator too; imported on first access because selector.spectral builds
    # on this module (its k-means step), and a module-level import here would make the two import each other.
    if name == "SpectralClustering":
        from selector.spectral import SpectralClustering

        return SpectralClustering
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
