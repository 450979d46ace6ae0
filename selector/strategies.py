"""The strategy contract, the strategy registry and every named selection strategy.

A strategy chooses an order over the eligible rows of one stratum; :mod:`selector.selection` (``select``,
``select_arrays``) applies the selection policies around it (errors, missing inputs, stable-hash order, strata,
exact budget, reasons), so a new strategy gets them for free.

Strategies: ``random``, ``topk`` (``topk:<column>``), ``ssl_prototypes``, ``semdedup``, ``dbp``,
``instructiongpt4``, the training-dynamics scores ``forgetting``, ``el2n``, ``grand``, ``curvature``, the
embedding coresets ``herding`` and ``kcenter`` and coverage-centric selection ``ccs`` (array functions in
:mod:`selector.coreset`).

Writing a strategy (plug-in contract). Register ``"name": "package.module:function"`` in :data:`STRATEGIES` (or
the ``vlselect.strategies`` entry-point group). The function is::

    @strategy(needs=("embeddings",))            # what it requires, see below
    def my_strategy(inp: StrategyInput, *, my_option: int = 3) -> StrategyResult: ...

- ``inp`` (:class:`StrategyInput`) holds only the eligible rows of one stratum, ``m`` of them, in stable-hash
  order: ``embeddings`` (m, d) float32 with finite rows, or None; ``scores`` (m,) float64 "high = better", NaN
  allowed, or None; ``ids`` (m,) str; ``tie_rank`` (m,) int64 (lower id first, for tie-breaks); ``clusters``
  (m,) int64 in ``[0, n_clusters)`` from a ``cluster_column`` whenever one is given (use it instead of
  clustering; :func:`fit_clusters` does), or None; ``budget`` (int, ``<= m``) rows to
  select; ``random_state`` (int seed; create ``np.random.default_rng(inp.random_state)``).
- keyword-only parameters with defaults are the strategy's options: ``select(..., my_option=5)`` reaches them,
  an unknown option is a ``ConfigError`` naming the accepted ones, and the resolved values go to the manifest.
- ``needs``: ``"embeddings"``, ``"scores"``, ``"clusters"``; ``"clusters|embeddings"`` means either (the first
  one available is the one used). The wrapper raises a ``ConfigError`` when one is missing and, for
  ``select``, auto-detects a single ``emb_*`` column.
- return a :class:`StrategyResult`: ``order`` (indices into the m rows, most wanted first; the first
  ``budget`` are selected; rows left out of ``order`` are excluded) plus optional per-row ``cluster``,
  ``cluster_rank`` and per-cluster ``quota`` (for ``quota`` reasons), ``dup_of``/``similarity`` (for
  ``dup_of`` reasons), ``score`` (the "high = keep" value used) and ``info`` (JSON-able, goes to the
  manifest). Helpers: :func:`rank_by_score`, :func:`quota_order`, :func:`fit_clusters`.

``select``, ``select_arrays``, ``select_dataset`` and ``Selection`` live in :mod:`selector.selection` and stay
importable from here; ``resolve_budget``, ``stable_hash`` and ``id_ranks`` are the row rules of
:mod:`selector.rows`, re-exported.

Example:
    >>> import numpy as np
    >>> from selector.selection import select_arrays
    >>> X = np.random.default_rng(0).normal(size=(100, 8)).astype("float32")
    >>> sel = select_arrays(X, 0.2, "ssl_prototypes", n_clusters=5)
    >>> int(sel.mask.sum()), sel.reason[sel.indices[0]].split()[0]
    (20, 'selected')
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from selector.errors import ConfigError

# Row rules that were defined here once; re-exported so `selector.strategies.resolve_budget` keeps working.
from selector.rows import id_ranks, resolve_budget, stable_hash  # noqa: F401

logger = logging.getLogger(__name__)

#: Strategy registry: name -> "module:function". Add a line to plug a strategy in (see the module docstring).
STRATEGIES = {
    "random": "selector.strategies:random_strategy",
    "topk": "selector.strategies:topk_strategy",
    "ssl_prototypes": "selector.strategies:ssl_prototypes_strategy",
    "semdedup": "selector.strategies:semdedup_strategy",
    "dbp": "selector.strategies:dbp_strategy",
    "instructiongpt4": "selector.strategies:instructiongpt4_strategy",
    "forgetting": "selector.strategies:forgetting_strategy",
    "el2n": "selector.strategies:el2n_strategy",
    "grand": "selector.strategies:grand_strategy",
    "curvature": "selector.strategies:curvature_strategy",
    "herding": "selector.strategies:herding_strategy",
    "kcenter": "selector.strategies:kcenter_strategy",
    "ccs": "selector.strategies:ccs_strategy",
}

ENTRY_POINT_GROUP = "vlselect.strategies"
# pools at least this large show a progress bar for the SemDeDup pass.
_PROGRESS_ROWS = 100_000
_INPUTS = ("embeddings", "scores", "clusters")

# The selection entry points live in selector.selection, which imports this module; they are resolved on first
# access so both import paths work without an import cycle.
_SELECTION_NAMES = ("Selection", "select", "select_arrays", "select_dataset")


def __getattr__(name: str):
    if name in _SELECTION_NAMES:
        from selector import selection

        return getattr(selection, name)
    if name == "embedding_matrix":
        from selector.rows import embedding_matrix

        return embedding_matrix
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The contract.


def strategy(*, needs: tuple[str, ...] = ()) -> Callable:
    """Decorator declaring what a strategy function requires (see the module docstring)."""
    for need in needs:
        for alt in need.split("|"):
            if alt not in _INPUTS:
                raise ValueError(f"unknown strategy input {alt!r}; use {', '.join(_INPUTS)}")

    def deco(fn):
        fn.needs = tuple(needs)
        return fn

    return deco


@dataclass(frozen=True)
class StrategyInput:
    """The eligible rows of one stratum, in stable-hash order (see the module docstring)."""

    embeddings: np.ndarray | None
    scores: np.ndarray | None
    ids: np.ndarray
    tie_rank: np.ndarray
    clusters: np.ndarray | None
    budget: int
    random_state: int

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class StrategyResult:
    """What a strategy returns (see the module docstring). Index arrays refer to the strategy's ``m`` rows."""

    order: np.ndarray
    cluster: np.ndarray | None = None
    cluster_rank: np.ndarray | None = None
    quota: np.ndarray | None = None
    dup_of: np.ndarray | None = None
    similarity: np.ndarray | None = None
    score: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def check_result(name: str, res: Any, m: int) -> None:
    """Raise ``TypeError``/``ValueError`` when a strategy's return value breaks the contract (``m`` input rows)."""
    if not isinstance(res, StrategyResult):
        raise TypeError(f"strategy {name!r} must return a StrategyResult, got {type(res).__name__}")
    order = np.asarray(res.order)
    if order.ndim != 1 or (order.size and not np.issubdtype(order.dtype, np.integer)):
        raise TypeError(f"strategy {name!r} returned an order that is not a 1-D integer array")
    if order.size and (order.min() < 0 or order.max() >= m or np.unique(order).size != order.size):
        raise ValueError(f"strategy {name!r} returned an order with repeated or out-of-range indices")
    for attr in ("cluster", "cluster_rank", "dup_of", "similarity", "score"):
        value = getattr(res, attr)
        if value is not None and np.asarray(value).shape != (m,):
            raise ValueError(f"strategy {name!r} returned {attr} of shape {np.asarray(value).shape}, expected ({m},)")


# The registry.


def available_strategies() -> list[str]:
    """Names accepted by ``strategy=``: the built-in registry plus the ``vlselect.strategies`` entry points."""
    return sorted(set(STRATEGIES) | set(_entry_points()))


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_strategy(name: str) -> Callable:
    """The strategy function registered under ``name`` (imported on demand)."""
    target = STRATEGIES.get(name) or _entry_points().get(name)
    if target is None:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(available_strategies())}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def parse_strategy(spec: str) -> tuple[str, str | None]:
    """``"topk:score_clip"`` -> ``("topk", "score_clip")``; ``"dbp"`` -> ``("dbp", None)``."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"strategy must be a non-empty string, got {spec!r}")
    name, sep, column = spec.partition(":")
    if sep and not column:
        raise ConfigError(f"strategy {spec!r} names no column after ':'")
    return name, (column or None)


def strategy_options(name: str) -> dict[str, Any]:
    """A strategy's options and their defaults (its keyword-only parameters)."""
    fn = get_strategy(name)
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def resolve_options(name: str, fn: Callable, options: dict) -> dict:
    """The strategy's options with defaults filled in; an unknown option is a ``ConfigError`` naming the known."""
    accepted = {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        hint = ", ".join(sorted(accepted)) or "none"
        raise ConfigError(f"strategy {name!r} has no option(s) {', '.join(unknown)}; its options: {hint}")
    return {**accepted, **options}


def used_inputs(name: str, needs: tuple[str, ...], have: dict[str, bool], hints: dict[str, str]) -> set[str]:
    """Which inputs a strategy with ``needs`` uses given what is ``have``; a missing one is a ``ConfigError``
    that says how to supply it (``hints``: input -> how the caller passes it)."""
    used = set()
    for need in needs:
        alts = need.split("|")
        found = next((alt for alt in alts if have.get(alt)), None)
        if found is None:
            wanted = " or ".join(hints.get(alt, alt) for alt in alts)
            raise ConfigError(f"strategy {name!r} needs {wanted}")
        used.add(found)
    return used


# Helpers for strategies.


def rank_by_score(scores, tie_rank=None, *, descending: bool = True) -> np.ndarray:
    """Indices ordered by score (highest first unless ``descending=False``), NaN last, ties by ``tie_rank``."""
    scores = np.asarray(scores, dtype=np.float64)
    tie = np.arange(scores.shape[0]) if tie_rank is None else np.asarray(tie_rank)
    key = -scores if descending else scores
    key = np.where(np.isnan(key), np.inf, key)
    return np.lexsort((tie, key))


def quota_order(labels, priority, quotas, tie_rank=None) -> tuple[np.ndarray, np.ndarray]:
    """Order rows for per-cluster quotas: each cluster's rows by ``priority`` (high first, NaN last, ties by
    ``tie_rank``); the rows within quota come first, interleaved round-robin across clusters (every cluster's
    best row, then every second-best, ...), then the rows over quota the same way.

    Returns:
        ``(order, cluster_rank)``: indices in preference order, and each row's 0-based rank inside its cluster.
    """
    from selector.prototypes import keep_order

    labels = np.asarray(labels, dtype=np.int64)
    quotas = np.asarray(quotas, dtype=np.int64)
    m = labels.shape[0]
    within = keep_order(labels, priority, tie_rank)
    sorted_labels = labels[within]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]) if m else np.zeros(0, int)
    group_start = np.repeat(starts, np.diff(np.r_[starts, m]))
    cluster_rank = np.empty(m, dtype=np.int64)
    cluster_rank[within] = np.arange(m) - group_start
    q_row = quotas[labels]
    inside = cluster_rank < q_row
    idx_in, idx_out = np.flatnonzero(inside), np.flatnonzero(~inside)
    order_in = idx_in[np.lexsort((labels[idx_in], cluster_rank[idx_in]))]
    order_out = idx_out[np.lexsort((labels[idx_out], (cluster_rank - q_row)[idx_out]))]
    return np.concatenate([order_in, order_out]), cluster_rank


def fit_clusters(
    inp: StrategyInput, n_clusters: int, *, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Clusters for a strategy: ``inp.clusters`` when given, else spherical k-means on ``inp.embeddings``.

    Returns:
        ``(labels, centers)``: (m,) int64 labels and (k, d) unit centroids (None when clusters were given and
        there are no embeddings).
    """
    from selector.cluster import KMeans, cluster_centers
    from selector.prototypes import capped_n_clusters

    if inp.clusters is not None:
        labels = inp.clusters
        k = int(labels.max()) + 1 if labels.size else 0
        centers = None if inp.embeddings is None else cluster_centers(inp.embeddings, labels, k)
        return labels, centers
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise ConfigError(f"n_clusters must be a positive integer, got {n_clusters!r}")
    if inp.embeddings is None:
        raise ConfigError("clustering needs embeddings (embedding_column=) or clusters (cluster_column=)")
    k = capped_n_clusters(n_clusters, inp.n)
    km = KMeans(k, spherical=True, backend=backend, random_state=inp.random_state).fit(inp.embeddings)
    return km.labels_, km.cluster_centers_


def spectral_clusters(inp: StrategyInput, n_clusters: int) -> np.ndarray:
    """(m,) int64 spectral clusters of ``inp.embeddings`` by cosine similarity (see :mod:`selector.spectral`)."""
    from selector.cluster import l2_normalize
    from selector.prototypes import capped_n_clusters
    from selector.spectral import SpectralClustering

    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise ConfigError(f"n_clusters must be a positive integer, got {n_clusters!r}")
    if inp.embeddings is None:
        raise ConfigError("clustering needs embeddings (embedding_column=) or clusters (cluster_column=)")
    # Unit rows under the Euclidean metric rank neighbours by cosine, and an all-zero row stays usable.
    X = l2_normalize(inp.embeddings)
    sc = SpectralClustering(capped_n_clusters(n_clusters, inp.n), random_state=inp.random_state)
    return sc.fit_predict(X)


# The strategies.


@strategy()
def random_strategy(inp: StrategyInput) -> StrategyResult:
    """Uniform random order (seeded): the baseline every pruning method must beat."""
    return StrategyResult(order=np.random.default_rng(inp.random_state).permutation(inp.n))


@strategy(needs=("scores",))
def topk_strategy(inp: StrategyInput, *, ascending: bool = False) -> StrategyResult:
    """The rows with the highest score (lowest with ``ascending=True``); NaN last, ties by id."""
    return StrategyResult(order=rank_by_score(inp.scores, inp.tie_rank, descending=not ascending), score=inp.scores)


@strategy(needs=("embeddings",))
def ssl_prototypes_strategy(
    inp: StrategyInput, *, n_clusters: int = 100, keep: str = "auto", backend: str = "auto"
) -> StrategyResult:
    """SSL-prototypes (Sorscher et al. 2022): spherical k-means, rank all rows by distance to their prototype.

    ``keep``: ``"hard"`` (far first), ``"easy"`` (close first), ``"random"``, or ``"auto"`` (default): easy when
    data is scarce, hard when plentiful, from the budget and the stratum's rows
    (:func:`selector.prototypes.auto_keep`); ``info["keep"]`` records the rule used.
    """
    from selector.prototypes import centroid_distance, keep_scores, resolve_keep

    rule = resolve_keep(keep, inp.budget, inp.n)
    if inp.n == 0:
        return StrategyResult(order=np.zeros(0, dtype=np.int64))
    labels, centers = fit_clusters(inp, n_clusters, backend=backend)
    score = keep_scores(centroid_distance(inp.embeddings, centers, labels), rule, inp.random_state)
    return StrategyResult(
        order=rank_by_score(score, inp.tie_rank),
        cluster=labels,
        score=score,
        info={"n_clusters": int(centers.shape[0]), "keep": rule},
    )


@strategy(needs=("embeddings",))
def semdedup_strategy(
    inp: StrategyInput,
    *,
    n_clusters: int = 100,
    eps: float | None = None,
    keep: str = "hard",
    backend: str = "auto",
    block_size: int = 1 << 22,
    engine: str = "local",
) -> StrategyResult:
    """SemDeDup: keep the least redundant rows (smallest similarity to an earlier row of their cluster).

    With ``eps=None`` the budget sets the threshold: the selection equals SemDeDup at the eps that leaves exactly
    ``budget`` rows (up to ties). With ``eps`` given, rows above ``1 - eps`` are excluded first (possibly fewer
    rows than the budget remain). ``keep`` decides which row of a duplicate group survives (``"auto"``:
    :func:`selector.prototypes.auto_keep` from the budget). ``engine="ray"`` runs the per-cluster prototype
    distances and similarity passes as Ray tasks (:mod:`selector.ray_engine`); the selection is the same.
    """
    from selector.prototypes import (
        centroid_distance,
        keep_order,
        keep_scores,
        max_previous_similarity,
        resolve_duplicates,
        resolve_keep,
    )

    keep = resolve_keep(keep, inp.budget, inp.n)
    if inp.n == 0:
        return StrategyResult(order=np.zeros(0, dtype=np.int64))
    labels, centers = fit_clusters(inp, n_clusters, backend=backend)
    priority = keep_scores(centroid_distance(inp.embeddings, centers, labels, engine=engine), keep, inp.random_state)
    max_sim, nearest = max_previous_similarity(
        inp.embeddings,
        labels,
        keep_order(labels, priority, inp.tie_rank),
        block_size=block_size,
        progress=inp.n >= _PROGRESS_ROWS,
        engine=engine,
    )
    # least redundant first; among equals (e.g. every cluster's first row at -inf) the keep rule, then the id.
    order = np.lexsort((inp.tie_rank, np.where(np.isnan(priority), np.inf, -priority), max_sim))
    if eps is not None:
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ConfigError(f"eps must be a non-negative number, got {eps!r}")
        removed = max_sim > np.float32(1.0 - eps)
        order = order[~removed[order]]
    else:
        removed = np.ones(inp.n, dtype=bool)
        removed[order[: inp.budget]] = False
    kept_sim = max_sim[order[: inp.budget]]
    kept_sim = kept_sim[np.isfinite(kept_sim)]
    info = {
        "n_clusters": int(labels.max()) + 1,
        "keep": keep,
        "max_similarity_kept": float(kept_sim.max()) if kept_sim.size else None,
    }
    return StrategyResult(
        order=order,
        cluster=labels,
        dup_of=resolve_duplicates(removed, nearest),
        similarity=max_sim,
        score=-max_sim.astype(np.float64),
        info=info,
    )


@strategy(needs=("embeddings",))
def dbp_strategy(
    inp: StrategyInput,
    *,
    n_clusters: int = 100,
    eps: float | None = 0.01,
    temperature: float = 0.5,
    n_neighbors: int = 20,
    balance_ratio: float = 0.5,
    keep: str = "hard",
    backend: str = "auto",
    block_size: int = 1 << 22,
) -> StrategyResult:
    """Density-Based Pruning (Abbas et al. 2024): SemDeDup at ``eps`` (None skips it), then the clustering is fitted
    again on the rows that survive, then DBP quotas per cluster, keeping the ``keep`` rows of each cluster.

    The order follows the paper and its official code (``amro-kamal/effective_pruning``): deduplicate first, then
    cluster the survivors, because clusters fitted on all rows are "dominated by the duplicates" (a blob of
    near-copies attracts many centroids and so gets many quotas). With a ``cluster_column`` the given labels are
    kept and only their centroids are recomputed from the survivors. ``balance_ratio`` is the official
    ``--cls-bal-ratio``: every cluster keeps at least ``int(budget / k * balance_ratio)`` rows.

    When deduplication leaves fewer rows than the budget, the least redundant duplicates fill the rest so the
    budget is still met. Duplicates report the cluster of the nearest re-fitted centroid. ``keep="auto"`` picks
    easy or hard rows inside each cluster from the budget (:func:`selector.prototypes.auto_keep`).
    """
    from selector.cluster import cluster_centers
    from selector.prototypes import (
        centroid_distance,
        cluster_complexity,
        keep_order,
        keep_scores,
        max_previous_similarity,
        resolve_duplicates,
        resolve_keep,
    )
    from selector.quota import dbp_quota

    keep = resolve_keep(keep, inp.budget, inp.n)
    if inp.n == 0:
        return StrategyResult(order=np.zeros(0, dtype=np.int64))
    labels, centers = fit_clusters(inp, n_clusters, backend=backend)
    if eps is None:
        max_sim = np.full(inp.n, -np.inf, dtype=np.float32)
        nearest = np.full(inp.n, -1, dtype=np.int64)
        dup = np.zeros(inp.n, dtype=bool)
    else:
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ConfigError(f"eps must be a non-negative number or None, got {eps!r}")
        dedup_priority = keep_scores(centroid_distance(inp.embeddings, centers, labels), keep, inp.random_state)
        max_sim, nearest = max_previous_similarity(
            inp.embeddings,
            labels,
            keep_order(labels, dedup_priority, inp.tie_rank),
            block_size=block_size,
            progress=inp.n >= _PROGRESS_ROWS,
        )
        dup = max_sim > np.float32(1.0 - eps)
    rows = np.flatnonzero(~dup)
    if dup.any():
        # Re-fit on the survivors (see the docstring); every row then belongs to the survivors' clustering.
        if inp.clusters is not None:
            k = int(inp.clusters.max()) + 1
            centers = cluster_centers(inp.embeddings[rows], inp.clusters[rows], k)
        else:
            survivors = replace(inp, embeddings=inp.embeddings[rows], ids=inp.ids[rows], tie_rank=inp.tie_rank[rows])
            survivor_labels, centers = fit_clusters(survivors, n_clusters, backend=backend)
            labels = np.empty(inp.n, dtype=np.int64)
            labels[rows] = survivor_labels
            labels[dup] = nearest_center(inp.embeddings[dup], centers)
    k = centers.shape[0]
    distance = centroid_distance(inp.embeddings, centers, labels)
    priority = keep_scores(distance, keep, inp.random_state)
    sizes = np.bincount(labels[rows], minlength=k)
    d_intra, d_inter = cluster_complexity(distance[rows], labels[rows], centers, n_neighbors=n_neighbors)
    quota = dbp_quota(
        sizes,
        min(inp.budget, rows.size),
        d_intra=d_intra,
        d_inter=d_inter,
        temperature=temperature,
        balance_ratio=balance_ratio,
    )
    sub_order, sub_rank = quota_order(labels[rows], priority[rows], quota, inp.tie_rank[rows])
    cluster_rank = np.full(inp.n, -1, dtype=np.int64)
    cluster_rank[rows] = sub_rank
    dups = np.flatnonzero(dup)
    dups = dups[np.lexsort((inp.tie_rank[dups], max_sim[dups]))]
    info = {
        "n_clusters": int(k),
        "keep": keep,
        "n_duplicates": int(dups.size),
        "reclustered_after_dedup": bool(dup.any()),
        "quota": quota.tolist(),
        "d_intra": np.round(d_intra, 6).tolist(),
        "d_inter": np.round(d_inter, 6).tolist(),
    }
    return StrategyResult(
        order=np.concatenate([rows[sub_order], dups]),
        cluster=labels,
        cluster_rank=cluster_rank,
        quota=quota,
        dup_of=resolve_duplicates(dup, nearest),
        similarity=max_sim,
        score=priority,
        info=info,
    )


def nearest_center(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(n,) int64 index of the most cosine-similar centroid of each row of ``X``."""
    from selector.cluster import l2_normalize

    if X.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.argmax(l2_normalize(X) @ l2_normalize(centers).T, axis=1).astype(np.int64)


@strategy(needs=("scores", "clusters|embeddings"))
def instructiongpt4_strategy(
    inp: StrategyInput,
    *,
    n_clusters: int = 10,
    quota: str = "proportional",
    clustering: str = "spectral",
    backend: str = "auto",
    balance: float = 1.0,
) -> StrategyResult:
    """InstructionGPT-4: clusters (a cluster column, else spectral clustering of the embeddings as upstream, or
    spherical k-means with ``clustering="kmeans"``), per-cluster quotas, the best-scoring rows of each cluster
    (score column or learned-selector scores; NaN last, ties by id).

    ``quota``: ``"proportional"`` to cluster size (upstream), ``"uniform"``, or ``"quality"``: proportional to
    each cluster's quality mass, the sum of its rows' score percentile ranks (NaN counts 0; see
    :func:`selector.quota.quality_quota`), so a cluster of low-scoring rows gets a small share. Needs scores.

    ``balance`` (>= 1) loosens the quotas (:func:`selector.quota.balanced_quota`): cluster ``j`` keeps between
    ``q_j / balance`` and ``q_j * balance`` rows and the best rows of the whole pool fill the rest, so a cluster
    with many poor rows gives up its worst ones to better rows elsewhere. 1 (the default) is the strict quota of
    the paper; ``.inf`` is top-k by score.
    """
    from selector.prototypes import keep_order
    from selector.quota import balanced_quota, check_balance, compute_quota

    check_balance(balance)
    if quota not in ("proportional", "uniform", "quality"):
        raise ConfigError(f"instructiongpt4 quota must be 'proportional', 'uniform' or 'quality', got {quota!r}")
    if clustering not in ("spectral", "kmeans"):
        raise ConfigError(f"instructiongpt4 clustering must be 'spectral' or 'kmeans', got {clustering!r}")
    if inp.n == 0:
        return StrategyResult(order=np.zeros(0, dtype=np.int64))
    if inp.clusters is not None or clustering == "kmeans":
        labels = fit_clusters(inp, n_clusters, backend=backend)[0]
    else:
        labels = spectral_clusters(inp, n_clusters)
    sizes = np.bincount(labels, minlength=int(labels.max()) + 1)
    if quota == "quality":
        quotas = compute_quota(quota, sizes, inp.budget, mass=cluster_quality_mass(labels, inp.scores, sizes.size))
    else:
        quotas = compute_quota(quota, sizes, inp.budget)
    info = {"n_clusters": int(sizes.size), "quota": quotas.tolist()}
    if balance != 1:
        # one pool-wide preference order, with the same NaN and tie rules as the per-cluster order below.
        pool_order = keep_order(np.zeros_like(labels), inp.scores, inp.tie_rank)
        quotas = balanced_quota(quotas, labels, pool_order, balance)
        info.update(balance=float(balance), strict_quota=info["quota"], quota=quotas.tolist())
    order, cluster_rank = quota_order(labels, inp.scores, quotas, inp.tie_rank)
    return StrategyResult(
        order=order, cluster=labels, cluster_rank=cluster_rank, quota=quotas, score=inp.scores, info=info
    )


def cluster_quality_mass(labels: np.ndarray, scores: np.ndarray, n_clusters: int) -> np.ndarray:
    """(k,) sum per cluster of each row's score percentile rank in [0, 1] among the finite scores (NaN counts 0);
    ranks, not raw scores, so any score scale works."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    quality = np.zeros(scores.shape[0])
    if finite.sum() == 1:
        quality[finite] = 1.0
    elif finite.any():
        quality[finite] = (rankdata(scores[finite], method="average") - 1) / (finite.sum() - 1)
    return np.bincount(labels, weights=quality, minlength=n_clusters)


@strategy()
def forgetting_strategy(
    inp: StrategyInput,
    *,
    dynamics: str | list[str] | None = None,
    accuracy_threshold: float = 0.5,
    descending: bool | None = None,
):
    """Keep the most forgettable rows (Toneva et al.): most learned->forgotten transitions; never learned first.

    A sample counts as learned at an epoch when at least ``accuracy_threshold`` of its answer tokens are
    argmax-correct (default 0.5; 1.0 is the all-tokens rule, which on multi-sentence answers never fires and ties
    every row). Scores come from ``dynamics`` (a ``dynamics.parquet`` path, or a list of paths of runs with
    different seeds, averaged per row) or, without it, from the precomputed scores (``score_column=`` /
    ``scores=``) read as raw forgetting counts. ``descending=False`` keeps the least forgettable instead. Rows
    without a record rank last. When most rows tie, a warning says so (the id tie-break then decides).
    """
    return _dynamics_strategy("forgetting", inp, dynamics, None, descending, accuracy_threshold=accuracy_threshold)


@strategy()
def el2n_strategy(
    inp: StrategyInput,
    *,
    dynamics: str | list[str] | None = None,
    max_epoch: int | None = None,
    descending: bool | None = None,
):
    """Keep the rows with the highest EL2N (Paul et al.) averaged over epochs ``<= max_epoch`` (early training).

    Paul et al. score early in training and average over several initialisations: pass the ``dynamics.parquet``
    of several runs with different seeds as a list and a small ``max_epoch``; each row's score is the mean over
    the runs of its mean over the epochs. Same other inputs as :func:`forgetting_strategy`; precomputed scores
    are raw EL2N values.
    """
    return _dynamics_strategy("el2n", inp, dynamics, max_epoch, descending)


@strategy()
def grand_strategy(
    inp: StrategyInput,
    *,
    dynamics: str | list[str] | None = None,
    max_epoch: int | None = None,
    descending: bool | None = None,
):
    """Keep the rows with the largest GraNd (per-example gradient norm) over epochs ``<= max_epoch``.

    Several seeds' runs as for :func:`el2n_strategy`. The recorded norm is of the gradient w.r.t. the output
    embedding (``lm_head``) only, not all weights as in Paul et al. (see :func:`selector.coreset.grand_scores`).
    """
    return _dynamics_strategy("grand", inp, dynamics, max_epoch, descending)


@strategy()
def curvature_strategy(
    inp: StrategyInput,
    *,
    dynamics: str | list[str] | None = None,
    max_epoch: int | None = None,
    descending: bool | None = None,
):
    """Keep the rows with the *lowest* input loss curvature (Garg & Roy); ``descending=True`` keeps the highest.

    Same inputs as :func:`el2n_strategy`; precomputed scores are raw curvature values (low = keep). A dynamics
    file recorded without ``dynamics_curvature: true`` is a ``ConfigError``.
    """
    return _dynamics_strategy("curvature", inp, dynamics, max_epoch, descending)


def _dynamics_strategy(
    score: str,
    inp: StrategyInput,
    dynamics: str | list[str] | None,
    max_epoch: int | None,
    descending: bool | None,
    *,
    accuracy_threshold: float = 0.5,
) -> StrategyResult:
    from selector.coreset import DYNAMICS_SCORES, dynamics_scores
    from selector.dynamics import read_dynamics

    _, _, higher_keeps = DYNAMICS_SCORES[score]
    n_runs = 0
    if dynamics is not None:
        paths = [dynamics] if isinstance(dynamics, (str, os.PathLike)) else list(dynamics)
        if not paths:
            raise ConfigError(f"strategy {score!r}: dynamics= is an empty list")
        per_run = []
        for path in paths:
            unique, values = dynamics_scores(
                read_dynamics(path), score, max_epoch=max_epoch, accuracy_threshold=accuracy_threshold
            )
            lookup = dict(zip(unique.tolist(), values.tolist()))
            per_run.append([lookup.get(str(i), np.nan) for i in inp.ids])
        n_runs = len(paths)
        runs = np.asarray(per_run, dtype=np.float64).reshape(n_runs, inp.n)
        has = ~np.isnan(runs)
        # mean over the runs that recorded the row (Paul et al. average scores over independent initialisations)
        raw = np.where(has.any(0), np.nansum(runs, axis=0) / np.maximum(has.sum(0), 1), np.nan)
        n_missing = int((~has.any(0)).sum())
        if n_missing:
            logger.warning("%s: %d of %d rows have no record in %s and rank last", score, n_missing, inp.n, dynamics)
    elif inp.scores is not None:
        raw = np.asarray(inp.scores, dtype=np.float64)
    else:
        raise ConfigError(
            f"strategy {score!r} needs dynamics='path/to/dynamics.parquet' (written by `vlselect labels` / the "
            f"fine-tuning recipe) or a precomputed score column (score_column= / scores=)"
        )
    _warn_on_ties(score, raw)
    keep_high = higher_keeps if descending is None else bool(descending)
    order = rank_by_score(raw, inp.tie_rank, descending=keep_high)
    info = {
        "dynamics": dynamics,
        "n_runs": n_runs,
        "max_epoch": max_epoch,
        "direction": "high" if keep_high else "low",
    }
    if score == "forgetting":
        info["accuracy_threshold"] = accuracy_threshold
    return StrategyResult(order=order, score=raw if keep_high else -raw, info=info)


def _warn_on_ties(score: str, raw: np.ndarray) -> None:
    """Warn when most rows share one score: the selection among them is then the id tie-break, not the score."""
    finite = raw[np.isfinite(raw)]
    if finite.size < 2:
        return
    values, counts = np.unique(finite, return_counts=True)
    top = int(counts.argmax())
    if counts[top] * 2 > finite.size:
        logger.warning(
            "%s: %d of %d rows tie at score %g; among them the lowest ids are picked, not the best rows%s",
            score,
            counts[top],
            finite.size,
            values[top],
            " (lower accuracy_threshold, or train longer)" if score == "forgetting" else "",
        )


@strategy(needs=("embeddings",))
def herding_strategy(inp: StrategyInput) -> StrategyResult:
    """Herding on embeddings: the first ``budget`` rows whose running mean best matches the pool mean.

    Only the budget is ordered (each step costs a pass over the pool); the other rows are excluded.
    """
    from selector.coreset import herding

    order = herding(inp.embeddings, inp.budget)
    return StrategyResult(order=order, info={"n_picked": int(order.size)})


@strategy(needs=("embeddings",))
def kcenter_strategy(inp: StrategyInput) -> StrategyResult:
    """k-center greedy on embeddings (Euclidean): each pick is the row farthest from all earlier picks.

    The first center is drawn with ``random_state``; only the budget is ordered, the other rows are excluded.
    """
    from selector.coreset import kcenter_greedy

    order = kcenter_greedy(inp.embeddings, inp.budget, random_state=inp.random_state)
    return StrategyResult(order=order, info={"n_picked": int(order.size)})


#: ``beta="auto"`` of ``ccs``: (pruning rate below, hard cutoff) pairs, first match wins; see :func:`ccs_beta`.
CCS_AUTO_BETA = ((0.6, 0.0), (0.85, 0.1), (1.01, 0.3))


def ccs_beta(n_keep: int, n_rows: int) -> float:
    """The hard cutoff ``beta="auto"`` gives ``ccs`` for ``n_keep`` of ``n_rows`` rows kept.

    Zheng et al. (ICLR 2023, Appendix B) tune beta per pruning rate; on CIFAR-10 they use 0 at 30% and 50% pruning,
    10% at 70% and 80%, and 30% at 90% (the official README's example: ``--coreset-ratio 0.1 --mis-ratio 0.3``).
    The rule here follows that table: pruning rate ``1 - n_keep / n_rows`` below 0.6 -> 0, below 0.85 -> 0.1,
    else 0.3 (:data:`CCS_AUTO_BETA`). The cut never leaves fewer rows than the budget.

    Example:
        >>> ccs_beta(1_000, 10_000), ccs_beta(3_000, 10_000), ccs_beta(5_000, 10_000)
        (0.3, 0.1, 0.0)
    """
    if n_rows <= 0:
        return 0.0
    rate = 1.0 - n_keep / n_rows
    beta = next(b for below, b in CCS_AUTO_BETA if rate < below)
    return float(min(beta, max(0.0, 1.0 - n_keep / n_rows)))


@strategy(needs=("scores|embeddings",))
def ccs_strategy(
    inp: StrategyInput,
    *,
    beta: float | str = "auto",
    n_bins: int = 50,
    difficulty: str = "auto",
    hard: str = "high",
    n_clusters: int = 100,
    backend: str = "auto",
) -> StrategyResult:
    """Coverage-centric coreset selection (Zheng et al., ICLR 2023): cut the hardest ``beta`` share, then sample
    the budget evenly across ``n_bins`` equal-width difficulty bins (small bins taken whole), at random inside a bin.

    At high pruning rates, keeping only hard rows leaves whole easy regions of the data uncovered; CCS keeps every
    difficulty level. The sampling is :func:`selector.coreset.ccs_order`.

    Options:
        beta: hard cutoff in [0, 1), or ``"auto"``: from the pruning rate as in the paper's CIFAR-10 settings
            (:func:`ccs_beta`: 0 when keeping >= 40%, 0.1 down to 15% kept, 0.3 below).
        n_bins: difficulty bins (the paper's k = 50).
        difficulty: ``"auto"`` (the score column when one is given, else the prototype distance), ``"scores"``
            (the score column: EL2N, forgetting, AUM, ``score_quality``, ...) or ``"prototype"`` (cosine distance
            to the nearest spherical k-means centroid of the embeddings, Sorscher et al.'s self-supervised
            prototype metric).
        hard: which end of a score column is hard: ``"high"`` (EL2N, forgetting counts, loss) or ``"low"`` (quality
            scores such as ``score_quality``, AUM, margins). The prototype distance is always hard when high.
        n_clusters, backend: k-means for the prototype distance (a ``cluster_column`` is used instead if given).

    ``info`` records the beta and difficulty used, the number of rows cut and the bins' sizes and quotas.
    """
    from selector.coreset import ccs_order
    from selector.prototypes import centroid_distance

    if difficulty not in ("auto", "scores", "prototype"):
        raise ConfigError(f"ccs difficulty must be 'auto', 'scores' or 'prototype', got {difficulty!r}")
    if hard not in ("high", "low"):
        raise ConfigError(f"ccs hard must be 'high' or 'low', got {hard!r}")
    if beta == "auto":
        beta_used = ccs_beta(inp.budget, inp.n)
    elif isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0 <= beta < 1:
        beta_used = float(beta)
    else:
        raise ConfigError(f"ccs beta must be 'auto' or a number in [0, 1), got {beta!r}")
    source = difficulty
    if source == "auto":
        source = "scores" if inp.scores is not None else "prototype"
    if inp.n == 0:
        return StrategyResult(order=np.zeros(0, dtype=np.int64))
    labels = None
    if source == "scores":
        if inp.scores is None:
            raise ConfigError("ccs difficulty='scores' needs a score column (score_column= / scores=)")
        values = np.asarray(inp.scores, dtype=np.float64)
        hardness = values if hard == "high" else -values
    else:
        if inp.embeddings is None:
            raise ConfigError("ccs difficulty='prototype' needs embeddings (embedding_column= / embeddings)")
        labels, centers = fit_clusters(inp, n_clusters, backend=backend)
        hardness = centroid_distance(inp.embeddings, centers, labels).astype(np.float64)
    order, info = ccs_order(
        hardness, inp.budget, beta=beta_used, n_bins=n_bins, random_state=inp.random_state, tie_rank=inp.tie_rank
    )
    info = {"beta": beta_used, "difficulty": source, "hard": hard if source == "scores" else "high", **info}
    if labels is not None:
        info["n_clusters"] = int(labels.max()) + 1
    return StrategyResult(order=order, cluster=labels, score=-hardness, info=info)
