"""Prototypicality: distance to the cluster centroid, SSL-prototypes scores, SemDeDup.

Arrays in, arrays out. Embeddings are compared by cosine similarity (rows are L2-normalised here, so callers may
pass raw vectors).

- :func:`centroid_distance`: cosine distance ``1 - cos(x, c_label)`` in [0, 2]; higher = less prototypical.
- :func:`keep_scores` / :class:`SSLPrototypes` (Sorscher et al., NeurIPS 2022): scores oriented "high = keep".
  ``keep="hard"`` keeps the rows far from their prototype (the paper's choice for large pools), ``"easy"`` the
  rows close to it (small pools), ``"random"`` a seeded uniform draw, ``"auto"`` picks easy or hard from the
  budget (:func:`auto_keep`).
- :func:`semdedup` / :class:`SemDeDup` (Abbas et al. 2023): inside each cluster, rows are ordered by the keep rule
  and row ``j`` is a duplicate at threshold ``eps`` when ``max_{i<j} cos(e_i, e_j) > 1 - eps``. One blocked pass
  computes that maximum (and the ``i`` reaching it) for every row, so any number of ``eps`` values come from the
  same pass, and peak extra memory is one block of ``block_size`` similarities, never a cluster squared.
  Each duplicate names the kept row it duplicates (following chains of duplicates to a kept row).

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(300, 16)).astype("float32")
    >>> X[1] = X[0] + 1e-3  # a near-copy
    >>> labels = np.zeros(300, dtype=int)
    >>> result = semdedup(X, labels, eps=[0.01, 0.1])
    >>> bool(result.keep[0, 0] != result.keep[0, 1]), result.keep.shape
    (True, (2, 300))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from selector.cluster import KMeans, l2_normalize, validate_rows
from selector.cpus import resolve_n_jobs
from selector.errors import ConfigError, DataError
from selector.rows import parse_budget, resolve_budget, seed_from

logger = logging.getLogger(__name__)

KEEP_RULES = ("hard", "easy", "random", "auto")

#: ``keep="auto"`` keeps the easy rows when the kept fraction is below this (see :func:`auto_keep`).
AUTO_EASY_BELOW_FRACTION = 0.2

#: default number of similarities computed at once by :func:`semdedup` (4M float32 = 16 MiB per block).
DEFAULT_BLOCK_SIZE = 1 << 22


def _check_keep(keep: str) -> None:
    if keep not in KEEP_RULES:
        raise ConfigError(f"unknown keep rule {keep!r}; choose one of {', '.join(KEEP_RULES)}")


def auto_keep(n_keep: int, n_rows: int) -> str:
    """The keep rule ``keep="auto"`` resolves to when ``n_keep`` of ``n_rows`` rows are kept: ``"easy"`` or ``"hard"``.

    Sorscher et al. (NeurIPS 2022, "Beyond neural scaling laws", Sec. 3 and Fig. 1): the best pruning metric
    depends on how much data is left. When data is scarce (aggressive pruning) keeping the *easy*, prototypical
    rows is better; when it is plentiful, keeping the *hard* rows is. The rule here is one threshold on the kept
    fraction: ``"easy"`` when ``n_keep / n_rows`` is below :data:`AUTO_EASY_BELOW_FRACTION` (0.2), else ``"hard"``.

    The threshold is measured, not taken from the paper (which gives the direction, not a number). In
    benchmarks/bench_pruning.py (digits and Fashion-MNIST, pixel-PCA and EfficientNet-Lite0 features, 5 seeds,
    logistic-regression probe) easy beat hard at 10% kept on three of the four dataset/feature pairs (and tied on
    the fourth), while hard beat easy at 30%, 50% and 70% on all four. An absolute "few rows" rule was tried and
    dropped: on digits, hard still won at 50% with only 629 rows kept. Neither rule comes near random at 10%
    there (README, "Pruning image datasets"): ``auto`` picks the lesser loss; it does not make prototype pruning
    safe at small budgets.

    Args:
        n_keep: rows to keep (the budget), ``>= 0``.
        n_rows: rows in the pool.

    Example:
        >>> auto_keep(1_000, 10_000), auto_keep(3_000, 10_000)
        ('easy', 'hard')
    """
    if n_rows <= 0 or n_keep / n_rows < AUTO_EASY_BELOW_FRACTION:
        return "easy"
    return "hard"


def resolve_keep(keep: str, n_keep: int, n_rows: int) -> str:
    """``keep`` itself, or what ``"auto"`` resolves to for ``n_keep`` of ``n_rows`` rows (:func:`auto_keep`)."""
    _check_keep(keep)
    return auto_keep(n_keep, n_rows) if keep == "auto" else keep


def _use_ray(engine: str) -> bool:
    if engine not in ("local", "ray"):
        raise ConfigError(f"engine must be 'local' or 'ray', got {engine!r}")
    return engine == "ray"


def _check_labels(labels, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise DataError(f"labels must have one entry per row ({n}), got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DataError("labels must be non-negative cluster indices")
    return labels.astype(np.int64, copy=False)


def centroid_distance(X, centers, labels, *, engine: str = "local") -> np.ndarray:
    """Cosine distance of each row to its assigned centroid.

    Args:
        X: (n, d) embeddings.
        centers: (k, d) centroids.
        labels: (n,) cluster index of each row.
        engine: ``"local"``, or ``"ray"``: one Ray task per group of clusters (:mod:`selector.ray_engine`), same
            result.

    Returns:
        (n,) float32 ``1 - cos(x_i, c_{labels_i})`` in [0, 2]; higher = farther from the prototype (harder,
        less typical). Rows of zero norm get distance 1.
    """
    X = np.asarray(X)
    labels = _check_labels(labels, X.shape[0])
    if _use_ray(engine):
        from selector import ray_engine

        return ray_engine.centroid_distance(X, centers, labels)
    C = l2_normalize(np.asarray(centers))
    out = np.empty(X.shape[0], dtype=np.float32)
    block = 1 << 15
    for start in range(0, X.shape[0], block):
        xb = l2_normalize(X[start : start + block])
        cos = np.einsum("ij,ij->i", xb, C[labels[start : start + block]])
        out[start : start + xb.shape[0]] = 1.0 - cos
    return np.clip(out, 0.0, 2.0)


def keep_scores(distance, keep: str = "hard", random_state=0) -> np.ndarray:
    """Turn centroid distances into "high = keep" scores.

    Args:
        distance: (n,) cosine distance to the centroid (:func:`centroid_distance`), in [0, 2].
        keep: ``"hard"`` -> score = distance (far rows first); ``"easy"`` -> score = 2 - distance (close rows
            first); ``"random"`` -> a seeded uniform draw in [0, 1). ``"auto"`` depends on the budget: resolve it
            with :func:`resolve_keep` first.
        random_state: seed for ``keep="random"``.

    Returns:
        (n,) float64 scores; higher = keep first. NaN distances stay NaN (rank last).
    """
    _check_keep(keep)
    if keep == "auto":
        raise ConfigError('keep="auto" depends on the budget; resolve it with resolve_keep(keep, n_keep, n_rows)')
    distance = np.asarray(distance, dtype=np.float64)
    if keep == "hard":
        return distance.copy()
    if keep == "easy":
        return 2.0 - distance
    scores = np.random.default_rng(seed_from(random_state)).random(distance.shape[0])
    scores[np.isnan(distance)] = np.nan
    return scores


def cluster_complexity(
    distance, labels, centers, *, n_neighbors: int = 20, block_size: int = DEFAULT_BLOCK_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """DBP cluster complexity terms ``(d_intra, d_inter)``.

    Args:
        distance: (n,) cosine distance of each row to its centroid (:func:`centroid_distance`).
        labels: (n,) cluster of each row, in ``[0, k)``.
        centers: (k, d) centroids.
        n_neighbors: how many nearest other centroids ``d_inter`` averages over (capped at ``k - 1``).
        block_size: centroid similarities computed at once (bounds memory for large ``k``).

    Returns:
        ``d_intra`` (k,) mean cosine distance of a cluster's rows to its centroid, in [0, 2] (0 for an empty
        cluster), higher = more spread out; ``d_inter`` (k,) mean ``1 - cos`` to the ``n_neighbors`` most similar
        other centroids, in [0, 2], higher = more isolated (1 when ``k == 1``).
    """
    C = l2_normalize(np.asarray(centers))
    k = C.shape[0]
    labels = _check_labels(labels, np.asarray(distance).shape[0])
    counts = np.bincount(labels, minlength=k)
    sums = np.bincount(labels, weights=np.asarray(distance, dtype=np.float64), minlength=k)
    d_intra = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    nn = min(int(n_neighbors), k - 1)
    if nn < 1:
        return d_intra, np.ones(k)
    d_inter = np.empty(k, dtype=np.float64)
    rows = max(1, block_size // k)
    for start in range(0, k, rows):
        sims = C[start : start + rows] @ C.T
        sims[np.arange(sims.shape[0]), np.arange(start, start + sims.shape[0])] = -np.inf
        top = np.partition(sims, k - nn, axis=1)[:, k - nn :]
        d_inter[start : start + sims.shape[0]] = 1.0 - top.astype(np.float64).mean(axis=1)
    return d_intra, d_inter


@dataclass
class SemDeDupResult:
    """Output of :func:`semdedup` for ``n`` rows and ``e`` thresholds.

    Attributes:
        eps: (e,) thresholds, in the order given.
        max_similarity: (n,) float32 ``max_{i<j} cos(e_i, e_j)`` over earlier rows ``i`` of the same cluster, in
            [-1, 1]; ``-inf`` for the first row of a cluster. Higher = more redundant.
        nearest: (n,) int64 row index (into the input) of that most similar earlier row; -1 for none.
        keep: (e, n) bool; ``keep[t, j]`` is False when row ``j`` is a duplicate at ``eps[t]``.
        dup_of: (e, n) int64; for a removed row, the kept row it duplicates (its nearest earlier row, or that
            row's own kept representative when the nearest row was removed too); -1 for kept rows.
    """

    eps: np.ndarray
    max_similarity: np.ndarray
    nearest: np.ndarray
    keep: np.ndarray
    dup_of: np.ndarray


def keep_order(labels: np.ndarray, priority=None, tie_rank=None) -> np.ndarray:
    """Row indices grouped by cluster, each cluster in keep order (highest ``priority`` first, NaN last).

    Ties break by ``tie_rank`` (e.g. each row's id rank), then by row index.
    """
    n = labels.shape[0]
    tie = np.arange(n) if tie_rank is None else np.asarray(tie_rank)
    if priority is None:
        return np.lexsort((np.arange(n), tie, labels))
    priority = np.asarray(priority, dtype=np.float64)
    key = np.where(np.isnan(priority), np.inf, -priority)
    return np.lexsort((np.arange(n), tie, key, labels))


def max_previous_similarity(
    X,
    labels,
    order=None,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    n_jobs: int | None = None,
    progress: bool = False,
    engine: str = "local",
) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the largest cosine similarity to an earlier row of its cluster (earlier in ``order``).

    The similarity of a cluster's ``m`` rows is computed in tiles of at most ``block_size`` entries, masking the
    upper triangle, so extra memory is ``O(n_jobs * (block_size + m * d))`` however large the clusters are.
    Clusters run in parallel threads with single-threaded BLAS: many medium-sized products parallelise better
    across clusters than inside one product (multi-threaded BLAS on 200 x 512 tiles was 20x slower on a busy
    machine).

    Args:
        X: (n, d) embeddings (normalised here, per cluster).
        labels: (n,) non-negative cluster index per row.
        order: (n,) permutation giving the keep order; rows of a cluster are compared in this order. Default:
            :func:`keep_order` without priority (row order within each cluster).
        block_size: similarities computed at once per thread.
        n_jobs: threads (default: the CPUs this process may use).
        progress: show a tqdm bar over clusters.
        engine: ``"local"`` (threads), or ``"ray"``: one Ray task per group of clusters, each reading only its
            clusters' rows (:func:`selector.ray_engine.max_previous_similarity`); same result.

    Returns:
        ``(max_similarity, nearest)`` as in :class:`SemDeDupResult`.
    """
    X = np.asarray(X)
    n = X.shape[0]
    labels = _check_labels(labels, n)
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ConfigError(f"block_size must be a positive integer, got {block_size!r}")
    n_jobs = resolve_n_jobs(n_jobs)
    order = keep_order(labels) if order is None else np.asarray(order, dtype=np.int64)
    if _use_ray(engine):
        from selector import ray_engine

        return ray_engine.max_previous_similarity(X, labels, order, block_size=int(block_size))
    best = np.full(n, -np.inf, dtype=np.float32)
    nearest = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return best, nearest
    sorted_labels = labels[order]
    bounds = np.flatnonzero(np.diff(sorted_labels)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [n]])
    spans = [(int(a), int(b)) for a, b in zip(starts, ends) if b - a >= 2]

    def work(span):
        rows = order[span[0] : span[1]]
        # each cluster writes only its own rows of best/nearest, so threads never share an entry.
        _cluster_max_previous(l2_normalize(X[rows]), rows, best, nearest, block_size)

    bar = None
    if progress:
        from selector.logs import progress as progress_bar

        bar = progress_bar(total=len(spans), desc="SemDeDup", unit="cluster")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        if n_jobs == 1:
            for span in spans:
                work(span)
                if bar is not None:
                    bar.update()
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=n_jobs) as pool:
                for _ in pool.map(work, spans):
                    if bar is not None:
                        bar.update()
    if bar is not None:
        bar.close()
    return best, nearest


def _cluster_max_previous(Xc: np.ndarray, rows: np.ndarray, best, nearest, block_size: int) -> None:
    m = Xc.shape[0]
    row_tile = max(1, min(m, int(np.sqrt(block_size))))
    col_tile = max(1, block_size // row_tile)
    for r0 in range(1, m, row_tile):
        r1 = min(m, r0 + row_tile)
        local_best = np.full(r1 - r0, -np.inf, dtype=np.float32)
        local_arg = np.full(r1 - r0, -1, dtype=np.int64)
        # only earlier rows count, so columns stop at the block's last row.
        for c0 in range(0, r1 - 1, col_tile):
            c1 = min(r1 - 1, c0 + col_tile)
            sims = Xc[r0:r1] @ Xc[c0:c1].T
            if c1 > r0:
                row_idx = np.arange(r0, r1)[:, None]
                col_idx = np.arange(c0, c1)[None, :]
                sims[col_idx >= row_idx] = -np.inf
            arg = np.argmax(sims, axis=1)
            val = sims[np.arange(sims.shape[0]), arg]
            # strict > keeps the earliest column on ties, matching a left-to-right scan.
            better = val > local_best
            local_best[better] = val[better]
            local_arg[better] = arg[better] + c0
        target = rows[r0:r1]
        best[target] = local_best
        nearest[target] = np.where(local_arg >= 0, rows[np.maximum(local_arg, 0)], -1)


def resolve_duplicates(removed: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """For each removed row, the kept row its chain of nearest duplicates ends at; -1 for kept rows.

    ``nearest`` always points to an earlier row of the same cluster, so following it from a removed row ends at
    a kept row or at a row without an earlier neighbour (``nearest == -1``); in the latter case -1 is returned.
    Pointer jumping makes this O(n log depth), vectorised.
    """
    n = removed.shape[0]
    idx = np.arange(n)
    parent = np.where(removed & (nearest >= 0), nearest, idx)
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            break
        parent = grand
    root_kept = ~removed[parent]
    return np.where(removed & root_kept, parent, -1)


def semdedup(
    X,
    labels,
    eps=0.05,
    *,
    priority=None,
    tie_rank=None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    n_jobs: int | None = None,
    progress: bool = False,
    engine: str = "local",
) -> SemDeDupResult:
    """SemDeDup within clusters, for one or several thresholds in one pass.

    Args:
        X: (n, d) embeddings.
        labels: (n,) cluster of each row (e.g. ``KMeans(spherical=True).fit(X).labels_``).
        eps: a threshold or a sequence of thresholds in [0, 2]; row ``j`` is a duplicate when its largest
            similarity to an earlier row of its cluster exceeds ``1 - eps``. Larger eps removes more.
        priority: (n,) "high = keep" score ordering each cluster (e.g. :func:`keep_scores`); the row kept from a
            group of duplicates is the one with the highest priority. Default: row order.
        tie_rank: (n,) tie-breaker for equal priorities (lower first), e.g. the rank of each row's id.
        block_size: similarities computed at once per thread (bounds peak memory).
        n_jobs: threads over clusters (default: all CPUs available).
        progress: tqdm bar over clusters.
        engine: ``"local"`` or ``"ray"`` (per-cluster work as Ray tasks, same result; see
            :func:`max_previous_similarity`).

    Returns:
        :class:`SemDeDupResult`.
    """
    X = np.asarray(X)
    labels = _check_labels(labels, X.shape[0])
    eps_arr = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    if eps_arr.ndim != 1 or eps_arr.size == 0 or np.any(~np.isfinite(eps_arr)) or np.any(eps_arr < 0):
        raise ConfigError(f"eps must be one or more non-negative numbers, got {eps!r}")
    order = keep_order(labels, priority, tie_rank)
    max_sim, nearest = max_previous_similarity(
        X, labels, order, block_size=block_size, n_jobs=n_jobs, progress=progress, engine=engine
    )
    keep = np.empty((eps_arr.size, X.shape[0]), dtype=bool)
    dup_of = np.empty((eps_arr.size, X.shape[0]), dtype=np.int64)
    for t, e in enumerate(eps_arr):
        removed = max_sim > np.float32(1.0 - e)
        keep[t] = ~removed
        dup_of[t] = resolve_duplicates(removed, nearest)
    return SemDeDupResult(eps=eps_arr, max_similarity=max_sim, nearest=nearest, keep=keep, dup_of=dup_of)


def capped_n_clusters(n_clusters: int, n_rows: int) -> int:
    """``min(n_clusters, n_rows)``, with a warning when the cap applies: the clustering asked for can't exist
    (nearly every row would be its own cluster), so the user should know the number was lowered."""
    if int(n_clusters) > n_rows:
        logger.warning("n_clusters=%d is larger than the %d rows to cluster; using %d", n_clusters, n_rows, n_rows)
    return min(int(n_clusters), n_rows)


def _fit_spherical_kmeans(estimator: SSLPrototypes | SemDeDup, X) -> tuple[np.ndarray, KMeans]:
    """Check ``estimator.keep`` and ``X``, then fit the spherical k-means both estimators start from.

    Returns ``(X as a float array, fitted KMeans)``; ``n_clusters`` is capped at the number of rows. Sets
    ``estimator.n_features_in_``.
    """
    _check_keep(estimator.keep)
    X = validate_rows(X, estimator=estimator)
    k = estimator.n_clusters
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        k = capped_n_clusters(k, X.shape[0])
    kmeans = KMeans(k, spherical=True, backend=estimator.backend, random_state=estimator.random_state)
    return X, kmeans.fit(X)


class SSLPrototypes(BaseEstimator):
    """SSL-prototypes pruning (Sorscher et al. 2022): spherical k-means, then keep by distance to the prototype.

    Args:
        n_clusters: number of prototypes (capped at the number of rows).
        keep: ``"hard"`` (far from the prototype first), ``"easy"`` (close first), ``"random"``, or ``"auto"``
            (easy or hard from the budget and the number of rows passed to :meth:`fit`, see :func:`auto_keep`).
        budget: rows kept by :meth:`predict`: an int count or a fraction in (0, 1] (rounded half up), or
            anything :func:`selector.rows.parse_budget` reads (``"30%"``).
        backend: k-means backend (see :class:`selector.cluster.KMeans`).
        random_state: seed for k-means and ``keep="random"``.

    Attributes:
        kmeans_: the fitted :class:`~selector.cluster.KMeans`.
        keep_: the keep rule used (``keep`` with ``"auto"`` resolved).
        distance_: (n,) cosine distance of each training row to its prototype, in [0, 2].
        n_features_in_: number of input features.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(100, 8))
        >>> int(SSLPrototypes(n_clusters=5, budget=0.3).fit(X).predict(X).sum())
        30
    """

    def __init__(
        self,
        n_clusters: int = 100,
        *,
        keep: str = "auto",
        budget: int | float = 0.5,
        backend: str = "auto",
        random_state: int | None = 0,
    ):
        self.n_clusters = n_clusters
        self.keep = keep
        self.budget = budget
        self.backend = backend
        self.random_state = random_state

    def fit(self, X, y=None) -> SSLPrototypes:
        """Cluster the rows of ``X`` (n, d) and measure each row's distance to its prototype; ``y`` is ignored.

        Raises:
            DataError: bad ``X`` (see :func:`selector.cluster.validate_rows`).
            ConfigError: an unknown ``keep`` rule, a bad ``budget`` or k-means parameter.
        """
        parse_budget(self.budget)
        X, self.kmeans_ = _fit_spherical_kmeans(self, X)
        n = X.shape[0]
        self.keep_ = resolve_keep(self.keep, min(resolve_budget(self.budget, n), n), n)
        self.distance_ = centroid_distance(X, self.kmeans_.cluster_centers_, self.kmeans_.labels_)
        return self

    def score_samples(self, X) -> np.ndarray:
        """(n,) "high = keep" score: the distance to the prototype (hard), 2 - distance (easy) or a random draw."""
        check_is_fitted(self)
        X = validate_rows(X, estimator=self, reset=False)
        distance = centroid_distance(X, self.kmeans_.cluster_centers_, self.kmeans_.predict(X))
        return keep_scores(distance, self.keep_, self.random_state)

    def predict(self, X) -> np.ndarray:
        """(n,) bool mask of the ``budget`` highest-scoring rows (ties: lower row index).

        A fractional budget rounds half up (:func:`selector.rows.resolve_budget`: 0.5 of 5 rows is 3); a count
        above the number of rows keeps every row.
        """
        scores = self.score_samples(X)
        n_keep = min(resolve_budget(self.budget, scores.shape[0]), scores.shape[0])
        order = np.lexsort((np.arange(scores.shape[0]), np.where(np.isnan(scores), np.inf, -scores)))
        mask = np.zeros(scores.shape[0], dtype=bool)
        mask[order[:n_keep]] = True
        return mask


class SemDeDup(BaseEstimator):
    """SemDeDup as an estimator: spherical k-means, then remove within-cluster near-duplicates.

    Args:
        n_clusters: k-means clusters (capped at the number of rows).
        eps: duplicate threshold: a row whose cosine similarity to an earlier row of its cluster exceeds
            ``1 - eps`` is removed.
        keep: which row of a duplicate group survives: ``"hard"`` (farthest from the centroid, the paper's
            default), ``"easy"`` (closest), ``"random"``, or ``"auto"`` (:func:`auto_keep` with every row kept:
            ``"hard"``).
        block_size: similarities computed at once (bounds peak memory).
        backend: k-means backend, as for :class:`~selector.cluster.KMeans`.
        random_state: k-means seed, as for :class:`~selector.cluster.KMeans`.

    Attributes:
        kmeans_: the fitted :class:`~selector.cluster.KMeans`.
        result_: :class:`SemDeDupResult` of the training rows.
        n_features_in_: number of input features.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(50, 8))
        >>> X[1] = X[0]
        >>> int(SemDeDup(n_clusters=2, eps=0.01).fit(X).predict(X).sum())
        49
    """

    def __init__(
        self,
        n_clusters: int = 100,
        *,
        eps: float = 0.05,
        keep: str = "hard",
        block_size: int = DEFAULT_BLOCK_SIZE,
        backend: str = "auto",
        random_state: int | None = 0,
    ):
        self.n_clusters = n_clusters
        self.eps = eps
        self.keep = keep
        self.block_size = block_size
        self.backend = backend
        self.random_state = random_state

    def fit(self, X, y=None) -> SemDeDup:
        """Cluster the rows of ``X`` (n, d) and mark the near-duplicates inside each cluster; ``y`` is ignored.

        Raises:
            DataError: bad ``X`` (see :func:`selector.cluster.validate_rows`).
            ConfigError: an unknown ``keep`` rule, a bad ``eps``, ``block_size`` or k-means parameter.
        """
        X, self.kmeans_ = _fit_spherical_kmeans(self, X)
        distance = centroid_distance(X, self.kmeans_.cluster_centers_, self.kmeans_.labels_)
        # no budget here: the estimator keeps every non-duplicate, so "auto" sees a kept fraction of 1.
        priority = keep_scores(distance, resolve_keep(self.keep, X.shape[0], X.shape[0]), self.random_state)
        self.result_ = semdedup(X, self.kmeans_.labels_, self.eps, priority=priority, block_size=self.block_size)
        return self

    def score_samples(self, X) -> np.ndarray:
        """(n,) ``-max_similarity`` of the training rows, in [-1, 1] (``inf`` for a cluster's first row);
        higher = more unique, keep first. Only defined for the data passed to :meth:`fit`."""
        self._check(X)
        return -self.result_.max_similarity.astype(np.float64)

    def predict(self, X) -> np.ndarray:
        """(n,) bool mask: True for rows kept at ``eps`` (of the data passed to :meth:`fit`)."""
        self._check(X)
        return self.result_.keep[0].copy()

    def _check(self, X) -> None:
        check_is_fitted(self)
        if np.shape(X) != (self.result_.keep.shape[1], self.n_features_in_):
            raise DataError("SemDeDup scores the rows it was fitted on; call fit(X) on the new rows")
