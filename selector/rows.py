"""The row rules: one home for how budgets, errors, missing clusters, ids and seeds are read.

Every entry point (Python API, CLI, YAML pipeline, learned selector, prototypes, metrics) imports these
functions; none re-implements them. The rules, each pinned by ``tests/test_rows.py``:

- **Budget.** An int count (``200``), a float that is a whole number above 1 (``200.0`` is 200 rows), a
  fraction in (0, 1] of the pool (``0.3``; ``1.0`` is the whole pool), or a percent string (``"30%"`` is 0.3).
  A fraction rounds half up (0.5 of 5 rows is 3). A budget of 0 or below is an error.
- **Error.** ``error`` of None, NaN or ``""`` means the row is usable; anything else (a message, ``True``)
  means it is not.
- **Missing cluster.** A cluster id of ``-1``, None or NaN means the row has no cluster: it is never selected
  (reason ``missing <column>``) and is not counted as a cluster.
- **Order.** Randomised steps see rows ordered by a stable blake2b hash of ``id`` (ties by the id itself), so a
  permuted input gives the same result; equal scores break ties by the lexicographic id rank.
- **Seed.** ``random_state`` is an int (or None, read as 0); numpy generators come from :func:`rng`.

Example:
    >>> parse_budget("30%"), parse_budget("200.0"), resolve_budget(0.5, 5)
    (0.3, 200, 3)
    >>> usable_mask([None, float("nan"), "", "missing_image: x.jpg"]).tolist()
    [True, True, True, False]
    >>> cluster_labels([3, -1, None, 3.0, 7])[0].tolist()
    [0, -1, -1, 0, 1]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from selector.errors import ConfigError, DataError

#: The value a missing cluster id is stored as in an int cluster column.
MISSING_CLUSTER = -1

_BUDGET_HELP = "a count (200), a fraction in (0, 1] (0.3) or a percent (30%)"


# Budget.


def parse_budget(value: Any, *, name: str = "budget") -> int | float:
    """Read a user's budget from the API, a CLI flag or YAML into an int count or a fraction in (0, 1].

    Args:
        value: ``200``, ``200.0``, ``"200"``, ``0.3``, ``"0.3"``, ``"30%"``, ``1.0`` (the whole pool).
        name: how the value is named in the error (``"--budget"``, ``"budget"``).

    Returns:
        An int count (``>= 1``) or a float fraction in (0, 1].

    Raises:
        ConfigError: for a budget of 0 or below, a non-whole count above 1 (``2.5``), a percent above 100, or
            anything that is not a number.
    """
    raw = value
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{name}: expected {_BUDGET_HELP}, got {raw!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.endswith("%"):
                pct = float(text[:-1])
                if not math.isfinite(pct) or not (0 < pct <= 100):
                    raise ConfigError(f"{name}: a percent must be in (0%, 100%], got {raw!r}")
                return pct / 100.0
            value = int(text) if text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise ConfigError(f"{name}: expected {_BUDGET_HELP}, got {raw!r}") from None
    if isinstance(value, (int, np.integer)):
        if value <= 0:
            raise ConfigError(f"{name}: must be above 0, got {raw!r}")
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{name}: must be above 0, got {raw!r}")
        if value <= 1:
            return value
        if not value.is_integer():
            raise ConfigError(f"{name}: {raw!r} is neither a whole count nor a fraction in (0, 1]")
        return int(value)
    raise ConfigError(f"{name}: expected {_BUDGET_HELP}, got {raw!r}")


def resolve_budget(budget: Any, n: int, *, name: str = "budget") -> int:
    """A budget (anything :func:`parse_budget` reads) of a pool of ``n`` rows -> a row count.

    Fractions round half up (0.5 of 5 rows is 3). The count may exceed ``n``; callers cap it at the eligible
    rows and warn.
    """
    budget = parse_budget(budget, name=name)
    if isinstance(budget, int):
        return budget
    return int(math.floor(budget * n + 0.5))


# Errors.


def is_usable_error(error: Any) -> bool:
    """True when an ``error`` value means "no error": None, NaN or ``""`` (``False`` too)."""
    if error is None or error is False or (isinstance(error, (bool, np.bool_)) and not error):
        return True
    if isinstance(error, (float, np.floating)) and math.isnan(error):
        return True
    return isinstance(error, str) and error == ""


def usable_mask(errors: Iterable[Any] | None, n: int | None = None) -> np.ndarray:
    """(n,) bool: True where the row's ``error`` means usable (see :func:`is_usable_error`).

    Args:
        errors: the ``error`` column (strings, None, NaN, bools), or None for "no row has an error".
        n: the row count; required when ``errors`` is None, checked against ``len(errors)`` otherwise.
    """
    if errors is None:
        if n is None:
            raise ValueError("usable_mask(None) needs n")
        return np.ones(n, dtype=bool)
    values = list(errors)
    if n is not None and len(values) != n:
        raise DataError(f"error column has {len(values)} entries for {n} rows")
    return np.fromiter((is_usable_error(e) for e in values), dtype=bool, count=len(values))


def error_kind(error: Any) -> str | None:
    """The kind of an error value (``"missing_image: x.jpg"`` -> ``"missing_image"``), None when usable."""
    if is_usable_error(error):
        return None
    if error is True or isinstance(error, np.bool_):
        return "error"
    return str(error).split(":", 1)[0].strip() or "error"


# Missing clusters.


def is_missing_cluster(value: Any) -> bool:
    """True for a cluster id of -1, None or NaN."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value) or value == MISSING_CLUSTER
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value) == MISSING_CLUSTER
    return False


def cluster_labels(clusters: Iterable[Any], n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Compact cluster ids ``0..k-1`` (in sorted order of the given ids) and a mask of rows without a cluster.

    Returns:
        ``(labels, missing)``: (n,) int64 labels with :data:`MISSING_CLUSTER` where missing, and (n,) bool.

    Raises:
        DataError: on a length mismatch or non-integer float ids.
    """
    values = list(clusters)
    if n is not None and len(values) != n:
        raise DataError(f"clusters has {len(values)} entries for {n} rows")
    n = len(values)
    missing = np.fromiter((is_missing_cluster(v) for v in values), dtype=bool, count=n)
    labels = np.full(n, MISSING_CLUSTER, dtype=np.int64)
    present = [v for v, m in zip(values, missing) if not m]
    if present:
        arr = np.asarray(present)
        if arr.dtype.kind == "f":
            if not np.all(arr == np.round(arr)):
                raise DataError("cluster ids must be integers or strings")
            arr = arr.astype(np.int64)
        _, inverse = np.unique(arr, return_inverse=True)
        labels[~missing] = inverse.reshape(-1)
    return labels, missing


def n_clusters_present(clusters: Iterable[Any]) -> int:
    """How many distinct clusters a column holds, not counting missing ones."""
    labels, missing = cluster_labels(clusters)
    return int(np.unique(labels[~missing]).size)


# Ids and order.


def as_ids(ids: Iterable[Any] | None, n: int) -> np.ndarray:
    """(n,) str ids, checked unique and present; ``0..n-1`` as strings when ``ids`` is None."""
    if ids is None:
        return np.array([str(i) for i in range(n)])
    values = list(ids)
    if len(values) != n:
        raise DataError(f"ids has {len(values)} entries for {n} rows")
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise DataError(f"{len(missing)} rows have no id (first at row {missing[0]})")
    arr = np.array([str(v) for v in values]) if n else np.zeros(0, dtype=str)
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.size != n:
        dupes = uniq[counts > 1]
        raise DataError(f"ids must be unique; {dupes.size} ids repeat, e.g. {dupes[0]!r}")
    return arr


def stable_hash(ids: Sequence[Any]) -> np.ndarray:
    """(n,) uint64 blake2b hash of each id's UTF-8 bytes: the same on every machine and Python process."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(str(i).encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
            for i in ids
        ),
        dtype=np.uint64,
        count=len(ids),
    )


def hash_order(ids: Sequence[Any]) -> np.ndarray:
    """Indices that put rows in stable-hash order of their ids (ties by the id string): permutation invariant."""
    ids = [str(i) for i in ids]
    if not ids:
        return np.zeros(0, dtype=np.int64)
    return np.lexsort((np.array(ids), stable_hash(ids))).astype(np.int64)


def id_ranks(ids: Sequence[Any]) -> np.ndarray:
    """(n,) int64 lexicographic rank of each id (0 = smallest), the tie-breaker for equal scores."""
    ids = np.asarray([str(i) for i in ids]) if len(ids) else np.zeros(0, dtype=str)
    order = np.argsort(ids, kind="stable")
    ranks = np.empty(ids.shape[0], dtype=np.int64)
    ranks[order] = np.arange(ids.shape[0])
    return ranks


def pool_digest(ids: Iterable[Any]) -> str:
    """sha256 of the sorted ids: names a pool independently of row order."""
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode("utf-8")).hexdigest()


# Seeds.


def check_seed(random_state: Any, *, name: str = "random_state") -> int:
    """An int seed (None reads as 0); anything else is a ConfigError."""
    if random_state is None:
        return 0
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise ConfigError(f"{name} must be an int seed, got {random_state!r}")
    return int(random_state)


def seed_from(random_state: Any) -> int:
    """An int seed from ``random_state`` (int, None, ``np.random.Generator`` or ``RandomState``), as scikit-learn
    reads it: None draws a fresh seed, a generator gives its next draw.

    The estimators in :mod:`selector.cluster` and :mod:`selector.prototypes` use this (scikit-learn's convention);
    the selection strategies use :func:`check_seed`, where None is the fixed seed 0 so a run repeats by default.
    """
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0] % (2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, (bool, float)) or not isinstance(random_state, (int, np.integer)):
        raise ConfigError(f"random_state must be an int or None, got {random_state!r}")
    return int(random_state) % (2**31 - 1)


def rng(random_state: Any) -> np.random.Generator:
    """A numpy Generator from an int seed (see :func:`check_seed`)."""
    return np.random.default_rng(check_seed(random_state))


# Columns.


def column_array(ds: Any, column: str, dtype: Any = np.float64) -> np.ndarray:
    """A dataset column (``datasets.Dataset``, DataFrame or mapping) as a numpy array; None becomes NaN.

    Vector columns (``emb_*``) come back as a 2-D array; a None or empty vector becomes a NaN row. Raises
    ``DataError`` naming the available columns when ``column`` does not exist, and when a vector column's rows
    differ in length.

    Args:
        ds: the rows.
        column: the column name.
        dtype: the numeric dtype to convert to; None keeps the stored values (numbers and vectors as numeric
            arrays, strings and None as an object array), for code that reads ``id`` and ``error`` too.
    """
    # `is None` tests, not `or`: a DataFrame's `columns` Index has no truth value.
    names = getattr(ds, "column_names", None)
    if names is None:
        names = getattr(ds, "columns", None)
    names = list(ds.keys() if names is None else names)
    if column not in names:
        raise DataError(f"no column {column!r}; available: {', '.join(map(str, names))}")
    if hasattr(ds, "select_columns") and hasattr(ds, "with_format"):
        # select_columns(...)[:] gives one numpy array (not a lazy Column read row by row) and honours the
        # index mapping that `select` / `shuffle` leave on a Dataset.
        values = ds.select_columns([column]).with_format("numpy")[:][column]
    else:
        values = ds[column]
        values = values.to_numpy() if hasattr(values, "to_numpy") else values
    if not isinstance(values, np.ndarray):
        values = _object_array(values)
    if values.dtype.kind in "US":
        values = values.astype(object)
    if values.dtype == object:
        if any(isinstance(v, (list, tuple, np.ndarray)) for v in values):
            return _stack_vectors(values, column, dtype)
        if dtype is None:
            return values
        values = np.array([np.nan if v is None else v for v in values], dtype=object)
    try:
        return values if dtype is None else values.astype(dtype, copy=False)
    except (TypeError, ValueError):
        raise DataError(f"column {column!r} holds values that are not numbers") from None


def embedding_matrix(ds: Any, column: str) -> np.ndarray:
    """An ``emb_*`` column as an (n, d) float32 matrix; None or empty entries become NaN rows (= missing)."""
    matrix = column_array(ds, column, dtype=None)
    if matrix.ndim == 1 and matrix.size == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if matrix.ndim != 2:
        raise DataError(f"column {column!r} holds scalar values, expected one vector per row")
    return np.ascontiguousarray(matrix, dtype=np.float32)


def _object_array(values: Iterable[Any]) -> np.ndarray:
    # Filled one by one: np.asarray would turn equal-length vectors into a 2-D object array.
    values = list(values)
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def _stack_vectors(values: np.ndarray, column: str, dtype: Any) -> np.ndarray:
    rows = [None if v is None else np.asarray(v) for v in values]
    present = [r for r in rows if r is not None and r.size]
    shapes = {r.shape for r in present}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise DataError(f"column {column!r} is not a vector column (row shapes: {sorted(shapes)[:3]})")
    if dtype is None:
        dtype = np.result_type(*(r.dtype for r in present[:1]), np.float32)
    out = np.full((len(rows), present[0].shape[0]), np.nan, dtype=dtype)
    for i, r in enumerate(rows):
        if r is not None and r.size:
            out[i] = r
    return out
