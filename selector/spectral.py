"""Spectral clustering that scales to millions of rows: sparse kNN graph, normalised Laplacian, LOBPCG + AMG.

The pipeline is the one of Ng, Jordan & Weiss (2002) on the affinity scikit-learn uses for
``SpectralClustering(affinity="nearest_neighbors")``:

1. k-nearest-neighbour connectivity ``C`` (each row counts itself as one of its ``n_neighbors``), symmetrised
   as ``A = (C + C.T) / 2``; exact for small ``n``, approximate (an IVF partition searched cell by cell, or
   faiss HNSW, or pynndescent) for large ``n``. The graph backends live in :mod:`selector.knn`; this module
   holds the eigensolvers and the estimator.
2. Normalised Laplacian ``L = I - D^-1/2 A D^-1/2`` as a sparse matrix.
3. The ``n_components`` smallest eigenvectors of ``L``: LOBPCG preconditioned by a smoothed-aggregation AMG
   hierarchy when ``pyamg`` is installed, ARPACK (Lanczos on ``D^-1/2 A D^-1/2``) otherwise; above 200,000
   rows a float32 subspace iteration, whose memory and time per step stay linear in n.
4. k-means on the row-normalised eigenvectors.

Memory is ``O(n * (n_neighbors + n_components))``: nothing of size ``n x n`` is ever built.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state

from selector.cluster import KMeans
from selector.cpus import resolve_n_jobs
from selector.errors import ConfigError, DataError, require
from selector.knn import (
    KNN_METHODS,
    METRICS,
    as_float32_rows,
    check_choice,
    connectivity,
    resolve_method,
    single_threaded_kernels,
)

logger = logging.getLogger(__name__)

__all__ = ["SpectralClustering", "spectral_embedding"]

_EIGEN_SOLVERS = ("auto", "lobpcg", "arpack", "subspace")
# Below this many rows the eigenproblem is solved densely; LOBPCG is unreliable when n < 5 * block size.
_DENSE_EIGEN_MAX_ROWS = 512
# LOBPCG iteration cap and tolerance: with the AMG preconditioner and a coarse-level start the embedding clusters
# as well as a converged one after ~10 iterations (connected 10^4-row graph, k = 100: ARI to the planted labels
# 0.648 after 10, 0.655 after 20, 0.656 after 40 from a random start); scikit-learn's AMG path also stops at scipy's
# default of 20. Each iteration costs O(n * n_components^2).
_LOBPCG_MAXITER = 20
_LOBPCG_TOL = 1e-4
# Largest coarse level whose dense Galerkin eigenproblem gives LOBPCG its starting block.
_COARSE_START_MAX = 4000
# Above this many rows eigen_solver="auto" switches from LOBPCG/ARPACK to subspace iteration: LOBPCG's dense
# block work (~12 float64 (n, k) blocks, O(n k^2) per iteration, plus k AMG cycles) does not fit 15 min and
# 8 GiB at n = 10^6, k = 100 on two cores; subspace iteration needs a few float32 blocks and sparse products.
_ITERATIVE_BLOCK_MAX_ROWS = 200_000
# Subspace-iteration round cap and the degree of its Chebyshev filter (sparse products per round).
_SUBSPACE_MAXITER = 40
_CHEBYSHEV_DEGREE = 8


@contextlib.contextmanager
def _numpy_global_seed(seed: int):
    # pyamg draws from the global numpy RNG (spectral-radius estimates); seed it for repeatability and put the
    # caller's state back afterwards.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def spectral_embedding(
    affinity: sparse.spmatrix,
    n_components: int,
    *,
    eigen_solver: str = "auto",
    eigen_tol: float | None = None,
    eigen_maxiter: int | None = None,
    random_state=None,
):
    """Smallest eigenpairs of the normalised Laplacian ``I - D^-1/2 A D^-1/2`` of a sparse symmetric affinity.

    Args:
        affinity: (n, n) sparse symmetric non-negative matrix with a positive degree on every row.
        n_components: eigenvectors to compute.
        eigen_solver: ``"lobpcg"`` (AMG-preconditioned, needs pyamg), ``"arpack"``, ``"subspace"`` (float32
            block power iteration for very large graphs), or ``"auto"``: subspace above 200,000 rows, else lobpcg
            when pyamg is installed and arpack otherwise.
        eigen_tol: solver tolerance; None picks 1e-4 for LOBPCG, 1e-6 for ARPACK, 1e-4 (Ritz values) for subspace.
        eigen_maxiter: iteration cap; None picks 20 for LOBPCG and ARPACK's default.
        random_state: seed of the starting vectors.

    Returns:
        ``(eigenvalues, eigenvectors, solver)``: (n_components,) ascending values in [0, 2]; (n, n_components)
        float64 orthonormal columns; the solver that ran (``"dense"`` for small problems).
    """
    rng = check_random_state(random_state)
    A = sparse.csr_matrix(affinity, dtype=np.float64)
    n = A.shape[0]
    degree = np.asarray(A.sum(axis=1)).ravel()
    if (degree <= 0).any():
        raise DataError("every row of the affinity needs a positive degree (add self loops)")
    d_isqrt = 1.0 / np.sqrt(degree)
    S = sparse.csr_matrix(sparse.diags(d_isqrt) @ A @ sparse.diags(d_isqrt))
    solver = eigen_solver
    if solver == "auto":
        if n > _ITERATIVE_BLOCK_MAX_ROWS:
            solver = "subspace"
        else:
            solver = "lobpcg" if _has_module("pyamg") else "arpack"
    if solver == "lobpcg":
        require("pyamg", "spectral", "the AMG-preconditioned LOBPCG eigensolver")
    if n <= max(_DENSE_EIGEN_MAX_ROWS, 5 * (n_components + 1)) or n_components >= n - 1:
        solver = "dense"
    start = time.perf_counter()
    if solver == "dense":
        import scipy.linalg

        # Small enough that the dense matrix is cheaper than any iterative method (at most a few MB).
        vals, vecs = scipy.linalg.eigh(np.eye(n) - S.toarray(), subset_by_index=(0, n_components - 1))
    elif solver == "lobpcg":
        vals, vecs = _lobpcg(S, degree, n_components, rng, eigen_tol, eigen_maxiter)
    elif solver == "subspace":
        vals, vecs = _subspace(S, degree, n_components, rng, eigen_tol, eigen_maxiter)
    else:
        vals, vecs = _arpack(S, degree, n_components, rng, eigen_tol, eigen_maxiter)
    order = np.argsort(vals, kind="stable")
    vals, vecs = np.clip(vals[order], 0.0, 2.0), vecs[:, order]
    logger.info("spectral embedding (%s, n=%d, k=%d) in %.1fs", solver, n, n_components, time.perf_counter() - start)
    return vals, vecs, solver


def _component_vectors(S, degree, n_components):
    """Exact null-space eigenvectors of L: D^1/2 times the indicator of each connected component, unit length.

    A graph with c components has eigenvalue 0 of L repeated c times. Single-vector Lanczos (ARPACK) finds one
    vector per distinct eigenvalue and would lose most of them, and any solver would spend iterations
    rediscovering vectors that are known in closed form; both solvers take these directly and iterate only in
    the orthogonal complement. The largest components come first (ties by first row), so with more components
    than eigenvectors the embedding keeps the big ones and the leftover rows share the zero vector.
    """
    from scipy.sparse.csgraph import connected_components

    n = S.shape[0]
    n_comp, comp = connected_components(S, directed=False)
    sizes = np.bincount(comp, minlength=n_comp)
    ranked = np.lexsort((np.arange(n_comp), -sizes))[: min(n_comp, n_components)]
    slot = np.full(n_comp, -1, dtype=np.int64)
    slot[ranked] = np.arange(ranked.size)
    Z = np.zeros((n, ranked.size))
    rows = np.flatnonzero(slot[comp] >= 0)
    sqrt_deg = np.sqrt(degree)
    Z[rows, slot[comp[rows]]] = sqrt_deg[rows]
    Z /= np.linalg.norm(Z, axis=0, keepdims=True)
    return Z


def _arpack(S, degree, n_components, rng, tol, maxiter):
    from scipy.sparse.linalg import LinearOperator, eigsh

    n = S.shape[0]
    Z = _component_vectors(S, degree, n_components)
    n_rest = n_components - Z.shape[1]
    if n_rest == 0:
        return np.zeros(n_components), Z

    def deflated(x):
        x = np.asarray(x).reshape(n, -1)
        y = S @ (x - Z @ (Z.T @ x))
        return y - Z @ (Z.T @ y)

    op = LinearOperator((n, n), matvec=deflated, matmat=deflated, dtype=np.float64)
    v0 = rng.uniform(-1, 1, n)
    v0 -= Z @ (Z.T @ v0)
    # Largest eigenvalues of S = smallest of L; no shift-invert, which would factorise an n x n matrix.
    vals, vecs = eigsh(op, k=n_rest, which="LA", v0=v0, tol=1e-6 if tol is None else tol, maxiter=maxiter)
    return np.concatenate([np.zeros(Z.shape[1]), 1.0 - vals]), np.hstack([Z, vecs])


def _subspace(S, degree, n_components, rng, tol, maxiter):
    """Chebyshev-filtered subspace iteration with Rayleigh-Ritz, in float32, for large graphs.

    Works on the lazy walk ``T = (I + S) / 2`` (spectrum in [0, 1], the eigenvectors of L, eigenvalue
    ``1 - lambda_L / 2``) in the complement of the known component vectors. Each round rotates the block to its
    Ritz vectors, then applies a degree-8 Chebyshev polynomial that damps ``[0, a]`` (``a`` = the block's lowest
    Ritz value) and amplifies the wanted end of the spectrum, and re-orthonormalises: far fewer rounds than plain
    powers of T. Memory is a few (n, block) float32 arrays; a round costs 9 sparse products and one QR.
    """
    n = S.shape[0]
    Z = _component_vectors(S, degree, n_components)
    n_rest = n_components - Z.shape[1]
    if n_rest == 0:
        return np.zeros(n_components), Z
    S32 = sparse.csr_matrix(S, dtype=np.float32)
    Z32 = Z.astype(np.float32)
    # Oversampling: the Ritz vectors of a block somewhat larger than wanted converge much faster.
    block = min(n - Z.shape[1], n_rest + max(10, n_rest // 5))
    tol = 1e-4 if tol is None else tol
    maxiter = _SUBSPACE_MAXITER if maxiter is None else maxiter

    def apply_t(Q):
        Y = S32 @ Q
        Y += Q
        Y *= 0.5
        Y -= Z32 @ (Z32.T @ Y)
        return Y

    def chebyshev(Q, cut):
        # Three-term recurrence of the Chebyshev polynomial mapping [0, cut] onto [-1, 1].
        half = np.float32(cut / 2)
        prev, cur = Q, (apply_t(Q) - half * Q) / half
        for _ in range(_CHEBYSHEV_DEGREE - 1):
            nxt = 2 * (apply_t(cur) - half * cur) / half - prev
            prev, cur = cur, nxt
        return cur

    Q = rng.standard_normal((n, block)).astype(np.float32)
    Q -= Z32 @ (Z32.T @ Q)
    Q = np.linalg.qr(apply_t(Q))[0]
    previous = None
    for it in range(1, maxiter + 1):
        H = (Q.T @ apply_t(Q)).astype(np.float64)
        theta, W = np.linalg.eigh(0.5 * (H + H.T))
        theta, W = theta[::-1], W[:, ::-1]
        Q = Q @ W.astype(np.float32)
        top = theta[:n_rest]
        if previous is not None and np.max(np.abs(top - previous)) < tol:
            logger.info("subspace iteration converged after %d rounds", it)
            break
        previous = top
        if it == maxiter:
            logger.warning("subspace iteration stopped at %d rounds before the Ritz values settled to %g", it, tol)
            break
        cut = float(np.clip(theta[-1], 0.05, 0.995))
        Q = np.linalg.qr(chebyshev(Q, cut))[0]
    vecs = Q[:, :n_rest].astype(np.float64)
    vals = np.clip(2.0 - 2.0 * theta[:n_rest], 0.0, 2.0)
    return np.concatenate([np.zeros(Z.shape[1]), vals]), np.hstack([Z, vecs])


def _block_vcycle(ml):
    """One symmetric AMG V-cycle applied to a whole block of vectors at once, on ``ml``'s hierarchy.

    pyamg's own preconditioner takes one vector per call (Gauss-Seidel in C++), so LOBPCG's ``(n, k)`` block
    costs ``k`` Python-level cycles per iteration: with k = 100 that was 60% of the solve at n = 10^4. Here each
    level does two damped-Jacobi sweeps (weight 2/3: the normalised Laplacian's diagonal is ~1 and its spectrum
    lies in [0, 2]) before and after the coarse correction, as sparse-times-dense products over the block; the
    same sweeps before and after keep the operator symmetric, which LOBPCG needs. The coarsest level is solved
    with its (small) dense pseudo-inverse.
    """
    levels = ml.levels
    weights = [(2.0 / 3.0) / level.A.diagonal()[:, None] for level in levels]
    coarse_inverse = np.linalg.pinv(levels[-1].A.toarray())

    def cycle(depth, b):
        if depth == len(levels) - 1:
            return coarse_inverse @ b
        A, w = levels[depth].A, weights[depth]
        x = w * b
        x += w * (b - A @ x)
        x += levels[depth].P @ cycle(depth + 1, levels[depth].R @ (b - A @ x))
        x += w * (b - A @ x)
        x += w * (b - A @ x)
        return x

    def apply(block):
        block = np.asarray(block)
        return cycle(0, block.reshape(block.shape[0], -1)).reshape(block.shape)

    return apply


def _coarse_start(ml, L, n_known, n_rest):
    """Initial LOBPCG block from the AMG hierarchy: the smallest eigenvectors of the Galerkin pencil
    ``(P^T L P, P^T P)`` on a coarse level, prolonged to the fine grid (None when no level fits).

    The coarse level is the finest one with at most 4,000 unknowns (a dense generalised eigenproblem of a few
    seconds) and at least twice the block size (a coarse space that can hold the block). Starting from these
    instead of random vectors LOBPCG needs far fewer iterations for the same embedding.
    """
    import scipy.linalg

    want = n_known + n_rest
    P = None
    for depth, level in enumerate(ml.levels[:-1]):
        P = level.P if P is None else P @ level.P
        size = ml.levels[depth + 1].A.shape[0]
        if size > _COARSE_START_MAX:
            continue
        if size < 2 * want:
            return None
        P = sparse.csr_matrix(P)
        Lc = (P.T @ (L @ P)).toarray()
        Mc = (P.T @ P).toarray()
        _, vecs = scipy.linalg.eigh(Lc, Mc, subset_by_index=(0, want - 1))
        return np.asarray(P @ vecs[:, n_known:])
    return None


def _lobpcg(S, degree, n_components, rng, tol, maxiter):
    import warnings

    import pyamg
    from scipy.sparse.linalg import LinearOperator, lobpcg

    n = S.shape[0]
    Z = _component_vectors(S, degree, n_components)
    n_rest = n_components - Z.shape[1]
    if n_rest == 0:
        return np.zeros(n_components), Z
    L = sparse.csr_matrix(sparse.identity(n, format="csr") - S)
    # The AMG hierarchy is built on a slightly shifted (positive definite) Laplacian, as scikit-learn does.
    with _numpy_global_seed(int(rng.randint(0, 2**31 - 1))):
        ml = pyamg.smoothed_aggregation_solver(sparse.csr_matrix(L + 1e-5 * sparse.identity(n, format="csr")))
    apply = _block_vcycle(ml)
    M = LinearOperator((n, n), matvec=apply, matmat=apply, dtype=np.float64)
    X0 = _coarse_start(ml, L, Z.shape[1], n_rest)
    if X0 is None:
        X0 = rng.standard_normal((n, n_rest))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _numpy_global_seed(int(rng.randint(0, 2**31 - 1))):
            vals, vecs = lobpcg(
                L,
                X0,
                M=M,
                Y=Z,
                tol=_LOBPCG_TOL if tol is None else tol,
                maxiter=_LOBPCG_MAXITER if maxiter is None else maxiter,
                largest=False,
            )
    for w in caught:
        # lobpcg warns (with every residual) when it stops at maxiter, which is the normal case with the default
        # cap: the embedding clusters as well as a converged one by then (see _LOBPCG_MAXITER), so INFO, not WARNING.
        logger.info("lobpcg: %s", str(w.message).strip().splitlines()[0].strip())
        logger.debug("lobpcg: %s", w.message)
    return np.concatenate([np.zeros(Z.shape[1]), vals]), np.hstack([Z, vecs])


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


class SpectralClustering(ClusterMixin, BaseEstimator):
    """Spectral clustering on a sparse symmetric k-nearest-neighbour graph, for up to millions of rows.

    Matches ``sklearn.cluster.SpectralClustering(affinity="nearest_neighbors")`` on data both can handle
    (same symmetrised connectivity ``(C + C.T) / 2``), but never builds an ``n x n`` matrix: memory is
    ``O(n * (n_neighbors + n_components))``, the kNN search is approximate above 20,000 rows, and the
    eigenvectors come from AMG-preconditioned LOBPCG (ARPACK without pyamg).

    Args:
        n_clusters: number of clusters.
        n_neighbors: neighbours per row in the affinity graph, counting the row itself.
        metric: ``"euclidean"`` (as scikit-learn) or ``"cosine"`` (rows L2-normalised; right for embeddings).
        knn: ``"auto"`` (exact up to 20,000 rows, ``"ivf"`` above), ``"exact"``, ``"ivf"`` (k-means cells of
            about ``sqrt(n)`` rows searched cell against ``n_probe`` nearby cells by matrix products),
            ``"hnsw"`` (faiss, extra ``faiss``) or ``"pynndescent"`` (extra ``spectral``).
        n_probe: cells searched per cell by ``knn="ivf"``.
        n_components: eigenvectors in the embedding; None means ``n_clusters``.
        eigen_solver: ``"auto"`` (up to 200,000 rows LOBPCG with an AMG preconditioner when pyamg is installed,
            else ARPACK; above, ``"subspace"``), ``"lobpcg"``, ``"arpack"`` or ``"subspace"`` (float32 block power
            iteration with Rayleigh-Ritz: a few (n, k) blocks of memory, made for 10^6 rows). Problems of at most
            512 rows are solved densely. Exactly known eigenvectors (one per connected component) are never
            iterated for.
        eigen_tol: eigensolver tolerance (None: 1e-4 LOBPCG, 1e-6 ARPACK, 1e-4 on the Ritz values for subspace).
        eigen_maxiter: eigensolver iteration cap (None: 20 for LOBPCG, ARPACK's default, 40 subspace rounds).
        n_init: k-means restarts on the embedding.
        random_state: seed for the kNN partition, the eigensolver start and k-means.
        n_jobs: threads (None: every CPU this process may use). The exact kNN search spreads its tiles over them.
            Up to 200,000 rows the eigensolver and k-means run single-threaded whatever ``n_jobs`` is: they are
            sequences of small dense products, where a BLAS or OpenMP team gains little and loses much as soon as
            another process holds a core (2x10^4 rows, 100 eigenvectors, on a busy 2-core machine: LOBPCG 5.6 s
            in one thread, 40.7 s in two; k-means 1.4 s against 13.8 s). Above, they use ``n_jobs`` threads.
            The kNN graph does not depend on ``n_jobs``, nor, up to 200,000 rows, do the labels.

    Attributes:
        labels_: (n_samples,) int64 cluster of each row, in ``[0, n_clusters)``.
        affinity_matrix_: (n_samples, n_samples) sparse CSR symmetric affinity.
        embedding_: (n_samples, n_components) float32 row-normalised spectral embedding.
        eigenvalues_: (n_components,) ascending Laplacian eigenvalues in ``[0, 2]``; many values near 0 mean
            well-separated clusters.
        cluster_centers_: (n_clusters, n_components) k-means centres in the embedding space.
        n_connected_components_: connected components of the affinity graph.
        knn_method_, eigen_solver_: what ran after resolving ``"auto"``.
        n_features_in_: number of input features.

    Example:
        >>> import numpy as np
        >>> from selector.spectral import SpectralClustering
        >>> rng = np.random.default_rng(0)
        >>> X = np.concatenate([rng.normal(c, 0.1, size=(50, 8)) for c in (0.0, 5.0, 10.0)])
        >>> labels = SpectralClustering(n_clusters=3, random_state=0).fit_predict(X)
        >>> len(set(labels[:50])), len(set(labels))
        (1, 3)
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_neighbors: int = 10,
        metric: str = "euclidean",
        knn: str = "auto",
        n_probe: int = 8,
        n_components: int | None = None,
        eigen_solver: str = "auto",
        eigen_tol: float | None = None,
        eigen_maxiter: int | None = None,
        n_init: int = 3,
        random_state=None,
        n_jobs: int | None = None,
    ):
        self.n_clusters = n_clusters
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.knn = knn
        self.n_probe = n_probe
        self.n_components = n_components
        self.eigen_solver = eigen_solver
        self.eigen_tol = eigen_tol
        self.eigen_maxiter = eigen_maxiter
        self.n_init = n_init
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _validate_params(self, n: int) -> tuple[int, int]:
        check_choice("metric", self.metric, METRICS)
        check_choice("knn", self.knn, KNN_METHODS)
        check_choice("eigen_solver", self.eigen_solver, _EIGEN_SOLVERS)
        if not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 1:
            raise ConfigError(f"n_clusters must be a positive integer, got {self.n_clusters!r}")
        if self.n_clusters > n:
            raise ConfigError(f"n_clusters={self.n_clusters} exceeds the number of rows (n_samples={n})")
        if not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors < 2:
            raise ConfigError(f"n_neighbors must be an integer >= 2, got {self.n_neighbors!r}")
        if not isinstance(self.n_probe, (int, np.integer)) or self.n_probe < 1:
            raise ConfigError(f"n_probe must be a positive integer, got {self.n_probe!r}")
        if not isinstance(self.n_init, (int, np.integer)) or self.n_init < 1:
            raise ConfigError(f"n_init must be a positive integer, got {self.n_init!r}")
        resolve_n_jobs(self.n_jobs)
        n_components = self.n_clusters if self.n_components is None else self.n_components
        if not isinstance(n_components, (int, np.integer)) or not 1 <= n_components <= n:
            raise ConfigError(f"n_components must be an integer in [1, {n}], got {self.n_components!r}")
        if self.knn == "hnsw":
            require("faiss", "faiss", "HNSW nearest neighbours")
        if self.knn == "pynndescent":
            require("pynndescent", "spectral", "pynndescent nearest neighbours")
        if self.eigen_solver == "lobpcg":
            require("pyamg", "spectral", "the AMG-preconditioned LOBPCG eigensolver")
        return min(self.n_neighbors, n), int(n_components)

    def fit(self, X, y=None) -> SpectralClustering:
        """Cluster the rows of ``X``.

        Args:
            X: (n_samples, n_features) finite real array.
            y: ignored.

        Returns:
            self, with ``labels_`` and the other fitted attributes set.

        Raises:
            DataError: X is not 2-D, empty, complex, or has NaN / infinite values (or all-zero rows for cosine).
            DataTypeError: X is sparse or not numeric.
            ConfigError: an invalid parameter (unknown option, n_clusters > n_samples, ...).
            MissingDependencyError: the chosen kNN method or eigensolver needs an extra that is not installed.
        """
        check_choice("metric", self.metric, METRICS)
        Xf = as_float32_rows(X, self.metric, estimator=self)
        n = Xf.shape[0]
        n_neighbors, n_components = self._validate_params(n)
        rng = check_random_state(self.random_state)
        self.knn_method_ = resolve_method(self.knn, n)
        if n == 1:
            return self._fit_single_row()
        graph = connectivity(Xf, n_neighbors, self.knn_method_, self.n_probe, rng, n_jobs=self.n_jobs)
        del Xf
        affinity = sparse.csr_matrix(0.5 * (graph + graph.T))
        del graph
        from scipy.sparse.csgraph import connected_components

        self.n_connected_components_ = int(connected_components(affinity, directed=False)[0])
        if self.n_connected_components_ > n_components:
            logger.warning(
                "the kNN graph has %d connected components, more than the %d eigenvectors computed: the embedding "
                "cannot separate all of them; raise n_neighbors",
                self.n_connected_components_,
                n_components,
            )
        with self._eigen_threads(n):
            vals, vecs, solver = spectral_embedding(
                affinity,
                n_components,
                eigen_solver=self.eigen_solver,
                eigen_tol=self.eigen_tol,
                eigen_maxiter=self.eigen_maxiter,
                random_state=rng,
            )
            embedding = vecs.astype(np.float32)
            del vecs
            norms = np.linalg.norm(embedding, axis=1, keepdims=True)
            embedding /= np.where(norms > 0, norms, 1.0)
            start = time.perf_counter()
            km = KMeans(n_clusters=self.n_clusters, n_init=self.n_init, random_state=int(rng.randint(0, 2**31 - 1)))
            self.labels_ = km.fit_predict(embedding).astype(np.int64)
        logger.info("k-means on the embedding (k=%d) in %.1fs", self.n_clusters, time.perf_counter() - start)
        self.cluster_centers_ = km.cluster_centers_.astype(np.float32)
        self.affinity_matrix_ = affinity
        self.embedding_ = embedding
        self.eigenvalues_ = vals
        self.eigen_solver_ = solver
        return self

    def _eigen_threads(self, n: int):
        """Thread limits of the eigensolver and k-means stage (see ``n_jobs``)."""
        if n <= _ITERATIVE_BLOCK_MAX_ROWS:
            return single_threaded_kernels()
        if self.n_jobs is None:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=resolve_n_jobs(self.n_jobs))

    def _fit_single_row(self) -> SpectralClustering:
        # A graph of one node has no neighbours to search; its only clustering is the trivial one.
        self.labels_ = np.zeros(1, dtype=np.int64)
        self.affinity_matrix_ = sparse.identity(1, format="csr")
        self.embedding_ = np.ones((1, 1), dtype=np.float32)
        self.eigenvalues_ = np.zeros(1)
        self.cluster_centers_ = np.ones((1, 1), dtype=np.float32)
        self.n_connected_components_ = 1
        self.eigen_solver_ = "none"
        return self
