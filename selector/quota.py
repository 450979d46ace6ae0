"""Per-cluster budgets (quotas): how many rows each cluster contributes to a selection of ``budget`` rows.

Arrays in, arrays out (numpy only). Every function returns an ``int64`` array ``q`` with
``q.sum() == min(budget, sizes.sum())`` and ``0 <= q_j <= sizes_j``.

- :func:`proportional_quota` (InstructionGPT-4): proportional to cluster size, at least 1 per non-empty cluster
  while the budget covers every cluster.
- :func:`uniform_quota`: the same share for every cluster, water-filled where small clusters run out.
- :func:`quality_quota`: proportional to each cluster's *quality mass* (the sum of its rows' quality in [0, 1]),
  so a cluster made of low-quality rows (gibberish, one boilerplate answer) gets a small share instead of one
  proportional to its size; at least 1 per non-empty cluster while the budget covers every cluster.
- :func:`balanced_quota`: loosens any of these quotas by a factor ``balance`` so that quality decides within
  the bounds: each cluster keeps between ``q_j / balance`` and ``q_j * balance`` rows, and the rows beyond the
  lower bounds are the best of the whole pool. ``balance=1`` is the quota itself, a large one is global top-k.
- :func:`dbp_quota` (Density-Based Pruning, Abbas et al. 2024): weights ``softmax(d_intra * d_inter / T)``,
  the real-valued quota is the Euclidean projection of ``N * P`` onto
  ``{x : sum(x) = N, floor_j <= x_j <= |C_j|}`` with ``floor_j = min(int(N / k * balance_ratio), |C_j|)``
  (``balance_ratio`` = 0.5 by default, the official code's ``--cls-bal-ratio``).

The projection (:func:`project_capped_simplex`) is exact and O(k log k): sorting the 2k breakpoints of the
piecewise-linear function ``tau -> sum(clip(y - tau, lower, upper))``; no QP solver. Integer rounding
(:func:`round_preserving_total`) floors and hands the remainder to the largest fractional parts, so the total is
kept and the bounds hold.

Example:
    >>> import numpy as np
    >>> proportional_quota(np.array([50, 30, 20]), 10).tolist()
    [5, 3, 2]
    >>> dbp_quota(np.array([100, 100]), 10, d_intra=np.array([0.1, 0.4]), d_inter=np.array([1.0, 1.0])).tolist()
    [4, 6]
"""

from __future__ import annotations

import logging

import numpy as np

from selector.errors import ConfigError

logger = logging.getLogger(__name__)

QUOTAS = ("proportional", "uniform", "quality", "dbp")


def _sizes(sizes) -> np.ndarray:
    sizes = np.asarray(sizes)
    if sizes.ndim != 1:
        raise ConfigError(f"cluster sizes must be one-dimensional, got shape {sizes.shape}")
    if sizes.size and (not np.all(np.isfinite(sizes)) or np.any(sizes < 0) or np.any(sizes != np.round(sizes))):
        raise ConfigError("cluster sizes must be non-negative integers")
    return sizes.astype(np.int64)


def _total(budget, sizes: np.ndarray) -> int:
    if isinstance(budget, bool) or not float(budget).is_integer() or budget < 0:
        raise ConfigError(f"a quota budget must be a non-negative integer, got {budget!r}")
    return int(min(int(budget), int(sizes.sum())))


def project_capped_simplex(y, lower, upper, total: float) -> np.ndarray:
    """Euclidean projection of ``y`` onto ``{x : sum(x) = total, lower <= x <= upper}``.

    The solution is ``clip(y - tau, lower, upper)`` for the scalar ``tau`` that makes the sum right. The sum is a
    non-increasing piecewise-linear function of ``tau`` with breakpoints ``y - upper`` and ``y - lower``; the
    breakpoints are sorted once and the sum at each of them comes from prefix sums, so the whole projection is
    O(k log k) and exact up to floating point.

    Args:
        y: (k,) point to project.
        lower: (k,) lower bounds (``lower <= upper`` elementwise).
        upper: (k,) upper bounds.
        total: required sum; must lie in ``[sum(lower), sum(upper)]``.

    Returns:
        (k,) float64 projection.

    Raises:
        ConfigError: the bounds are inconsistent or ``total`` is outside ``[sum(lower), sum(upper)]``.
    """
    y = np.asarray(y, dtype=np.float64)
    lower = np.broadcast_to(np.asarray(lower, dtype=np.float64), y.shape)
    upper = np.broadcast_to(np.asarray(upper, dtype=np.float64), y.shape)
    if y.size == 0:
        if total != 0:
            raise ConfigError(f"cannot distribute {total} over zero clusters")
        return np.zeros(0)
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
        raise ConfigError("quota inputs must be finite")
    if np.any(lower > upper):
        raise ConfigError("every lower bound must be <= its upper bound")
    lo_sum, hi_sum = float(lower.sum()), float(upper.sum())
    scale = max(1.0, abs(lo_sum), abs(hi_sum))
    if total < lo_sum - 1e-9 * scale or total > hi_sum + 1e-9 * scale:
        raise ConfigError(f"total {total} is outside [{lo_sum}, {hi_sum}], the range the bounds allow")

    a = y - upper  # tau <= a_j: x_j sits at its upper bound
    b = y - lower  # tau >= b_j: x_j sits at its lower bound
    order_a, order_b = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    a_sorted, b_sorted = a[order_a], b[order_b]
    cum_u = np.concatenate([[0.0], np.cumsum(upper[order_a])])
    cum_ya = np.concatenate([[0.0], np.cumsum(y[order_a])])
    cum_l = np.concatenate([[0.0], np.cumsum(lower[order_b])])
    cum_yb = np.concatenate([[0.0], np.cumsum(y[order_b])])
    k = y.size

    def parts(tau: np.ndarray):
        # rows with a_j < tau left the upper bound; rows with b_j <= tau reached the lower bound.
        n_a = np.searchsorted(a_sorted, tau, side="left")
        n_b = np.searchsorted(b_sorted, tau, side="right")
        at_upper = cum_u[k] - cum_u[n_a]
        at_lower = cum_l[n_b]
        free_y = cum_ya[n_a] - cum_yb[n_b]
        n_free = n_a - n_b
        return at_upper + at_lower + free_y - n_free * tau

    taus = np.concatenate([a_sorted, b_sorted])
    taus.sort(kind="stable")
    sums = parts(taus)
    # sums is non-increasing in tau: find the first breakpoint whose sum is <= total.
    idx = int(np.searchsorted(-sums, -total, side="left"))
    if idx >= taus.size:
        tau = float(taus[-1])
    elif idx == 0:
        tau = float(taus[0])
    else:
        t0, t1 = float(taus[idx - 1]), float(taus[idx])
        s0, s1 = float(sums[idx - 1]), float(sums[idx])
        # the sum is linear between two breakpoints.
        tau = t1 if s0 == s1 else t0 + (s0 - total) * (t1 - t0) / (s0 - s1)
    return np.clip(y - tau, lower, upper)


def round_preserving_total(x, lower, upper, total: int) -> np.ndarray:
    """Round ``x`` to integers in ``[lower, upper]`` that sum to ``total`` (largest-remainder rounding).

    Floors every entry, then adds one to the entries with the largest fractional parts (ties: lower index first)
    until the total is reached. ``lower`` and ``upper`` are integers; ``x`` should already lie within them and sum
    to ``total`` up to floating-point error, as :func:`project_capped_simplex` returns.

    Returns:
        (k,) int64 array summing to ``total``.
    """
    x = np.asarray(x, dtype=np.float64)
    lower = np.broadcast_to(np.asarray(lower, dtype=np.int64), x.shape)
    upper = np.broadcast_to(np.asarray(upper, dtype=np.int64), x.shape)
    # a value like 2.9999999999 is 3 up to rounding error: snap before flooring so it doesn't lose its unit.
    snapped = np.where(np.abs(x - np.rint(x)) < 1e-9, np.rint(x), x)
    q = np.clip(np.floor(snapped), lower, upper).astype(np.int64)
    remainder = int(total) - int(q.sum())
    frac = snapped - np.floor(snapped)
    if remainder > 0:
        room = q < upper
        candidates = np.flatnonzero(room)
        # largest fractional part first, ties by index (lexsort's last key is the primary key).
        picked = candidates[np.lexsort((candidates, -frac[candidates]))]
        if picked.size < remainder:
            raise ConfigError(f"cannot add {remainder} units: only {picked.size} clusters have room")
        q[picked[:remainder]] += 1
    elif remainder < 0:
        room = q > lower
        candidates = np.flatnonzero(room)
        picked = candidates[np.lexsort((candidates, frac[candidates]))]
        if picked.size < -remainder:
            raise ConfigError(f"cannot remove {-remainder} units: only {picked.size} clusters are above their floor")
        q[picked[:-remainder]] -= 1
    return q


def proportional_quota(sizes, budget: int) -> np.ndarray:
    """Quotas proportional to cluster size (InstructionGPT-4), exact total.

    Every non-empty cluster gets at least one row while ``budget >= number of non-empty clusters``; with a smaller
    budget the largest clusters get one row each (ties: lower cluster index).

    Args:
        sizes: (k,) number of eligible rows per cluster.
        budget: rows to select; capped at ``sizes.sum()``.

    Returns:
        (k,) int64 quotas, ``0 <= q_j <= sizes_j``, summing to ``min(budget, sizes.sum())``.
    """
    sizes = _sizes(sizes)
    total = _total(budget, sizes)
    if total == 0:
        return np.zeros(sizes.shape, dtype=np.int64)
    nonempty = sizes > 0
    floor = nonempty.astype(np.int64) if total >= int(nonempty.sum()) else np.zeros_like(sizes)
    target = total * sizes / sizes.sum()
    x = project_capped_simplex(target, floor, sizes, total)
    return round_preserving_total(x, floor, sizes, total)


def quality_quota(sizes, budget: int, mass) -> np.ndarray:
    """Quotas proportional to each cluster's quality mass, exact total.

    ``mass_j`` is the sum over cluster j's rows of a quality in [0, 1] (e.g. the percentile rank of
    ``score_quality``; a NaN quality counts 0), i.e. the cluster size discounted by how good its rows are. The
    quota is ``clip(c * mass_j, floor_j, |C_j|)`` with the one scale ``c`` that makes the total right (water
    filling: a cluster that runs out of rows passes its share on to the others *in proportion to their mass*, so
    a cluster of poor rows stays small even when the budget is most of the pool). With equal qualities this is
    :func:`proportional_quota`. Every non-empty cluster keeps at least one row while
    ``budget >= number of non-empty clusters``, so no region of the data disappears.

    Args:
        sizes: (k,) number of eligible rows per cluster.
        budget: rows to select; capped at ``sizes.sum()``.
        mass: (k,) non-negative quality mass per cluster.

    Returns:
        (k,) int64 quotas, ``0 <= q_j <= sizes_j``, summing to ``min(budget, sizes.sum())``.
    """
    sizes = _sizes(sizes)
    total = _total(budget, sizes)
    mass = np.asarray(mass, dtype=np.float64)
    if mass.shape != sizes.shape:
        raise ConfigError(f"quality mass has shape {mass.shape}, cluster sizes {sizes.shape}")
    mass = np.where(np.isfinite(mass) & (sizes > 0), np.clip(mass, 0.0, None), 0.0)
    if total == 0:
        return np.zeros(sizes.shape, dtype=np.int64)
    if mass.sum() <= 0:
        return proportional_quota(sizes, total)
    nonempty = sizes > 0
    floor = nonempty.astype(np.int64) if total >= int(nonempty.sum()) else np.zeros_like(sizes)
    upper = sizes.astype(np.float64)
    # the most the mass-weighted shares can hold: clusters with mass full, clusters without at their floor.
    full = np.where(mass > 0, upper, floor)
    if full.sum() < total:
        # the rest goes to the clusters without quality mass, evenly within their sizes.
        x = project_capped_simplex(full, full, upper, total)
    else:
        filled = lambda c: np.clip(c * mass, floor, upper).sum()  # noqa: E731
        lo, hi = 0.0, 1.0
        while filled(hi) < total:  # ends: filled(c) reaches full.sum() >= total at a finite c
            hi *= 2.0
        for _ in range(100):  # bisection on the scale; the sum is monotone in c
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if filled(mid) < total else (lo, mid)
        x = np.clip(hi * mass, floor, upper)
    return round_preserving_total(x, floor, sizes, total)


def uniform_quota(sizes, budget: int) -> np.ndarray:
    """The same quota for every non-empty cluster; clusters smaller than their share give the rest to others.

    Returns:
        (k,) int64 quotas, ``0 <= q_j <= sizes_j``, summing to ``min(budget, sizes.sum())``.
    """
    sizes = _sizes(sizes)
    total = _total(budget, sizes)
    nonempty = sizes > 0
    if total == 0 or not nonempty.any():
        return np.zeros(sizes.shape, dtype=np.int64)
    target = np.where(nonempty, total / nonempty.sum(), 0.0)
    x = project_capped_simplex(target, 0, sizes, total)
    return round_preserving_total(x, 0, sizes, total)


def dbp_weights(d_intra, d_inter, temperature: float = 0.5) -> np.ndarray:
    """DBP cluster weights ``P = softmax(d_intra * d_inter / temperature)``.

    Args:
        d_intra: (k,) mean cosine distance of a cluster's rows to its centroid, in [0, 2]; higher = more spread.
        d_inter: (k,) mean ``1 - cos`` from a cluster's centroid to its nearest other centroids, in [0, 2];
            higher = more isolated.
        temperature: softmax temperature (the paper's T = 0.5); lower concentrates the budget on complex clusters.

    Returns:
        (k,) float64 weights summing to 1; higher = more complex cluster, larger quota.
    """
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    d_intra = np.asarray(d_intra, dtype=np.float64)
    d_inter = np.asarray(d_inter, dtype=np.float64)
    if d_intra.shape != d_inter.shape:
        raise ConfigError(f"d_intra {d_intra.shape} and d_inter {d_inter.shape} must have the same shape")
    if not (np.all(np.isfinite(d_intra)) and np.all(np.isfinite(d_inter))):
        raise ConfigError("d_intra and d_inter must be finite")
    logits = d_intra * d_inter / temperature
    logits -= logits.max(initial=0.0)
    w = np.exp(logits)
    return w / w.sum()


def dbp_quota(
    sizes, budget: int, *, d_intra, d_inter, temperature: float = 0.5, balance_ratio: float = 0.5
) -> np.ndarray:
    """Density-Based Pruning quotas: project ``N * softmax(d_intra * d_inter / T)`` onto the capped simplex.

    Bounds are ``floor_j = min(int(N / k * balance_ratio), |C_j|)`` and ``|C_j|``, with ``k`` the number of
    non-empty clusters; ``balance_ratio=0`` keeps one row per cluster (``floor_j = 1``, or 0 when the budget is
    below ``k``), as the official code's ``--cls-bal-ratio 0`` does. The real-valued projection is rounded keeping
    the total (:func:`round_preserving_total`). The official code caps the floor at ``|C_j| - 1``; here a cluster
    may be kept whole, so a one-row cluster is never forced to zero.

    Args:
        sizes: (k,) eligible rows per cluster. Empty clusters get 0 and are left out of ``k``.
        budget: rows to select ``N``; capped at ``sizes.sum()``.
        d_intra, d_inter, temperature: see :func:`dbp_weights`.
        balance_ratio: class-balance ratio in [0, 1] (the official ``--cls-bal-ratio``, default 0.5): the share
            of an equal split ``N / k`` every cluster is guaranteed.

    Returns:
        (k,) int64 quotas in ``[floor_j, |C_j|]`` summing to ``min(budget, sizes.sum())``.
    """
    if isinstance(balance_ratio, bool) or not isinstance(balance_ratio, (int, float)) or not 0 <= balance_ratio <= 1:
        raise ConfigError(f"balance_ratio must be a number in [0, 1], got {balance_ratio!r}")
    sizes = _sizes(sizes)
    total = _total(budget, sizes)
    d_intra = np.asarray(d_intra, dtype=np.float64)
    d_inter = np.asarray(d_inter, dtype=np.float64)
    if d_intra.shape != sizes.shape or d_inter.shape != sizes.shape:
        raise ConfigError(f"d_intra and d_inter must have one value per cluster ({sizes.size})")
    q = np.zeros(sizes.shape, dtype=np.int64)
    nonempty = np.flatnonzero(sizes > 0)
    if total == 0 or nonempty.size == 0:
        return q
    s = sizes[nonempty]
    weights = dbp_weights(d_intra[nonempty], d_inter[nonempty], temperature)
    if balance_ratio > 0:
        floor = np.minimum(int(total / nonempty.size * balance_ratio), s)
    else:
        floor = np.minimum(1 if total >= nonempty.size else 0, s)
    x = project_capped_simplex(total * weights, floor, s, total)
    q[nonempty] = round_preserving_total(x, floor, s, total)
    return q


def check_balance(balance) -> None:
    """Raise :class:`ConfigError` unless ``balance`` is a number >= 1 (``inf`` allowed)."""
    if isinstance(balance, bool) or not isinstance(balance, (int, float, np.number)) or not balance >= 1:
        raise ConfigError(f"quota balance must be a number >= 1 (1 = strict quotas, .inf = top-k), got {balance!r}")


def balanced_quota(quotas, labels, order, balance: float) -> np.ndarray:
    """Loosen per-cluster quotas so the pool's best rows can replace a cluster's worst ones, within bounds.

    Strict quotas make every cluster give exactly its share, however poor its rows: at a budget near the pool
    size, a cluster where a third of the rows are defects still keeps most of them while clean rows elsewhere
    are dropped. Here cluster ``j`` keeps at least ``floor(q_j / balance)`` rows (its best) and at most
    ``min(|C_j|, ceil(q_j * balance))``; the rest of the budget goes to the best rows of the whole pool in
    ``order`` that fit under the upper bounds. This maximises the summed quality (in ``order``'s sense) under
    those bounds. The lower bound is DBP's class-balance floor (``balance_ratio`` = 1 / ``balance``); the upper
    bound keeps one region from taking over a small budget. A cluster whose quota is a fraction ``f`` of its rows
    can drop all of its share ``d`` of poor rows when ``balance >= f / (1 - d)``.

    Args:
        quotas: (k,) quotas from any quota rule, summing to the budget.
        labels: (n,) cluster of each row, in ``0..k-1``.
        order: (n,) all row indices in preference order (best first); within a cluster it must be the order
            the quotas are filled in, e.g. :func:`selector.prototypes.keep_order` with one label for every row.
        balance: ``>= 1``; 1 returns ``quotas`` unchanged, ``inf`` is top-k in ``order``.

    Returns:
        (k,) int64 quotas with the same total, ``floor(q_j / balance) <= q'_j <= min(|C_j|, ceil(q_j * balance))``.

    Example:
        >>> labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
        >>> order = np.array([0, 1, 2, 3, 4, 5, 6, 7])          # cluster 0's rows are all better
        >>> balanced_quota(np.array([2, 2]), labels, order, balance=1.5).tolist()
        [3, 1]
    """
    quotas = np.asarray(quotas, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    order = np.asarray(order, dtype=np.int64)
    check_balance(balance)
    if order.shape != labels.shape or labels.ndim != 1:
        raise ConfigError(f"order has shape {order.shape}, labels {labels.shape}: one entry per row expected")
    if balance == 1 or labels.size == 0:
        return quotas.copy()
    sizes = np.bincount(labels, minlength=quotas.size)
    lower = np.floor(quotas / balance).astype(np.int64)
    upper = sizes if np.isinf(balance) else np.minimum(sizes, np.ceil(quotas * balance).astype(np.int64))
    # each row's rank inside its cluster along `order`: rows below the lower bound are taken already, rows at or
    # past the upper bound can't be; of the others, the first in pool order fill the rest of the budget.
    sorted_labels = labels[order]
    grouped = np.argsort(sorted_labels, kind="stable")
    starts = np.cumsum(sizes) - sizes  # where each cluster's rows begin in `grouped`
    rank = np.empty(labels.size, dtype=np.int64)
    rank[grouped] = np.arange(labels.size) - starts[sorted_labels[grouped]]
    open_ = (rank >= lower[sorted_labels]) & (rank < upper[sorted_labels])
    taken = np.flatnonzero(open_)[: int(quotas.sum() - lower.sum())]
    return lower + np.bincount(sorted_labels[taken], minlength=quotas.size)


def compute_quota(method: str, sizes, budget: int, **kwargs) -> np.ndarray:
    """Dispatch on ``method`` (one of :data:`QUOTAS`); ``kwargs`` go to :func:`quality_quota` (``mass``) or
    :func:`dbp_quota`."""
    if method == "proportional":
        return proportional_quota(sizes, budget)
    if method == "uniform":
        return uniform_quota(sizes, budget)
    if method == "quality":
        return quality_quota(sizes, budget, **kwargs)
    if method == "dbp":
        return dbp_quota(sizes, budget, **kwargs)
    raise ConfigError(f"unknown quota {method!r}; choose one of {', '.join(QUOTAS)}")
