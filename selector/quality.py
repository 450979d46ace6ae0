"""One quality score from many: ``score_quality`` in [0, 1], higher is better, NaN for rows it cannot score.

:class:`QualityScore` combines several score columns, each with a weight and a direction:

1. **Percentile rank per column.** Each value becomes its average rank among the pool's values of that column,
   scaled to [0, 1]: ``(rank - 1) / (m - 1)`` with ``rank`` in ``1..m`` over the ``m`` non-NaN values of the
   usable rows (rows whose ``error`` is None/NaN/"", :func:`selector.rows.usable_mask`). Tied values share
   their average rank (a constant column gives every row 0.5), so only the order of a column matters: its
   scale, units and any increasing transform of it change nothing. ``+-inf`` are ordinary extreme values.
2. **Direction.** ``"higher"`` keeps the rank, ``"lower"`` uses ``1 - rank``. When a column's direction is not
   given it is the metric's documented ``higher_is_better`` for a ``score_<metric>`` column (metric registry),
   a part ``score_<metric>_<part>`` only when the metric declares ``part_higher_is_better = {part: bool}``,
   else ``"higher"`` (logged). :meth:`QualityScore.report` says where each direction came from.
3. **Weighted mean over the columns present in the row.** A NaN in one column leaves that column out of the
   row's mean and the other weights are renormalised (``sum(w_j * p_j) / sum(w_j)`` over the row's non-NaN
   columns). A row with NaN in every (positively weighted) column, and every row with ``error`` set, gets NaN;
   strategies rank NaN last, so such a row is never preferred to a scored one.

The result is per row and deterministic: permuting the input rows permutes the scores and changes no value.
Ranks are taken against the pool passed to :meth:`QualityScore.fit`; scoring other rows later places them in
that pool's distribution (values outside it clip to 0 or 1).

A trained :class:`selector.learned.LearnedSelector` gives the same kind of score through
:func:`quality_from_selector` (its ``score_samples`` turned into percentile ranks the same way), so a strategy
can rank by either. :func:`add_quality_column` writes the chosen one as the ``score_quality`` column.

Example:
    >>> data = {"score_relevance": [0.9, 0.2, 0.5, None], "score_perplexity": [12.0, 80.0, 30.0, 15.0],
    ...         "error": [None, None, None, None]}
    >>> q = QualityScore({"score_relevance": 1.0, "score_perplexity": {"weight": 1.0, "direction": "lower"}})
    >>> q.fit(data).score_samples(data).round(3).tolist()
    [1.0, 0.0, 0.417, 0.667]
    >>> add_quality_column(data, q)["score_quality"].round(3).tolist()
    [1.0, 0.0, 0.417, 0.667]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from selector.errors import ConfigError, DataError, VLSelectError
from selector.filters import column_names, n_rows, numeric_column, usable_rows

logger = logging.getLogger(__name__)

QUALITY_COLUMN = "score_quality"
DIRECTIONS = ("higher", "lower")
SPEC_KEYS = ("column", "weight", "direction")

#: The recommended pipeline's combination: the quality-signal columns, equal weights. Columns the data lacks are
#: skipped (at least one must be present). ``direction: None`` means the metric's registered ``higher_is_better``
#: (``"higher"`` when the metric is not registered); perplexity is "lower is better" (a fluent answer the model
#: predicts well has a low perplexity; gibberish a high one).
DEFAULT_QUALITY_COLUMNS: tuple[dict[str, Any], ...] = (
    {"column": "score_relevance", "weight": 1.0, "direction": "higher"},
    {"column": "score_text_quality", "weight": 1.0, "direction": "higher"},
    {"column": "score_perplexity", "weight": 1.0, "direction": "lower"},
    {"column": "score_safety", "weight": 1.0, "direction": None},
    {"column": "score_clip", "weight": 1.0, "direction": "higher"},
    {"column": "score_reward", "weight": 1.0, "direction": "higher"},
    {"column": "score_judge", "weight": 1.0, "direction": "higher"},
)


@dataclass(frozen=True)
class QualityColumn:
    """One input of the combination.

    Attributes:
        column: a scalar score column.
        weight: its weight, finite and ``>= 0`` (0 leaves the column out).
        direction: ``"higher"`` or ``"lower"`` is better.
        direction_source: ``"given"``, ``"metric"`` (the registry's ``higher_is_better``) or ``"default"``.
    """

    column: str
    weight: float
    direction: str
    direction_source: str = "given"


class QualityScore(BaseEstimator):
    """Weighted percentile-rank combination of score columns into ``score_quality`` (see the module docstring).

    Args:
        columns: which columns, with weights and directions. None: :data:`DEFAULT_QUALITY_COLUMNS`, skipping
            those the data lacks. Otherwise a mapping ``{column: weight}`` or ``{column: {weight:, direction:}}``
            (a direction string alone is weight 1), or a list of column names and/or
            ``{column, weight, direction}`` mappings; every named column must exist. Weight defaults to 1.
        error_column: rows with this column set are left out of the ranks and score NaN.
        output_column: the column :func:`add_quality_column` writes.

    Attributes (after :meth:`fit`):
        columns_: the resolved :class:`QualityColumn` list.
        reference_: per column, the sorted non-NaN values of the usable rows (the rank reference).
        skipped_: default columns the data lacked.
        n_rows_, n_usable_: rows seen by ``fit``, and how many had no error.
        n_nan_: per column, NaN values among the usable rows.
        n_nan_rows_: rows of the fitted pool whose score is NaN (errors included).

    Example:
        >>> q = QualityScore(["score_a", {"column": "score_b", "weight": 2, "direction": "lower"}])
        >>> q.fit({"score_a": [1, 2, 3], "score_b": [3.0, 2.0, 1.0]}).score_samples({"score_a": [1, 2, 3],
        ...     "score_b": [3.0, 2.0, 1.0]}).tolist()
        [0.0, 0.5, 1.0]
    """

    def __init__(self, columns: Any = None, *, error_column: str = "error", output_column: str = QUALITY_COLUMN):
        self.columns = columns
        self.error_column = error_column
        self.output_column = output_column

    def fit(self, X: Any, y: Any = None) -> QualityScore:
        """Resolve the columns and store each column's rank reference from the usable rows of ``X``.

        Args:
            X: a ``datasets.Dataset``, a pandas DataFrame or a mapping of columns.
            y: ignored (scikit-learn signature).

        Raises:
            ConfigError: a malformed ``columns`` spec (unknown key, bad weight or direction, duplicate column,
                no positive weight), or a vector column.
            DataError: a named column is missing or not numeric, or (defaults) no default column is present.
        """
        names = column_names(X)
        specs, optional = _resolve_specs(self.columns)
        skipped = []
        if optional:
            skipped = [s.column for s in specs if s.column not in names]
            specs = [s for s in specs if s.column in names]
            if not specs:
                wanted = ", ".join(d["column"] for d in DEFAULT_QUALITY_COLUMNS)
                raise DataError(
                    f"none of the default quality columns is present ({wanted}); score the data with those metrics "
                    f"or name the columns to combine; available: {', '.join(names)}"
                )
            if not any(s.weight > 0 for s in specs):
                raise ConfigError("every quality column present has weight 0")
            if skipped:
                logger.info("quality: default columns absent from the data, skipped: %s", ", ".join(skipped))
        usable = usable_rows(X, self.error_column)
        reference, n_nan = {}, {}
        # rows with a value in some positively weighted column that has a non-empty pool: the rows that score
        ranked = np.zeros(usable.shape[0], dtype=bool)
        for spec in specs:
            values = numeric_column(X, spec.column)
            finite = ~np.isnan(values)
            reference[spec.column] = np.sort(values[usable & finite])
            n_nan[spec.column] = int((usable & ~finite).sum())
            if reference[spec.column].size == 0:
                logger.warning("quality: column %s has no value in the pool; it contributes nothing", spec.column)
            elif spec.weight > 0:
                ranked |= finite
        self.columns_ = specs
        self.reference_ = reference
        self.skipped_ = skipped
        self.n_rows_ = int(usable.shape[0])
        self.n_usable_ = int(usable.sum())
        self.n_nan_ = n_nan
        self.n_nan_rows_ = int((~(usable & ranked)).sum())
        return self

    def score_samples(self, X: Any) -> np.ndarray:
        """``score_quality`` of each row of ``X``.

        Returns:
            (n,) float64 in [0, 1], higher is better; NaN for rows with ``error`` set and rows with no value in
            any positively weighted column.

        Raises:
            DataError: ``X`` lacks one of the fitted columns (the message lists the available ones).
        """
        if not hasattr(self, "columns_"):
            raise VLSelectError("this QualityScore is not fitted; call fit(ds) first (add_quality_column does)")
        n = n_rows(X)
        total = np.zeros(n)
        weight = np.zeros(n)
        for spec in self.columns_:
            if spec.weight == 0:
                continue
            p = percentile_rank(numeric_column(X, spec.column), self.reference_[spec.column])
            if spec.direction == "lower":
                p = 1.0 - p
            ok = ~np.isnan(p)
            total[ok] += spec.weight * p[ok]
            weight[ok] += spec.weight
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(weight > 0, total / weight, np.nan)
        out[~usable_rows(X, self.error_column)] = np.nan
        # the weighted mean of values in [0, 1] can leave it by an ulp
        return np.clip(out, 0.0, 1.0)

    def report(self) -> dict[str, Any]:
        """JSON-able description for the manifest and the card: columns, weights, directions, NaN counts."""
        if not hasattr(self, "columns_"):
            raise VLSelectError("this QualityScore is not fitted; call fit(ds) first")
        return {
            "source": "columns",
            "output_column": self.output_column,
            "columns": [{**asdict(s), "n_nan": self.n_nan_[s.column]} for s in self.columns_],
            "skipped": list(self.skipped_),
            "n_rows": self.n_rows_,
            "n_usable": self.n_usable_,
            "n_nan": self.n_nan_rows_,
        }


def percentile_rank(values: Any, reference: np.ndarray) -> np.ndarray:
    """Average-rank percentile of each value within ``reference``, in [0, 1].

    ``reference`` is the sorted non-NaN pool. A value equal to pool entries gets their average rank ``r`` in
    ``1..m`` and ``(r - 1) / (m - 1)``; a value between entries falls between their percentiles; values beyond the
    pool clip to 0 or 1. A one-value pool gives 0.5. NaN values, and every value when the pool is empty, give NaN.

    Example:
        >>> percentile_rank([1.0, 2.0, 2.0, 5.0, float("nan")], np.array([1.0, 2.0, 2.0, 5.0])).tolist()
        [0.0, 0.5, 0.5, 1.0, nan]
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    m = reference.shape[0]
    ok = ~np.isnan(values)
    if m == 0:
        return out
    if m == 1:
        out[ok] = 0.5
        return out
    below = np.searchsorted(reference, values[ok], side="left")
    at_or_below = np.searchsorted(reference, values[ok], side="right")
    rank = below + (at_or_below - below + 1) / 2.0
    out[ok] = np.clip((rank - 1.0) / (m - 1), 0.0, 1.0)
    return out


def quality_from_selector(selector: Any, ds: Any, *, error_column: str = "error") -> np.ndarray:
    """A trained selector's scores on ``ds`` as percentile ranks: the same [0, 1] scale as :class:`QualityScore`.

    Args:
        selector: a fitted :class:`selector.learned.LearnedSelector` (anything with ``score_samples(ds)``, higher
            is better, NaN for unscorable rows).
        ds: the pool; ranks are taken over its usable rows.
        error_column: rows with it set score NaN.

    Returns:
        (n,) float64 in [0, 1], higher is better; NaN where the selector gives NaN and for rows with ``error`` set.
    """
    raw = np.asarray(selector.score_samples(ds), dtype=np.float64).reshape(-1)
    n = n_rows(ds)
    if raw.shape[0] != n:
        raise DataError(f"the selector returned {raw.shape[0]} scores for {n} rows")
    usable = usable_rows(ds, error_column)
    out = percentile_rank(raw, np.sort(raw[usable & ~np.isnan(raw)]))
    out[~usable] = np.nan
    return out


def add_quality_column(ds: Any, quality: Any, *, column: str | None = None) -> Any:
    """``ds`` with a ``score_quality`` column (replacing one that exists).

    Args:
        ds: a ``datasets.Dataset``, a pandas DataFrame or a mapping of columns (not modified; a copy is returned).
        quality: a :class:`QualityScore` (fitted on ``ds`` first when it is not fitted), a fitted selector with
            ``score_samples`` (see :func:`quality_from_selector`), or an (n,) array of precomputed scores.
        column: the column name; default ``quality.output_column`` or ``"score_quality"``.

    Returns:
        The same kind of object as ``ds``, with the float64 column added.
    """
    if isinstance(quality, QualityScore):
        if not hasattr(quality, "columns_"):
            quality.fit(ds)
        scores = quality.score_samples(ds)
        column = column or quality.output_column
    elif hasattr(quality, "score_samples"):
        scores = quality_from_selector(quality, ds)
    else:
        scores = np.asarray(quality, dtype=np.float64).reshape(-1)
        if scores.shape[0] != n_rows(ds):
            raise DataError(f"quality has {scores.shape[0]} scores for {n_rows(ds)} rows")
    column = column or QUALITY_COLUMN
    if hasattr(ds, "add_column") and hasattr(ds, "column_names"):
        if column in ds.column_names:
            ds = ds.remove_columns(column)
        return ds.add_column(column, scores.tolist())
    if hasattr(ds, "iloc"):
        out = ds.copy()
        out[column] = scores
        return out
    if isinstance(ds, Mapping):
        return {**ds, column: scores}
    raise DataError(
        f"expected a datasets.Dataset, a pandas DataFrame or a mapping of columns, not {type(ds).__name__}"
    )


def metric_direction(column: str) -> str | None:
    """``"higher"``/``"lower"`` from the metric registry for a ``score_<metric>[_<part>]`` column, else None.

    The longest registered metric name that prefixes the column wins (``score_text_quality`` is the
    ``text_quality`` metric, not ``text``). ``score_<metric>`` takes the metric's ``higher_is_better``; a part
    ``score_<metric>_<part>`` only a direction the metric declares in ``part_higher_is_better = {part: bool}``
    (None otherwise: parts often point the other way). A metric instance renamed away from its registry key
    cannot be recognised (None).
    """
    if not column.startswith("score_"):
        return None
    from metrics.registry import available_metrics, metric_class

    rest = column[len("score_") :]
    for name in sorted(available_metrics(), key=len, reverse=True):
        if rest != name and not rest.startswith(name + "_"):
            continue
        try:
            cls = metric_class(name)
        except (ImportError, ConfigError) as exc:
            logger.debug("quality: cannot import metric %s for %s's direction: %s", name, column, exc)
            return None
        part = rest[len(name) + 1 :]
        if not part:
            return "higher" if getattr(cls, "higher_is_better", True) else "lower"
        # parts often point the other way from the main score (text_quality's repetition ratios, safety's
        # e-mail counts), so a part's direction comes only from an explicit declaration.
        parts = getattr(cls, "part_higher_is_better", None)
        if isinstance(parts, Mapping) and part in parts:
            return "higher" if parts[part] else "lower"
        return None
    return None


def _resolve_specs(columns: Any) -> tuple[list[QualityColumn], bool]:
    """The ``columns`` argument -> resolved specs, and whether absent columns may be skipped (the defaults)."""
    optional = columns is None
    if optional:
        items: list[Any] = [dict(d) for d in DEFAULT_QUALITY_COLUMNS]
    elif isinstance(columns, str):
        items = [columns]
    elif isinstance(columns, Mapping):
        items = []
        for col, value in columns.items():
            if isinstance(value, Mapping):
                items.append({"column": col, **value})
            elif isinstance(value, str):
                items.append({"column": col, "direction": value})
            else:
                items.append({"column": col, "weight": value})
    elif isinstance(columns, Sequence):
        items = list(columns)
    else:
        raise ConfigError(f"quality columns must be a mapping or a list, got {columns!r}")
    if not items:
        raise ConfigError("quality needs at least one column")
    specs, seen = [], set()
    for i, item in enumerate(items):
        spec = _spec(item, f"quality columns[{i}]")
        if spec.column in seen:
            raise ConfigError(f"quality column {spec.column!r} is listed twice")
        seen.add(spec.column)
        specs.append(spec)
    if not optional and not any(s.weight > 0 for s in specs):
        raise ConfigError("quality needs at least one column with a weight above 0")
    return specs, optional


def _spec(item: Any, where: str) -> QualityColumn:
    if isinstance(item, QualityColumn):
        return item
    if isinstance(item, str):
        item = {"column": item}
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where} must be a column name or a mapping with {', '.join(SPEC_KEYS)}, got {item!r}")
    unknown = sorted(str(k) for k in item if k not in SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; accepted keys: {', '.join(SPEC_KEYS)}")
    column = item.get("column")
    if not isinstance(column, str) or not column:
        raise ConfigError(f"{where} needs a column name, got {column!r}")
    if column.startswith("emb_"):
        raise ConfigError(f"quality column {column!r}: combine scalar score columns, not embedding vectors")
    weight = item.get("weight", 1.0)
    if weight is None:
        weight = 1.0
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
        raise ConfigError(f"quality column {column!r}: weight must be a number, got {weight!r}")
    weight = float(weight)
    if not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"quality column {column!r}: weight must be finite and >= 0, got {weight!r}")
    direction = item.get("direction")
    if direction is None:
        inferred = metric_direction(column)
        if inferred is None:
            logger.info("quality: no known direction for %s; using 'higher' (set direction: to change it)", column)
        return QualityColumn(column, weight, inferred or "higher", "metric" if inferred else "default")
    if direction not in DIRECTIONS:
        raise ConfigError(f"quality column {column!r}: direction must be 'higher' or 'lower', got {direction!r}")
    return QualityColumn(column, weight, direction, "given")
