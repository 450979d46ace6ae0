"""Selection: the ``select`` / ``select_arrays`` / ``select_dataset`` entry points and the wrapper that applies the
selection policies around every strategy of :mod:`selector.strategies`.

Public API::

    select(ds, budget, strategy, *, embedding_column=None, score_column=None, cluster_column=None,
           stratify_column=None, scores=None, filters=None, dedup_column=None, dedup_eps=0.05,
           dedup_n_clusters=None, dedup_engine="local", dedup_group=None, id_column="id", random_state=0,
           **options) -> Selection
    select_arrays(embeddings, budget, strategy, *, scores=None, ids=None, errors=None, clusters=None,
                  strata=None, filters=None, columns=None, dedup_embeddings=None, dedup_eps=0.05,
                  dedup_n_clusters=None, dedup_engine="local", dedup_groups=None, random_state=0,
                  **options) -> Selection
    select_dataset(ds, selection, keep_rejected=False) -> datasets.Dataset

``budget`` is read by :func:`selector.rows.parse_budget`: an int count, a whole float (``200.0`` is 200 rows), a
fraction in (0, 1] of the *input pool* (all rows, error rows included; half rounds up, 0.5 of 5 rows is 3) or a
percent string (``"30%"``); 0 or below is a ``ConfigError``. ``strategy`` is a registry name
(:data:`selector.strategies.STRATEGIES`, plus the entry-point group ``vlselect.strategies``); ``"<name>:<column>"``
(e.g. ``"topk:score_clip"``) names the score column for strategies that rank by a score. ``scores=`` supplies
per-row scores from outside (e.g. ``LearnedSelector.score_samples(ds)``) instead of a column.

Policies, applied once by the wrapper for every strategy (built-in or plugged in), in this order:

1. the request: strategy, options, budget and seed are checked before any row is read;
2. the row rules of :mod:`selector.rows` decide which rows are eligible, each ineligible row keeping the first
   reason that applies: ``error`` of None, NaN or ``""`` means usable, anything else is never selected (reason
   ``error <kind>``); a row lacking an input the strategy uses (a NaN embedding; a cluster id of -1, None or NaN)
   is never selected (reason ``missing <column>``); NaN *scores* are kept and rank last;
3. filters (``filters=``, hard rules of :mod:`selector.filters` on scalar columns, e.g.
   ``"score_relevance:min=0.2"`` or ``{"column": "check_exact_dup_of", "is_null": True}``) run on the rows still
   eligible (quantiles are taken over them); a row failing a rule is never selected (reason ``filter:<rule>``,
   naming the first rule it fails); per-rule counts are in ``Selection.filter_report``;
4. dedup. First the groups (``dedup_group=``, columns such as ``check_copy_group`` whose equal non-null values
   mark rows that repeat each other): of each group's rows still eligible the best-scored stays (same keep order
   as below), the others get ``dedup:dup_of=<kept id> group=<column>``. Then (``dedup_column=``, one ``emb_*``
   column or several) SemDeDup (:func:`selector.prototypes.semdedup`)
   over the rows still eligible, before any strategy clusters them, whatever the strategy. Several columns are
   each L2-normalised, concatenated and normalised again, so the cosine of two rows is the mean of their per-column
   cosines, and a pair counts as a near-duplicate (cosine ``> 1 - dedup_eps``) only when it is similar in (nearly)
   all of them, e.g. the same picture *and* the same answer. Rows are compared in keep order: highest score first
   (the ``score_column``/``scores``; NaN last), ties by id, so of a group of near-duplicates the best-scored copy
   is kept and the others get ``dedup:dup_of=<kept id> cos=<cosine to it>``. By default every eligible row is
   compared with every other (exact; cost ``O(n^2 d)`` in blocks of bounded memory, fine to ~10^5 rows);
   ``dedup_n_clusters=k`` first splits them with spherical k-means, as the SemDeDup paper does, and compares only
   inside a cluster. ``dedup_engine="ray"`` runs the per-cluster comparisons as Ray tasks, the path of the
   ``semdedup`` strategy's ``engine="ray"`` (:func:`selector.ray_engine.max_previous_similarity`; the k-means split
   stays on this machine), with the same result. Rows whose dedup embedding is missing (NaN, zero) take no part:
   they are neither removed nor anyone's duplicate. Duplicates across strata are duplicates too: dedup runs on the
   whole pool. The result is in ``Selection.dedup_report``; without ``dedup_column`` nothing changes;
5. strata: strategies see the eligible rows ordered by a stable hash of ``id`` (blake2b), so k-means
   initialisation and sampling, and hence the selection, do not depend on the input row order; the same
   ``random_state`` gives the same selection; ties break by ``id`` (strategies get each row's lexicographic id
   rank as ``tie_rank``). ``stratify_column`` (e.g. ``source``) splits the pool first: each stratum gets a budget
   proportional to its eligible size (at least one row each while the budget allows; ``stratify_quota="uniform"``:
   the same budget for every stratum, capped by its size, the rest spread over the larger ones) and the strategy
   runs per stratum, so clustering can't erase a small task. With fewer eligible rows than the budget, all eligible rows
   are selected and a warning is logged and stored in ``Selection.warnings``;
6. the strategy runs per stratum; the first ``budget`` rows of its order are selected, so the budget is met
   exactly whenever enough eligible rows exist;
7. assembly: one global rank and a ``reason`` for every row: ``selected ...``, ``quota cluster=C rank=R/Q``,
   ``dup_of=<id> cos=...`` (the ``semdedup`` strategy's own duplicates), ``budget rank=R``, ``excluded``,
   ``error <kind>``, ``missing <column>``, ``filter:<rule>``, ``dedup:dup_of=<id> cos=...``; the reason kind
   counted in :meth:`Selection.summary` is the text before the first space, ``=`` or ``:`` (:func:`reason_kind`).

A further eligibility rule is one more :meth:`_Pool.exclude` call between steps 2 and 5, with its own reason kind
added to :data:`INELIGIBLE_KINDS`.

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(100, 8)).astype("float32")
    >>> sel = select_arrays(X, 0.2, "ssl_prototypes", n_clusters=5)
    >>> int(sel.mask.sum()), sel.reason[sel.indices[0]].split()[0]
    (20, 'selected')
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selector.errors import ConfigError, DataError
from selector.rows import (
    as_ids,
    check_seed,
    cluster_labels,
    column_array,
    embedding_matrix,
    error_kind,
    hash_order,
    id_ranks,
    is_missing_cluster,
    parse_budget,
    resolve_budget,
    usable_mask,
)
from selector.strategies import (
    StrategyInput,
    StrategyResult,
    check_result,
    get_strategy,
    parse_strategy,
    resolve_options,
    used_inputs,
)

logger = logging.getLogger(__name__)

#: Reason kinds of rows that no strategy sees (they are not eligible).
INELIGIBLE_KINDS = ("error", "missing", "filter", "dedup")

#: Default SemDeDup threshold of the dedup step: cosine similarity above 0.95 is a near-duplicate.
DEFAULT_DEDUP_EPS = 0.05


def reason_kind(reason: str) -> str:
    """The kind of a reason: its text before the first space, ``=`` or ``:`` (``"filter:score_x>=0.3"`` ->
    ``"filter"``, ``"dup_of=a cos=0.99"`` -> ``"dup_of"``, ``"error missing_image"`` -> ``"error"``)."""
    return re.match(r"[^ =:]*", str(reason)).group(0)


@dataclass
class Selection:
    """Result of a selection over ``n`` input rows (input order).

    Attributes:
        ids: (n,) row ids.
        mask: (n,) bool, True for selected rows.
        rank: (n,) int64 position in the strategy's preference order: ``0 .. n_selected-1`` for selected rows
            (0 = most wanted), then the rejected rows the strategy ranked; -1 for rows it could not rank
            (errors, missing inputs, excluded).
        cluster: (n,) int64 cluster of each row (-1 when the strategy has no clusters or the row was not
            clustered, e.g. its cluster id was missing); unique across strata.
        reason: (n,) str, see the module docstring.
        score: (n,) float64 "high = keep" value the strategy ranked by; NaN where it has none.
        strategy, budget, n_budget, random_state, options: the request (the budget as parsed: a count or a
            fraction), the resolved budget count and options.
        columns: which input columns were used.
        warnings: messages also sent to the log.
        info: per-stratum strategy info (quotas, thresholds, ...).
        filter_report: None without filters, else :meth:`selector.filters.FilterResult.report` plus ``counts``
            (rows failing each rule, keyed by the rule's text; a row failing several rules counts under each).
        dedup_report: None without dedup, else columns, eps, rows compared and skipped, ``n_duplicates`` and
            what decided the kept copy (``keep_by``).

    Example:
        >>> sel = select_arrays(None, 2, "topk", scores=[0.1, 0.9, 0.5], ids=["a", "b", "c"])
        >>> sel.ids[sel.indices].tolist(), sel.summary()["reasons"]
        (['b', 'c'], {'budget': 1, 'selected': 2})
    """

    ids: np.ndarray
    mask: np.ndarray
    rank: np.ndarray
    cluster: np.ndarray
    reason: np.ndarray
    score: np.ndarray
    strategy: str
    budget: int | float
    n_budget: int
    random_state: int
    options: dict
    columns: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    filter_report: dict | None = None
    dedup_report: dict | None = None

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    @property
    def n_selected(self) -> int:
        return int(self.mask.sum())

    @property
    def indices(self) -> np.ndarray:
        """Selected row indices (into the input), most wanted first."""
        sel = np.flatnonzero(self.mask)
        return sel[np.argsort(self.rank[sel], kind="stable")]

    def summary(self) -> dict[str, Any]:
        """JSON-able counts: rows, eligible, selected, per reason kind, and per cluster (rows, selected).

        Only rows the strategy placed in a cluster count; rows with a missing cluster id are not a cluster, so
        ``n_clusters`` is the number of real clusters.
        """
        kinds = Counter(reason_kind(r) for r in self.reason)
        ineligible = sum(kinds.get(kind, 0) for kind in INELIGIBLE_KINDS)
        per_cluster = {}
        clustered = self.cluster >= 0
        if clustered.any():
            counts = np.bincount(self.cluster[clustered])
            chosen = np.bincount(self.cluster[clustered & self.mask], minlength=counts.size)
            per_cluster = {
                str(c): {"rows": int(counts[c]), "selected": int(chosen[c])} for c in np.flatnonzero(counts)
            }
        return {
            "n_rows": len(self),
            "n_eligible": len(self) - ineligible,
            "n_selected": self.n_selected,
            "n_budget": self.n_budget,
            "n_clusters": len(per_cluster),
            "reasons": dict(sorted(kinds.items())),
            "clusters": per_cluster,
        }


# Entry points.


def select_arrays(
    embeddings,
    budget,
    strategy: str,
    *,
    scores=None,
    ids=None,
    errors=None,
    clusters=None,
    strata=None,
    filters=None,
    columns=None,
    dedup_embeddings=None,
    dedup_eps: float = DEFAULT_DEDUP_EPS,
    dedup_n_clusters: int | None = None,
    dedup_engine: str = "local",
    dedup_groups=None,
    random_state: int | None = 0,
    **options,
) -> Selection:
    """Select ``budget`` rows from arrays (the array form of :func:`select`).

    Args:
        embeddings: (n, d) embeddings (NaN rows = missing), or None for strategies that need none.
        budget: a count (``200``, ``200.0``), a fraction in (0, 1] of the n rows (``0.3``) or a percent
            (``"30%"``); 0 or below is a ``ConfigError``.
        strategy: a registry name, or ``"name:label"`` for score-ranking strategies.
        scores: (n,) "high = better" scores (NaN ranks last), e.g. ``LearnedSelector.score_samples(ds)``.
        ids: (n,) unique row ids (default ``"0".."n-1"``); the selection is invariant to permuting rows with their
            ids, and ties break by id.
        errors: (n,) error values (None, NaN or ``""`` = usable) or a bool mask; such rows are never selected.
        clusters: (n,) precomputed cluster ids (-1, None or NaN = missing: never selected).
        strata: (n,) stratum of each row (e.g. source); quotas per stratum first.
        filters: filter rules (``FilterRule``, ``"column:min=0.3"`` strings or ``{"column": ..., "min": ...}``
            mappings) on the scalar ``columns``; failing rows are never selected (reason ``filter:<rule>``).
        columns: the columns the filters read: a mapping of name -> (n,) values, a DataFrame or a Dataset.
        dedup_embeddings: an (n, d) array, or a list of them, for the dedup step (see the module docstring);
            None: no dedup.
        dedup_eps: dedup threshold: a row whose cosine similarity to a better-ranked row exceeds
            ``1 - dedup_eps`` is a duplicate, in [0, 2].
        dedup_n_clusters: None compares every pair of eligible rows; k splits them by spherical k-means first.
        dedup_engine: ``"local"`` (threads), or ``"ray"``: the dedup comparisons as Ray tasks, same result.
        dedup_groups: (n,) group ids of rows that repeat each other (None / NaN / -1 / ``""``: no group), or a
            mapping of name -> such arrays; of each group the best-scored eligible row stays (see :func:`select`).
        random_state: int seed (None reads as 0); same seed -> same selection.
        **options: strategy options (see :func:`selector.strategies.strategy_options`).

    Returns:
        :class:`Selection`.

    Example:
        >>> sel = select_arrays(None, 2, "topk", scores=[0.9, 0.5, 0.1], ids=["a", "b", "c"],
        ...                     filters=["x:min=0"], columns={"x": [1.0, float("nan"), 2.0]})
        >>> sel.ids[sel.indices].tolist(), sel.reason[1]
        (['a', 'c'], 'filter:x>=0')
    """
    if embeddings is not None:
        n = int(np.asarray(embeddings).shape[0])
    elif scores is not None:
        n = int(np.asarray(scores).shape[0])
    elif ids is not None:
        n = len(ids)
    else:
        raise ConfigError("select_arrays needs embeddings, scores or ids to know the number of rows")
    if filters and columns is None:
        raise ConfigError("filters need columns= (a mapping of column name -> per-row values)")
    dedup = None
    if dedup_embeddings is not None or dedup_groups is not None:
        parts = [] if dedup_embeddings is None else dedup_embeddings
        parts = list(parts) if isinstance(parts, (list, tuple)) else [parts]
        names = [f"dedup_embeddings[{i}]" for i in range(len(parts))] if len(parts) > 1 else ["dedup_embeddings"]
        groups = {} if dedup_groups is None else dedup_groups
        groups = dict(groups) if isinstance(groups, Mapping) else {"dedup_groups": groups}
        dedup = _DedupSpec(
            names[: len(parts)], parts, dedup_eps, dedup_n_clusters, dedup_engine, list(groups), list(groups.values())
        )
    return _select_core(
        n=n,
        budget=budget,
        strategy=strategy,
        embeddings=embeddings,
        scores=scores,
        ids=ids,
        errors=errors,
        clusters=clusters,
        strata=strata,
        filters=(filters, columns),
        dedup=dedup,
        random_state=random_state,
        options=options,
        names={},
        hints={
            "embeddings": "embeddings (an (n, d) array)",
            "scores": "scores (an (n,) array)",
            "clusters": "clusters (an (n,) array)",
        },
    )


def select(
    ds,
    budget,
    strategy: str,
    *,
    embedding_column: str | None = None,
    score_column: str | None = None,
    cluster_column: str | None = None,
    stratify_column: str | None = None,
    scores=None,
    filters=None,
    dedup_column: str | list[str] | None = None,
    dedup_eps: float = DEFAULT_DEDUP_EPS,
    dedup_n_clusters: int | None = None,
    dedup_engine: str = "local",
    dedup_group: str | list[str] | None = None,
    id_column: str = "id",
    random_state: int | None = 0,
    **options,
) -> Selection:
    """Select ``budget`` rows of a scored dataset with a named strategy.

    Args:
        ds: a ``datasets.Dataset`` with canonical columns (``id``, ``error``, ``source``, ...) and score columns
            (``score_*``, ``emb_*``, ``cluster_*``), e.g. the output of ``vlselect score``.
        budget: a count, a fraction in (0, 1] of all rows (error rows included) or a percent (``"30%"``).
        strategy: ``instructiongpt4``, ``dbp``, ``semdedup``, ``ssl_prototypes``, ``random``,
            ``topk:<column>`` or any registered strategy.
        embedding_column: ``emb_*`` column for strategies that need embeddings (auto-detected when the dataset
            has exactly one).
        score_column: ``score_*`` column ranked by (higher = better; NaN last).
        cluster_column: ``cluster_*`` column with precomputed clusters (e.g. from the ``diversity`` metric); -1,
            None or NaN means the row has no cluster and is never selected.
        stratify_column: split quotas by this column first (e.g. ``source``).
        scores: (n,) per-row scores from outside instead of ``score_column`` (e.g.
            ``LearnedSelector.score_samples(ds)``).
        filters: hard rules on scalar columns of ``ds`` (``FilterRule``, ``"score_relevance:min=0.2"`` strings or
            ``{"column": ..., "min": ...}`` mappings, see :mod:`selector.filters`); a failing row is never selected
            and gets the reason ``filter:<rule>``. NaN fails ``min``/``max``.
        dedup_column: an ``emb_*`` column, or a list of them (each normalised, concatenated, normalised again), to
            remove near-duplicates from before the strategy runs; the best-scored copy of each group is kept (see
            the module docstring). None: no dedup.
        dedup_eps: near-duplicate threshold: cosine similarity above ``1 - dedup_eps`` (default 0.05).
        dedup_n_clusters: None compares all eligible rows pairwise (exact); k compares only inside the clusters
            of a spherical k-means, for pools too large for that.
        dedup_engine: ``"local"`` (threads), or ``"ray"``: the per-cluster comparisons run as Ray tasks on the
            cluster this process is connected to (``RAY_ADDRESS``, else a local Ray), same result.
        dedup_group: a column (or a list) whose equal non-null values mark rows that repeat each other, e.g.
            ``check_copy_group`` of :func:`selector.copies.copy_duplicates`; of each group's rows that pass the
            filters, the best-scored stays (reason ``dedup:dup_of=<id> group=<column>`` for the others). Runs
            before the embedding dedup; either may be given alone.
        id_column: unique row ids.
        random_state: seed.
        **options: strategy options (``n_clusters``, ``eps``, ``keep``, ...; see
            :func:`selector.strategies.strategy_options`).

    Returns:
        :class:`Selection` (one entry per row, input order).

    Example:
        >>> sel = select(ds, 200, "instructiongpt4", score_column="score_clip", cluster_column="cluster_div")  # doctest: +SKIP
        >>> subset = select_dataset(ds, sel)  # doctest: +SKIP
    """
    columns = list(ds.column_names)
    name, column = parse_strategy(strategy)
    if column is not None:
        if score_column is not None and score_column != column:
            raise ConfigError(f"strategy {strategy!r} and score_column={score_column!r} name different columns")
        score_column = column
    if score_column is not None and scores is not None:
        raise ConfigError("pass either score_column= or scores=, not both")
    for label, col in (
        ("id_column", id_column),
        ("embedding_column", embedding_column),
        ("score_column", score_column),
        ("cluster_column", cluster_column),
        ("stratify_column", stratify_column),
        *(("dedup_column", c) for c in _as_column_list(dedup_column)),
        *(("dedup_group", c) for c in _as_column_list(dedup_group, "dedup_group")),
    ):
        if col is not None and col not in columns:
            raise ConfigError(f"{label}={col!r} is not a column of the dataset; columns: {', '.join(columns)}")
    if embedding_column is None:
        embedding_column = _detect_embedding_column(
            get_strategy(name),
            columns,
            have_scores=score_column is not None or scores is not None,
            have_clusters=cluster_column is not None,
        )

    n = len(ds)
    if scores is not None and len(scores) != n:
        raise DataError(f"scores has {len(scores)} entries for {n} rows")
    dedup = None
    if dedup_column is not None or dedup_group is not None:
        dedup_columns = _as_column_list(dedup_column)
        group_columns = _as_column_list(dedup_group, "dedup_group")
        # read lazily: the request (eps, budget, strategy) is checked before the vectors are loaded.
        dedup = _DedupSpec(
            dedup_columns,
            [lambda c=c: embedding_matrix(ds, c) for c in dedup_columns],
            dedup_eps,
            dedup_n_clusters,
            dedup_engine,
            group_columns,
            [lambda c=c: ds[c] for c in group_columns],
        )
    return _select_core(
        n=n,
        budget=budget,
        strategy=strategy,
        embeddings=None if embedding_column is None else embedding_matrix(ds, embedding_column),
        scores=column_array(ds, score_column) if score_column is not None else scores,
        ids=ds[id_column],
        errors=ds["error"] if "error" in columns else None,
        clusters=None if cluster_column is None else ds[cluster_column],
        strata=None if stratify_column is None else ds[stratify_column],
        filters=(filters, ds),
        dedup=dedup,
        random_state=random_state,
        options=options,
        names={
            "embeddings": embedding_column,
            "scores": score_column
            if score_column is not None
            else ("external scores" if scores is not None else None),
            "clusters": cluster_column,
            "stratify": stratify_column,
            "id": id_column,
        },
        hints=_column_hints(columns),
    )


def select_dataset(ds, selection: Selection, keep_rejected: bool = False, id_column: str = "id"):
    """Apply a :class:`Selection` to the dataset it was computed on.

    Args:
        ds: the same dataset (same rows, same order) passed to :func:`select`.
        selection: the selection.
        keep_rejected: False -> only the selected rows (input order); True -> every row plus ``selected``
            (bool), ``selection_rank`` (int, -1 = unranked) and ``selection_reason`` (str) columns.

    Returns:
        ``datasets.Dataset``.

    Raises:
        DataError: the dataset's rows do not match the selection's ids.
    """
    if len(ds) != len(selection):
        raise DataError(f"the dataset has {len(ds)} rows but the selection {len(selection)}")
    if id_column in ds.column_names:
        ids = np.array([str(v) for v in ds[id_column]]) if len(ds) else np.zeros(0, dtype=str)
        if not np.array_equal(ids, selection.ids):
            raise DataError(
                "the dataset's ids differ from the selection's: apply a selection to the rows it was made on"
            )
    if not keep_rejected:
        return ds.select(np.flatnonzero(selection.mask))
    for col in ("selected", "selection_rank", "selection_reason"):
        if col in ds.column_names:
            ds = ds.remove_columns(col)
    ds = ds.add_column("selected", selection.mask.tolist())
    ds = ds.add_column("selection_rank", selection.rank.tolist())
    return ds.add_column("selection_reason", [str(r) for r in selection.reason])


def _detect_embedding_column(
    fn: Callable, columns: list[str], *, have_scores: bool, have_clusters: bool
) -> str | None:
    """The dataset's only ``emb_*`` column when the strategy needs embeddings and has no alternative input."""
    emb_columns = [c for c in columns if c.startswith("emb_")]
    if len(emb_columns) != 1:
        return None
    have = {"embeddings": False, "scores": have_scores, "clusters": have_clusters}
    for need in getattr(fn, "needs", ()):
        alts = need.split("|")
        if "embeddings" in alts and not any(have[a] for a in alts):
            logger.info("using embedding column %s", emb_columns[0])
            return emb_columns[0]
    return None


def _column_hints(columns: list[str]) -> dict[str, str]:
    """How a dataset caller supplies each strategy input, naming the candidate columns."""

    def one_of(prefix: str) -> str:
        found = [c for c in columns if c.startswith(prefix)]
        return "(one of: " + (", ".join(found) or "none in this dataset") + ")"

    return {
        "embeddings": f"embedding_column= {one_of('emb_')}",
        "scores": f"score_column= {one_of('score_')} or scores=",
        "clusters": f"cluster_column= {one_of('cluster_')}",
    }


# The wrapper: request -> pool -> strata -> strategy per stratum -> assembly.


@dataclass(frozen=True)
class _Request:
    """A checked request: the strategy function, its resolved options, the budget and the seed."""

    strategy: str
    name: str
    fn: Callable
    used: frozenset
    options: dict
    budget: int | float
    n_budget: int
    seed: int


@dataclass
class _Pool:
    """Every input row after the row rules, in input order: the inputs a strategy uses and who may be selected."""

    ids: np.ndarray
    tie_rank: np.ndarray
    embeddings: np.ndarray | None
    scores: np.ndarray | None
    clusters: np.ndarray | None
    strata: np.ndarray | None
    eligible: np.ndarray
    reason: np.ndarray

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    def exclude(self, mask: np.ndarray, reason: str | np.ndarray) -> None:
        """Make the still-eligible rows of ``mask`` ineligible with ``reason`` (one string, or one per row).

        A row keeps the first reason that excluded it, so rules run in order of precedence.
        """
        hit = np.asarray(mask, dtype=bool) & self.eligible
        self.reason[hit] = reason if isinstance(reason, str) else np.asarray(reason, dtype=object)[hit]
        self.eligible &= ~hit


def _select_core(
    *,
    n: int,
    budget,
    strategy: str,
    embeddings,
    scores,
    ids,
    errors,
    clusters,
    strata,
    filters: tuple = (None, None),
    dedup: _DedupSpec | None = None,
    random_state,
    options: dict,
    names: dict[str, str | None],
    hints: dict[str, str],
) -> Selection:
    from selector.filters import parse_filters

    have = {"embeddings": embeddings is not None, "scores": scores is not None, "clusters": clusters is not None}
    # a selection policy, not a strategy option: quotas of the stratify_column strata (see _strata).
    options = dict(options)
    stratify_quota = options.pop("stratify_quota", "proportional")
    if stratify_quota not in ("proportional", "uniform"):
        raise ConfigError(f"stratify_quota must be 'proportional' or 'uniform', got {stratify_quota!r}")
    if strata is not None:
        names = {**names, "stratify_quota": stratify_quota}
    request = _check_request(strategy, options, budget, n, random_state, have, hints)
    rules, filter_data = parse_filters(filters[0]), filters[1]
    if dedup is not None:
        dedup.check()
    pool = _apply_row_rules(
        request,
        n,
        ids=ids,
        embeddings=embeddings,
        scores=scores,
        clusters=clusters,
        strata=strata,
        errors=errors,
        names=names,
    )
    filter_report = _apply_filters(pool, rules, filter_data) if rules else None
    dedup_report = None
    if dedup is not None:
        dedup_report = _apply_dedup(pool, dedup, request.seed, names.get("scores") or "scores")
    groups, warnings = _strata(pool, request.n_budget, stratify_quota)
    assembly = _Assembly(pool, warnings)
    for g, (key, rows, group_budget) in enumerate(groups):
        if rows.size:
            inp, res = _run_strategy(request, pool, rows, group_budget)
            assembly.add(request, g, key, rows, group_budget, inp, res)
    columns = dict(names)
    if rules:
        columns["filters"] = [str(rule) for rule in rules]
    if dedup is not None:
        columns["dedup"] = list(dedup.names)
        if dedup.group_names:
            columns["dedup_group"] = list(dedup.group_names)
    return assembly.selection(request, columns, filter_report, dedup_report)


def _check_request(strategy, options, budget, n, random_state, have, hints) -> _Request:
    name, column = parse_strategy(strategy)
    fn = get_strategy(name)
    needs = getattr(fn, "needs", ())
    if column is not None and not any("scores" in need.split("|") for need in needs):
        raise ConfigError(f"strategy {name!r} does not rank by a score column, so {strategy!r} is not valid")
    resolved = resolve_options(name, fn, options)
    parsed = parse_budget(budget)
    n_budget = resolve_budget(parsed, n)
    seed = check_seed(random_state)
    used = used_inputs(name, needs, have, hints)
    return _Request(strategy, name, fn, frozenset(used), resolved, parsed, n_budget, seed)


def _apply_row_rules(request: _Request, n: int, *, ids, embeddings, scores, clusters, strata, errors, names) -> _Pool:
    """Check the per-row inputs and exclude the rows no strategy may select (errors, missing inputs)."""
    ids = as_ids(ids, n)
    pool = _Pool(
        ids=ids,
        tie_rank=id_ranks(ids),
        embeddings=None,
        scores=None,
        clusters=None,
        strata=None,
        eligible=np.ones(n, dtype=bool),
        reason=np.empty(n, dtype=object),
    )
    if errors is not None:
        errors = list(errors)
        usable = usable_mask(errors, n)
        pool.exclude(~usable, np.array([None if ok else f"error {error_kind(e)}" for e, ok in zip(errors, usable)]))

    if embeddings is not None:
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != n:
            raise DataError(f"embeddings must have shape ({n}, d), got {embeddings.shape}")
        if not np.issubdtype(embeddings.dtype, np.number):
            raise DataError(f"embeddings must be numeric, got dtype {embeddings.dtype}")
        # unused embeddings may hold NaN rows that are not excluded, so a strategy never sees them.
        if "embeddings" in request.used:
            pool.embeddings = embeddings
            pool.exclude(~np.isfinite(embeddings).all(axis=1), f"missing {names.get('embeddings') or 'embeddings'}")

    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != n:
            raise DataError(f"scores has {scores.shape[0]} entries for {n} rows")
        pool.scores = np.where(np.isfinite(scores), scores, np.nan)

    if clusters is not None:
        # given clusters are always used (a strategy that clusters takes them instead of running k-means).
        pool.clusters, missing = cluster_labels(clusters, n)
        pool.exclude(missing, f"missing {names.get('clusters') or 'clusters'}")

    if strata is not None:
        pool.strata = np.array(["None" if s is None else str(s) for s in strata], dtype=object)
        if pool.strata.shape[0] != n:
            raise DataError(f"stratify column has {pool.strata.shape[0]} entries for {n} rows")
    return pool


def _apply_filters(pool: _Pool, rules: list, data) -> dict:
    """Exclude the eligible rows failing a filter rule (reason ``filter:<rule>``); returns the filter report."""
    from selector.filters import apply_filters, n_rows

    if data is None:
        raise ConfigError("filters need the columns they read")
    if n_rows(data) != pool.n:
        raise DataError(f"the filter columns have {n_rows(data)} rows for {pool.n} rows")
    result = apply_filters(data, rules, eligible=pool.eligible)
    pool.exclude(result.filtered, result.reason)
    report = result.report()
    report["counts"] = result.counts()
    if result.filtered.any():
        logger.info(
            "filters removed %d of %d eligible rows: %s",
            result.filtered.sum(),
            result.eligible.sum(),
            report["counts"],
        )
    return report


@dataclass
class _DedupSpec:
    """The dedup step's request: column names (for reasons and reports), per-column (n, d) matrices or callables
    returning them (read only once the request is checked), threshold, optional k-means split and engine."""

    names: list[str]
    parts: list
    eps: Any
    n_clusters: Any
    engine: Any = "local"
    group_names: list[str] = field(default_factory=list)
    group_parts: list = field(default_factory=list)

    def check(self) -> None:
        if not self.names and not self.group_names:
            raise ConfigError("dedup: name at least one embedding column (dedup_column) or group column (dedup_group)")
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
            raise ConfigError(f"dedup_eps must be a number in [0, 2], got {eps!r}")
        if not (math.isfinite(float(eps)) and 0.0 <= float(eps) <= 2.0):
            raise ConfigError(f"dedup_eps must be a number in [0, 2], got {eps!r}")
        k = self.n_clusters
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise ConfigError(f"dedup_n_clusters must be a positive integer or None, got {k!r}")
        from selector.prototypes import _use_ray

        if _use_ray(self.engine):  # a missing extra is one line now, not after the vectors are read
            from selector.ray_engine import require_ray

            require_ray()

    def matrix(self, n: int) -> np.ndarray:
        """(n, D) float32: each part L2-normalised, concatenated, normalised again; NaN rows where any part is
        missing (a non-finite value or a zero vector, which has no direction)."""
        blocks = []
        missing = np.zeros(n, dtype=bool)
        for name, part in zip(self.names, self.parts):
            X = np.asarray(part() if callable(part) else part, dtype=np.float32)
            if X.ndim != 2 or X.shape[0] != n:
                raise DataError(f"{name} must have shape ({n}, d), got {X.shape}")
            finite = np.isfinite(X).all(axis=1)
            norms = np.linalg.norm(np.where(finite[:, None], X, 0.0), axis=1)
            missing |= ~finite | (norms == 0)
            blocks.append(np.where(finite[:, None], X, 0.0) / np.where(norms > 0, norms, 1.0)[:, None])
        combined = np.concatenate(blocks, axis=1) / np.float32(math.sqrt(len(blocks)))
        combined[missing] = np.nan
        return np.ascontiguousarray(combined, dtype=np.float32)


def _as_column_list(column, what: str = "dedup_column") -> list[str]:
    if column is None:
        return []
    if isinstance(column, str):
        return [column]
    if isinstance(column, (list, tuple)) and all(isinstance(c, str) for c in column):
        return list(column)
    raise ConfigError(f"{what} must be a column name or a list of them, got {column!r}")


def _apply_dedup(pool: _Pool, spec: _DedupSpec, seed: int, score_name: str | None) -> dict:
    """Group dedup, then SemDeDup over the rows still eligible (module docstring, step 4); returns the report:
    SemDeDup's keys, ``groups`` (the group dedup's) and ``n_duplicates`` counting both."""
    groups = _apply_group_dedup(pool, spec, score_name) if spec.group_names else None
    if spec.names:
        report = _apply_semdedup(pool, spec, seed, score_name)
    else:
        report = {"columns": [], "n_compared": 0, "n_missing": 0, "n_duplicates": 0}
    if groups is not None:
        report["groups"] = groups
        report["n_duplicates"] += groups["n_duplicates"]
    return report


def dedup_summary(report: Mapping) -> str:
    """One line for a dedup report: ``"12 near-duplicates (groups check_copy_group 5; emb_image+emb_text cos >
    0.95: 7 of 410 compared)"``."""
    parts = []
    groups = report.get("groups")
    if groups:
        parts.append("groups " + ", ".join(f"{c} {n}" for c, n in groups.get("counts", {}).items()))
    if report.get("columns"):
        semdedup = report["n_duplicates"] - (groups or {}).get("n_duplicates", 0)
        parts.append(
            f"{'+'.join(report['columns'])} cos > {1 - float(report.get('eps', 0)):g}: {semdedup} of "
            f"{report.get('n_compared', 0)} compared"
        )
    return f"{report['n_duplicates']} near-duplicates ({'; '.join(parts)})"


def _apply_group_dedup(pool: _Pool, spec: _DedupSpec, score_name: str | None) -> dict:
    """Rows that share a value of a group column (e.g. ``check_copy_group``: one id per group of copies) repeat
    each other: of each group's rows still eligible, the best stays (highest score, NaN last, then id, the
    SemDeDup keep order) and the others get ``dedup:dup_of=<kept id> group=<column>``. None, NaN and ``""`` are
    no group. Running after the filters means a group's best *surviving* row stays: a clean copy is kept when an
    earlier copy of it is a defect the filters removed."""
    from selector.prototypes import keep_order

    report = {"columns": list(spec.group_names), "keep_by": _keep_by(pool, score_name), "counts": {}}
    for name, part in zip(spec.group_names, spec.group_parts):
        values = np.asarray(part() if callable(part) else part, dtype=object)
        if values.shape != (pool.n,):
            raise DataError(f"{name} must have one value per row ({pool.n}), got shape {values.shape}")
        grouped = np.array([not is_missing_cluster(v) and v != "" for v in values], dtype=bool)
        rows = np.flatnonzero(pool.eligible & grouped)
        report["counts"][name] = 0
        if rows.size < 2:
            continue
        _, labels = np.unique(np.array([str(v) for v in values[rows]], dtype=object), return_inverse=True)
        order = keep_order(labels, None if pool.scores is None else pool.scores[rows], pool.tie_rank[rows])
        sorted_labels = labels[order]
        first = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]
        keeper = np.empty(int(labels.max()) + 1, dtype=np.int64)
        keeper[sorted_labels[first]] = rows[order[first]]
        removed = rows[order[~first]]
        reasons = np.empty(pool.n, dtype=object)
        reasons[removed] = [f"dedup:dup_of={pool.ids[keeper[g]]} group={name}" for g in sorted_labels[~first]]
        hit = np.zeros(pool.n, dtype=bool)
        hit[removed] = True
        pool.exclude(hit, reasons)
        report["counts"][name] = int(removed.size)
    report["n_duplicates"] = int(sum(report["counts"].values()))
    return report


def _keep_by(pool: _Pool, score_name: str | None) -> str:
    return f"{score_name} (highest), then id" if pool.scores is not None else "id"


def _apply_semdedup(pool: _Pool, spec: _DedupSpec, seed: int, score_name: str | None) -> dict:
    """SemDeDup over the eligible rows (module docstring, step 4); returns its part of the dedup report."""
    from selector.prototypes import semdedup

    X = spec.matrix(pool.n)
    present = np.isfinite(X).all(axis=1)
    # stable-hash order, so the k-means split (and hence the result) does not depend on the input row order.
    order = hash_order(pool.ids)
    rows = order[(pool.eligible & present)[order]]
    report = {
        "columns": list(spec.names),
        "eps": float(spec.eps),
        "n_clusters": None if spec.n_clusters is None else int(spec.n_clusters),
        "engine": spec.engine,
        "keep_by": _keep_by(pool, score_name),
        "n_compared": int(rows.size),
        "n_missing": int((pool.eligible & ~present).sum()),
        "n_duplicates": 0,
    }
    if rows.size < 2:
        return report
    Xr = X[rows]
    if spec.n_clusters is None:
        labels = np.zeros(rows.size, dtype=np.int64)
    else:
        from selector.cluster import KMeans

        k = min(int(spec.n_clusters), rows.size)
        labels = KMeans(n_clusters=k, spherical=True, random_state=seed).fit(Xr).labels_
    priority = None if pool.scores is None else pool.scores[rows]
    result = semdedup(Xr, labels, float(spec.eps), priority=priority, tie_rank=pool.tie_rank[rows], engine=spec.engine)
    kept_of = result.dup_of[0]
    removed = np.flatnonzero(~result.keep[0])
    reasons = np.empty(pool.n, dtype=object)
    hit = np.zeros(pool.n, dtype=bool)
    for j in removed:
        # the chain of nearest duplicates always ends at a kept row; name it and the cosine to it.
        kept = kept_of[j] if kept_of[j] >= 0 else result.nearest[j]
        cos = float(np.dot(Xr[j], Xr[kept]))
        reasons[rows[j]] = f"dedup:dup_of={pool.ids[rows[kept]]} cos={cos:.4f}"
        hit[rows[j]] = True
    pool.exclude(hit, reasons)
    report["n_duplicates"] = int(hit.sum())
    if hit.any():
        logger.info("dedup removed %d near-duplicates of %d rows compared", hit.sum(), rows.size)
    return report


def _strata(
    pool: _Pool, n_budget: int, quota: str = "proportional"
) -> tuple[list[tuple[str, np.ndarray, int]], list[str]]:
    """The eligible rows in stable-hash order, split into strata with a budget each; and any warnings.

    ``quota``: ``"proportional"`` (to each stratum's eligible rows, at least one each while the budget allows) or
    ``"uniform"`` (the same for every stratum, capped by its rows, the rest spread over the larger strata: the
    class-balanced pruning of image classification); both sum exactly to the budget.
    """
    from selector.quota import proportional_quota, uniform_quota

    order = hash_order(pool.ids)
    candidates = order[pool.eligible[order]]
    warnings = []
    if n_budget > candidates.size:
        kinds = Counter(reason_kind(r) for r in pool.reason[~pool.eligible])
        causes = ", ".join(f"{kind} {kinds[kind]}" for kind in INELIGIBLE_KINDS if kinds.get(kind))
        msg = (
            f"budget {n_budget} exceeds the {candidates.size} eligible rows ({pool.n - candidates.size} rows have "
            f"errors or missing inputs, or were filtered or deduplicated{': ' + causes if causes else ''}): "
            "selecting all eligible rows"
        )
        logger.warning(msg)
        warnings.append(msg)
    total = min(n_budget, candidates.size)
    if pool.strata is None:
        return [("all", candidates, total)], warnings
    keys = sorted(set(pool.strata[candidates].tolist()))
    groups = [candidates[pool.strata[candidates] == key] for key in keys]
    split = uniform_quota if quota == "uniform" else proportional_quota
    budgets = split(np.array([g.size for g in groups]), total).tolist()
    return list(zip(keys, groups, (int(b) for b in budgets))), warnings


def _run_strategy(request: _Request, pool: _Pool, rows: np.ndarray, budget: int):
    """Run the strategy on the eligible rows ``rows`` of one stratum; returns its input and checked result."""
    inp = StrategyInput(
        embeddings=None if pool.embeddings is None else np.ascontiguousarray(pool.embeddings[rows], dtype=np.float32),
        scores=None if pool.scores is None else pool.scores[rows],
        ids=pool.ids[rows],
        tie_rank=pool.tie_rank[rows],
        # compact within the stratum, so a strategy sees clusters 0..k-1.
        clusters=None if pool.clusters is None else cluster_labels(pool.clusters[rows])[0],
        budget=int(budget),
        random_state=request.seed,
    )
    res = request.fn(inp, **request.options)
    check_result(request.name, res, rows.size)
    return inp, res


class _Assembly:
    """Collects the per-stratum results into the per-row arrays of a :class:`Selection`."""

    def __init__(self, pool: _Pool, warnings: list[str]):
        n = pool.n
        self.pool = pool
        self.warnings = warnings
        self.mask = np.zeros(n, dtype=bool)
        self.cluster = np.full(n, -1, dtype=np.int64)
        self.score = np.full(n, np.nan)
        self.reason = pool.reason.copy()
        self.info: dict[str, Any] = {}
        # (relative position, stratum, row) of the selected and of the ranked-but-rejected rows.
        self.keys_selected: list[np.ndarray] = []
        self.keys_rejected: list[np.ndarray] = []
        self.cluster_offset = 0

    def add(self, request: _Request, g: int, key: str, rows, budget: int, inp: StrategyInput, res) -> None:
        order = np.asarray(res.order, dtype=np.int64)
        if order.size < budget:
            msg = (
                f"strategy {request.name!r} ranked only {order.size} of {rows.size} rows in stratum {key!r}; "
                f"budget was {budget}"
            )
            logger.warning(msg)
            self.warnings.append(msg)
        pos = np.full(rows.size, -1, dtype=np.int64)
        pos[order] = np.arange(order.size)
        chosen, rest = order[:budget], order[budget:]
        self.mask[rows[chosen]] = True
        # strata interleave by relative position, so the global rank mixes them in proportion.
        take = min(budget, order.size)
        self.keys_selected.append(np.stack([pos[chosen] / max(take, 1), np.full(chosen.size, g), rows[chosen]], 1))
        self.keys_rejected.append(
            np.stack([(pos[rest] - take) / max(order.size - take, 1), np.full(rest.size, g), rows[rest]], 1)
        )
        if res.cluster is not None:
            local = np.asarray(res.cluster, dtype=np.int64)
            self.cluster[rows] = np.where(local >= 0, local + self.cluster_offset, -1)
            self.cluster_offset += int(local.max()) + 1 if local.size else 0
        if res.score is not None:
            self.score[rows] = np.asarray(res.score, dtype=np.float64)
        self.info[key] = {"n_rows": int(rows.size), "budget": int(budget), **res.info}
        flag_nan = inp.scores if "scores" in request.used else None
        self.reason[rows] = _reasons(res, rows, pos, budget, self.cluster[rows], self.pool.ids, flag_nan)

    def rank(self) -> np.ndarray:
        rank = np.full(self.pool.n, -1, dtype=np.int64)
        ordered = []
        for parts in (self.keys_selected, self.keys_rejected):
            if parts:
                keys = np.concatenate(parts)
                ordered.append(keys[np.lexsort((keys[:, 1], keys[:, 0]))][:, 2].astype(np.int64))
        if ordered:
            ranked = np.concatenate(ordered)
            rank[ranked] = np.arange(ranked.size)
        return rank

    def selection(self, request: _Request, columns: dict, filter_report=None, dedup_report=None) -> Selection:
        return Selection(
            ids=self.pool.ids,
            mask=self.mask,
            rank=self.rank(),
            cluster=self.cluster,
            reason=self.reason,
            score=self.score,
            strategy=request.strategy,
            budget=request.budget,
            n_budget=request.n_budget,
            random_state=request.seed,
            options=request.options,
            columns=columns,
            warnings=self.warnings,
            info=self.info,
            filter_report=filter_report,
            dedup_report=dedup_report,
        )


def _reasons(res: StrategyResult, rows, pos, budget: int, global_cluster, ids, scores) -> list[str]:
    m = rows.size
    has_quota = res.quota is not None and res.cluster_rank is not None and res.cluster is not None
    local_cluster = None if res.cluster is None else np.asarray(res.cluster)
    out = []
    for j in range(m):
        p = int(pos[j])
        c = int(global_cluster[j])
        where = f" cluster={c}" if c >= 0 else ""
        cr = int(res.cluster_rank[j]) if has_quota else -1
        quota = f" rank={cr + 1}/{int(res.quota[local_cluster[j]])}" if cr >= 0 else ""
        if 0 <= p < budget:
            text = f"selected{where}{quota or f' rank={p + 1}'}"
        elif res.dup_of is not None and res.dup_of[j] >= 0:
            sim = "" if res.similarity is None else f" cos={float(res.similarity[j]):.4f}"
            text = f"dup_of={ids[rows[res.dup_of[j]]]}{sim}{where}"
        elif p < 0:
            text = f"excluded{where}"
        elif quota:
            text = f"quota{where}{quota}"
        else:
            text = f"budget{where} rank={p + 1}"
        if scores is not None and np.isnan(scores[j]):
            text += " score=nan"
        out.append(text)
    return out
