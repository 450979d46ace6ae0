"""Coreset scores and greedy coreset selection; arrays in, arrays out.

Training-dynamics scores read the columns of ``dynamics.parquet`` (:mod:`selector.dynamics`; one row per
``(id, epoch)``: ``loss``, ``accuracy``, ``correct``, ``el2n``, ``grad_norm``, optional ``curvature``):

- :func:`forgetting_scores` (Toneva et al., ICLR 2019): number of learned -> forgotten transitions, "learned"
  meaning at least ``accuracy_threshold`` (default 0.5) of the answer tokens argmax-correct.
- :func:`el2n_scores`, :func:`grand_scores` (Paul et al., NeurIPS 2021): mean error-vector / gradient norm over
  the early epochs.
- :func:`curvature_scores` (Garg & Roy, CVPR 2023): mean input loss curvature.

Embedding coresets: :func:`herding` (Welling 2009, mean matching) and :func:`kcenter_greedy` (Sener & Savarese
2018). Coverage-centric selection: :func:`ccs_order` / :func:`ccs_bin_quota` (Zheng et al., ICLR 2023) over any
difficulty score. No models and no autograd live here; :mod:`selector.training` computes the raw per-example numbers.
The selection strategies built on these functions (``forgetting``, ``el2n``, ``grand``, ``curvature``,
``herding``, ``kcenter``) live in :mod:`selector.strategies`.

Example:
    >>> import numpy as np
    >>> ids, scores = forgetting_scores(["a", "a", "a", "b", "b", "b"], [0, 1, 2, 0, 1, 2],
    ...                                 [True, False, True, False, False, False])
    >>> ids.tolist(), scores.tolist()
    (['a', 'b'], [1.0, 2.0])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from selector.dynamics import read_dynamics  # noqa: F401  (re-exported: the old import path keeps working)
from selector.errors import ConfigError, DataError
from selector.rows import rng

logger = logging.getLogger(__name__)

DYNAMICS_COLUMNS = ("id", "epoch", "loss", "correct", "el2n", "grad_norm")


def _group(ids, epochs, values):
    """Sort rows by (id, epoch); return unique ids, group starts, and the sorted epochs and values."""
    ids = np.asarray(ids).astype(str)
    epochs = np.asarray(epochs)
    values = np.asarray(values)
    if not (len(ids) == len(epochs) == len(values)):
        raise DataError(f"dynamics columns differ in length: {len(ids)} ids, {len(epochs)} epochs, {len(values)}")
    order = np.lexsort((epochs, ids))
    ids, epochs, values = ids[order], epochs[order], values[order]
    if len(ids) > 1 and np.any((ids[1:] == ids[:-1]) & (epochs[1:] == epochs[:-1])):
        raise DataError("dynamics table has more than one row for some (id, epoch)")
    unique, starts = np.unique(ids, return_index=True)
    return unique, starts, epochs, values


#: default share of answer tokens that must be argmax-correct for a sample to count as learned at an epoch.
DEFAULT_ACCURACY_THRESHOLD = 0.5


def _learned_flags(values, threshold: float) -> np.ndarray:
    """``value >= threshold`` for token accuracies (bools read as 1.0 / 0.0); None/NaN count as not learned."""
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"accuracy_threshold must be in (0, 1], got {threshold!r}")
    acc = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.nan_to_num(acc, nan=-1.0) >= threshold


def forgetting_events(
    ids: Sequence, epochs: Sequence, correct: Sequence, *, threshold: float = DEFAULT_ACCURACY_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count forgetting events per id: learned at epoch t and not learned at t+1 (the next recorded epoch).

    Toneva et al. classify images, where "learned" is "predicted correctly". An answer of many tokens is almost
    never right at every token, so requiring that (the rule before issue 15) left every long-answer sample
    "never learned" and all scores tied. Here a sample is learned at an epoch when the share of its answer
    tokens that are argmax-correct (the ``accuracy`` column) is at least ``threshold``.

    Args:
        ids: row ids, one per (id, epoch) record.
        epochs: epoch of each record; records of one id are ordered by it (gaps, e.g. from dynamic pruning,
            compare consecutive *recorded* epochs).
        correct: per record, the token accuracy in [0, 1] (the ``accuracy`` column) or a bool (the older
            all-tokens ``correct`` column, read as 1.0 / 0.0). NaN/None counts as not learned.
        threshold: token accuracy at or above which a sample counts as learned, in (0, 1]; default 0.5 (most of
            the answer right). 1.0 is the all-tokens rule.

    Returns:
        ``(unique_ids, events, learned)``: sorted unique ids, int64 event counts (>= 0), and whether the id was
        ever learned.
    """
    unique, starts, _, values = _group(ids, epochs, correct)
    flags = _learned_flags(values, threshold)
    bounds = np.append(starts, len(flags))
    events = np.zeros(len(unique), dtype=np.int64)
    learned = np.zeros(len(unique), dtype=bool)
    for k in range(len(unique)):
        seq = flags[bounds[k] : bounds[k + 1]]
        events[k] = int(np.sum(seq[:-1] & ~seq[1:]))
        learned[k] = bool(seq.any())
    return unique, events, learned


def forgetting_scores(
    ids: Sequence, epochs: Sequence, correct: Sequence, *, threshold: float = DEFAULT_ACCURACY_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Forgetting score per id: its number of learned -> forgotten transitions (see :func:`forgetting_events`
    for ``correct`` and ``threshold``).

    Range ``[0, max_events + 1]``; higher = more forgettable (keep these). Ids never learned are the most
    forgettable (Toneva et al. treat them as forgotten infinitely often): they get ``max_events + 1``, one more
    than the largest count observed, so they rank above every learned id while staying finite. Never NaN.

    Returns:
        ``(unique_ids, scores)`` with float64 scores.
    """
    unique, events, learned = forgetting_events(ids, epochs, correct, threshold=threshold)
    scores = events.astype(np.float64)
    top = float(events[learned].max()) if learned.any() else 0.0
    scores[~learned] = top + 1.0
    return unique, scores


def _mean_over_epochs(ids, epochs, values, max_epoch: int | None, name: str) -> tuple[np.ndarray, np.ndarray]:
    unique, starts, sorted_epochs, vals = _group(ids, epochs, values)
    vals = np.asarray(vals, dtype=np.float64)
    if max_epoch is not None:
        vals = np.where(sorted_epochs <= max_epoch, vals, np.nan)
    bounds = np.append(starts, len(vals))
    out = np.full(len(unique), np.nan)
    for k in range(len(unique)):
        seg = vals[bounds[k] : bounds[k + 1]]
        seg = seg[~np.isnan(seg)]
        if len(seg):
            out[k] = seg.mean()
    n_nan = int(np.isnan(out).sum())
    if n_nan:
        logger.info("%s: %d of %d ids have no recorded value and score NaN", name, n_nan, len(unique))
    return unique, out


def el2n_scores(ids: Sequence, epochs: Sequence, el2n: Sequence, *, max_epoch: int | None = None):
    """EL2N per id: mean over epochs ``<= max_epoch`` (all when None) of the recorded error L2 norm.

    The recorded value is, per answer token, ``||softmax(logits) - onehot(target)||_2`` averaged over the answer
    tokens. Range ``[0, sqrt(2)]``; higher = harder (keep these). NaN when the id has no record in the window.

    Returns:
        ``(unique_ids, scores)``.
    """
    return _mean_over_epochs(ids, epochs, el2n, max_epoch, "el2n")


def grand_scores(ids: Sequence, epochs: Sequence, grad_norm: Sequence, *, max_epoch: int | None = None):
    """GraNd per id: mean over epochs ``<= max_epoch`` of the per-example loss-gradient norm.

    Range ``[0, inf)``; higher = more important (keep these). NaN when nothing was recorded (the recipe records
    ``grad_norm`` only with ``dynamics_grad_norm: true``). Paul et al. take the norm of the gradient w.r.t. all
    weights; the recorded value is the gradient w.r.t. the output embedding (``lm_head``) only, in closed form
    from the error vectors (per-parameter gradients of a multi-billion-parameter model per example are out of
    reach), the same last-layer restriction EL2N's derivation rests on.

    Returns:
        ``(unique_ids, scores)``.
    """
    return _mean_over_epochs(ids, epochs, grad_norm, max_epoch, "grand")


def curvature_scores(ids: Sequence, epochs: Sequence, curvature: Sequence, *, max_epoch: int | None = None):
    """Loss-curvature per id: mean over epochs ``<= max_epoch`` of the recorded input-curvature estimate.

    Range ``[0, inf)``; *lower* = flatter loss around the sample, the ones Garg & Roy keep. NaN when nothing was
    recorded (``dynamics_curvature: true`` in the recipe).

    Returns:
        ``(unique_ids, scores)``.
    """
    return _mean_over_epochs(ids, epochs, curvature, max_epoch, "curvature")


def unforgettable_order(
    ids: Sequence,
    epochs: Sequence,
    correct: Sequence,
    loss: Sequence,
    *,
    threshold: float = DEFAULT_ACCURACY_THRESHOLD,
) -> np.ndarray:
    """Unique ids ordered most unforgettable first (used by dynamic pruning).

    Order: never-learned last, then fewest forgetting events, then learned at the last record, then lowest last
    loss, then id. ``correct`` and ``threshold`` as in :func:`forgetting_events`.
    """
    unique, events, learned = forgetting_events(ids, epochs, correct, threshold=threshold)
    _, starts, _, last_correct = _group(ids, epochs, correct)
    _, _, _, losses = _group(ids, epochs, loss)
    ends = np.append(starts[1:], len(last_correct)) - 1
    last_ok = _learned_flags(last_correct[ends], threshold)
    last_loss = np.asarray(losses[ends], dtype=np.float64)
    last_loss = np.where(np.isnan(last_loss), np.inf, last_loss)
    never = (~learned).astype(np.int64)
    order = np.lexsort((unique, last_loss, ~last_ok, events, never))
    return unique[order]


# ---- embedding coresets ---------------------------------------------------------------------------------------


def _valid_rows(embeddings) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"embeddings must be a 2-D array (n, d), got shape {x.shape}")
    valid = np.flatnonzero(~np.isnan(x).any(axis=1))
    return x, valid


def herding(embeddings, n_select: int) -> np.ndarray:
    """Herding: greedily pick the row that keeps the mean of the picked rows closest to the pool mean.

    Step t picks ``argmin_i || mu - (sum_{j in S} x_j + x_i) / (|S| + 1) ||_2`` over rows not yet picked, with
    ``mu`` the mean of all valid rows. Deterministic; ties go to the lower row index. Rows with a NaN in their
    embedding are never picked.

    Args:
        embeddings: ``(n, d)`` array.
        n_select: how many rows to pick (capped at the number of valid rows).

    Returns:
        int64 row indices in the order they were picked.
    """
    x, valid = _valid_rows(embeddings)
    n_select = min(int(n_select), len(valid))
    if n_select <= 0:
        return np.zeros(0, dtype=np.int64)
    pool = x[valid]
    mu = pool.mean(axis=0)
    sq = np.einsum("ij,ij->i", pool, pool)
    total = np.zeros(x.shape[1])
    available = np.ones(len(valid), dtype=bool)
    picked = []
    for t in range(n_select):
        # ||mu - (total + x)/(t+1)||^2 * (t+1)^2 = ||x||^2 - 2 x.((t+1) mu - total) + const: one mat-vec per step.
        cost = sq - 2.0 * (pool @ ((t + 1) * mu - total))
        cost[~available] = np.inf
        k = int(np.argmin(cost))
        picked.append(k)
        available[k] = False
        total += pool[k]
    return valid[np.asarray(picked, dtype=np.int64)]


def kcenter_greedy(
    embeddings, n_select: int, *, initial: Sequence[int] | None = None, random_state: int | None = 0
) -> np.ndarray:
    """k-center greedy: repeatedly pick the row farthest (Euclidean) from every row picked so far.

    With no ``initial`` rows, the first center is drawn uniformly with ``random_state``. Ties go to the lower row
    index. Rows with a NaN embedding are never picked. Memory is O(n): one min-distance vector.

    Args:
        embeddings: ``(n, d)`` array.
        n_select: rows to pick, not counting ``initial`` (capped at the valid rows left).
        initial: row indices already in the coreset (e.g. labelled data); they are not returned.
        random_state: seed for the first center when ``initial`` is empty.

    Returns:
        int64 row indices in the order they were picked.
    """
    x, valid = _valid_rows(embeddings)
    pool = x[valid]
    position = {int(v): k for k, v in enumerate(valid)}
    min_dist = np.full(len(valid), np.inf)
    available = np.ones(len(valid), dtype=bool)

    sq = np.einsum("ij,ij->i", pool, pool)

    def add_center(k: int) -> None:
        available[k] = False
        dist = np.sqrt(np.maximum(sq - 2.0 * (pool @ pool[k]) + sq[k], 0.0))
        dist[k] = 0.0
        np.minimum(min_dist, dist, out=min_dist)

    for row in initial or ():
        if int(row) in position:
            add_center(position[int(row)])
    n_select = min(int(n_select), int(available.sum()))
    picked: list[int] = []
    if n_select <= 0:
        return np.zeros(0, dtype=np.int64)
    if not np.isfinite(min_dist).any():
        rng = np.random.default_rng(random_state)
        first = int(rng.integers(len(valid)))
        picked.append(first)
        add_center(first)
    while len(picked) < n_select:
        dist = np.where(available, min_dist, -np.inf)
        k = int(np.argmax(dist))
        picked.append(k)
        add_center(k)
    return valid[np.asarray(picked, dtype=np.int64)]


#: score name -> (dynamics column, scoring function, higher keeps)
DYNAMICS_SCORES = {
    "forgetting": ("correct", forgetting_scores, True),
    "el2n": ("el2n", el2n_scores, True),
    "grand": ("grad_norm", grand_scores, True),
    "curvature": ("curvature", curvature_scores, False),
}


#: dynamics column -> the training option that records it (columns that are off by default).
RECORDING_OPTIONS = {"grad_norm": "dynamics_grad_norm", "curvature": "dynamics_curvature"}


def dynamics_scores(
    table: dict[str, np.ndarray],
    score: str,
    *,
    max_epoch: int | None = None,
    accuracy_threshold: float = DEFAULT_ACCURACY_THRESHOLD,
):
    """One named score (``forgetting``, ``el2n``, ``grand``, ``curvature``) from a dynamics table.

    ``forgetting`` reads the token-accuracy column ``accuracy`` with ``accuracy_threshold`` (see
    :func:`forgetting_events`); a file written before that column existed falls back to the all-tokens
    ``correct`` column, with a warning.

    Returns:
        ``(unique_ids, scores)``; see the score's own function for range, direction and NaN.

    Raises:
        ConfigError: the score's column was not recorded (missing, or NaN in every row): the message names the
            training option that records it.
        DataError: an unknown score or another missing column.
    """
    if score not in DYNAMICS_SCORES:
        raise DataError(f"unknown dynamics score {score!r}; expected one of {', '.join(DYNAMICS_SCORES)}")
    column, fn, _ = DYNAMICS_SCORES[score]
    if score == "forgetting":
        if "accuracy" in table and not _all_missing(table["accuracy"]):
            return fn(table["id"], table["epoch"], table["accuracy"], threshold=accuracy_threshold)
        if "correct" not in table:
            raise DataError(
                "the dynamics table has neither an 'accuracy' nor a 'correct' column, needed for forgetting"
            )
        logger.warning(
            "forgetting: the dynamics file has no token-accuracy column (written before it existed); a sample counts "
            "as learned only when every answer token is right, which rarely happens on long answers"
        )
        return fn(table["id"], table["epoch"], table["correct"], threshold=1.0)
    option = RECORDING_OPTIONS.get(column)
    if option is not None and (column not in table or _all_missing(table[column])):
        raise ConfigError(
            f"strategy {score!r}: the dynamics file has no {column!r} values; record them by training with "
            f"{option}: true (--{option} true)"
        )
    if column not in table:
        raise DataError(f"the dynamics table has no {column!r} column, needed for {score}")
    return fn(table["id"], table["epoch"], table[column], max_epoch=max_epoch)


def _all_missing(values) -> bool:
    values = np.asarray(values)
    if values.dtype == object:
        return all(v is None or (isinstance(v, float) and v != v) for v in values.tolist())
    return bool(np.all(np.isnan(values.astype(np.float64)))) if values.size else True


def ccs_bin_quota(sizes, budget: int) -> np.ndarray:
    """Per-bin budgets of CCS stratified sampling (Zheng et al., ICLR 2023, Algorithm 1 and the official
    ``bin_allocate``): visit the bins from the smallest to the largest; each takes
    ``min(|bin|, remaining // bins_left)``, so a bin smaller than its share is taken whole and the rest is spread
    over the larger bins.

    Args:
        sizes: (k,) rows per bin.
        budget: rows to sample; capped at ``sizes.sum()``.

    Returns:
        (k,) int64 quotas, ``0 <= q_j <= sizes_j``, summing exactly to ``min(budget, sizes.sum())`` (a bin left
        below its share only happens when the larger bins can absorb the remainder).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1 or (sizes.size and sizes.min() < 0):
        raise ConfigError("bin sizes must be a 1-D array of non-negative integers")
    if isinstance(budget, bool) or int(budget) != budget or budget < 0:
        raise ConfigError(f"a CCS budget must be a non-negative integer, got {budget!r}")
    quota = np.zeros(sizes.shape, dtype=np.int64)
    rest = int(min(int(budget), int(sizes.sum())))
    visit = np.argsort(sizes, kind="stable")
    for i, j in enumerate(visit):
        take = min(int(sizes[j]), rest // (visit.size - i))
        quota[j] = take
        rest -= take
    return quota


def ccs_order(
    difficulty, budget: int, *, beta: float = 0.0, n_bins: int = 50, random_state=0, tie_rank=None
) -> tuple[np.ndarray, dict]:
    """Coverage-centric coreset selection (CCS, Zheng et al., ICLR 2023): a preference order over rows.

    1. The ``floor(beta * n)`` hardest rows (highest ``difficulty``; ties by ``tie_rank``) are cut: the paper's
       "hard cutoff", which removes the mislabelled and atypical rows that dominate the hardest tail.
    2. The other rows fall into ``n_bins`` equal-width bins of difficulty over ``[min, max]``.
    3. :func:`ccs_bin_quota` splits the budget over the bins; each bin's quota is drawn uniformly at random.

    The order lists the sampled rows first (in a random order), then the other rows of the bins (random order),
    then the cut rows from the least to the most difficult (so a budget above the uncut rows is still met), then
    rows whose difficulty is NaN.

    Args:
        difficulty: (n,) difficulty score, higher = harder (e.g. distance to the prototype, EL2N, forgetting
            count); NaN = unknown (never sampled, last in the order).
        budget: rows to select.
        beta: share of the finite-difficulty rows cut as the hardest, in [0, 1).
        n_bins: number of difficulty bins ``k`` (the paper's default 50).
        random_state: seed of the sampling.
        tie_rank: (n,) tie-breaker for equal difficulties (lower first), e.g. the id rank.

    Returns:
        ``(order, info)``: indices, most wanted first; ``info`` has ``n_cut``, ``cut_difficulty`` (the smallest
        cut value, None when nothing is cut), ``difficulty_range`` (the binned ``[min, max]``), ``bin_sizes`` and
        ``bin_quota``.

    Example:
        >>> order, info = ccs_order(np.linspace(0, 1, 100), 20, beta=0.1, n_bins=5)
        >>> info["n_cut"], info["bin_quota"], bool(np.linspace(0, 1, 100)[order[:20]].max() < 0.9)
        (10, [4, 4, 4, 4, 4], True)
    """
    d = np.asarray(difficulty, dtype=np.float64)
    n = d.shape[0]
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
        raise ConfigError(f"beta must be a number in [0, 1), got {beta!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ConfigError(f"n_bins must be a positive integer, got {n_bins!r}")
    tie = np.arange(n) if tie_rank is None else np.asarray(tie_rank)
    generator = rng(random_state)
    finite = np.flatnonzero(np.isfinite(d))
    missing = np.flatnonzero(~np.isfinite(d))
    missing = missing[np.argsort(tie[missing], kind="stable")]
    hardest_first = finite[np.lexsort((tie[finite], -d[finite]))]
    n_cut = int(np.floor(beta * finite.size))
    cut, kept = hardest_first[:n_cut], hardest_first[n_cut:]
    info: dict = {"n_cut": n_cut, "cut_difficulty": float(d[cut].min()) if n_cut else None}
    if kept.size == 0:
        info.update(difficulty_range=None, bin_sizes=[], bin_quota=[])
        return np.concatenate([cut[::-1], missing]).astype(np.int64), info
    lo, hi = float(d[kept].min()), float(d[kept].max())
    edges = np.linspace(lo, hi, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, d[kept], side="right") - 1, 0, n_bins - 1)
    sizes = np.bincount(bins, minlength=n_bins)
    quota = ccs_bin_quota(sizes, min(int(budget), kept.size))
    # a random rank inside each bin: the first quota_j rows of bin j (by this rank) are the sample.
    draw = generator.permutation(kept.size)
    within = np.lexsort((draw, bins))
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    rank_in_bin = np.empty(kept.size, dtype=np.int64)
    rank_in_bin[within] = np.arange(kept.size) - np.repeat(starts, sizes)
    chosen = rank_in_bin < quota[bins]
    picked, rest = kept[chosen], kept[~chosen]
    order = np.concatenate(
        [picked[generator.permutation(picked.size)], rest[generator.permutation(rest.size)], cut[::-1], missing]
    )
    info.update(difficulty_range=[round(lo, 6), round(hi, 6)], bin_sizes=sizes.tolist(), bin_quota=quota.tolist())
    return order.astype(np.int64), info
