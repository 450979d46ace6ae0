"""Filters: hard rules on columns, applied before ranking. A rule is a condition that a *kept* row satisfies.

A rule names one scalar column and one or more conditions, all of which a row must meet to pass:

==================  ============================================================================================
key                 a row passes when
==================  ============================================================================================
``min``             value ``>= min`` (NaN and None fail)
``max``             value ``<= max`` (NaN and None fail)
``min_quantile``    value ``>=`` the column's ``q``-quantile over the pool (NaN and None fail)
``max_quantile``    value ``<=`` the column's ``q``-quantile over the pool (NaN and None fail)
``is_null``         ``true``: the value is None or NaN; ``false``: it is neither
``keep_null``       ``true``: a None or NaN value passes this rule's numeric conditions (for a column that is
                    NaN by design where the test does not apply, e.g. ``score_perplexity_order`` under 3 words)
==================  ============================================================================================

YAML (one mapping per rule; these keys and no others)::

    filters:
      - {column: score_relevance, min: 0.3}
      - {column: check_exact_dup_of, is_null: true}
      - {column: score_perplexity, max_quantile: 0.95}

CLI (repeatable): ``--filter score_relevance:min=0.3 --filter check_exact_dup_of:is_null=true
--filter score_x:min_quantile=0.1,max=5``. Values are read as YAML scalars (``0.3``, ``1e-3``, ``true``).

Rules:

- **Pool.** Rules are evaluated on the *eligible* rows only: rows whose ``error`` is usable
  (:func:`selector.rows.usable_mask`) and, when given, ``eligible``. Other rows are neither passed, nor
  counted, nor given a filter reason (the selection gives them their own, e.g. ``error <kind>``).
- **Quantiles** are computed once per rule over the eligible rows' non-NaN values (numpy's linear
  interpolation), independently of the other rules, so the rule order never changes which rows pass. A column
  with no value in the pool has no quantile and every row fails that rule.
- **NaN and None** fail every numeric condition (unless the rule has ``keep_null: true``); for ``is_null`` both
  count as null.
- **Counts and reasons.** A row failing several rules is counted under *each* rule it fails
  (:meth:`FilterResult.counts`), and its reason ``filter:<rule>`` names the *first* failing rule in the order
  given (:attr:`FilterResult.reason`); all its failing rules are in :attr:`FilterResult.failed`.
- Only scalar columns: a vector column (``emb_*``, a list per row) is a ``ConfigError``; a column the data
  lacks is a ``DataError`` listing the available columns.

Example:
    >>> rules = parse_filters(["score_relevance:min=0.3", {"column": "check_exact_dup_of", "is_null": True}])
    >>> [str(r) for r in rules]
    ['score_relevance>=0.3', 'check_exact_dup_of is null']
    >>> res = apply_filters({"score_relevance": [0.9, 0.1, None], "check_exact_dup_of": [None, None, "a"]}, rules)
    >>> res.passed.tolist(), res.reason.tolist()
    ([True, False, False], ['', 'filter:score_relevance>=0.3', 'filter:score_relevance>=0.3'])
    >>> res.counts()
    {'score_relevance>=0.3': 2, 'check_exact_dup_of is null': 1}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from selector.errors import ConfigError, DataError
from selector.rows import column_array, usable_mask

#: The keys a rule accepts (YAML keys = dataclass fields = CLI keys).
RULE_KEYS = ("column", "min", "max", "min_quantile", "max_quantile", "is_null", "keep_null")
_CONDITIONS = RULE_KEYS[1:-1]
_CLI_FORM = "COLUMN:KEY=VALUE[,KEY=VALUE...] (e.g. score_relevance:min=0.3)"
_SCALAR_FEATURES = ("Value", "ClassLabel")


@dataclass(frozen=True)
class FilterRule:
    """One filter rule: the conditions a kept row's value in ``column`` satisfies (see the module docstring).

    Attributes:
        column: a scalar column (``score_*``, ``check_*``, ...).
        min: keep values ``>= min``.
        max: keep values ``<= max``.
        min_quantile: keep values ``>=`` the pool's quantile at this level, in [0, 1].
        max_quantile: keep values ``<=`` the pool's quantile at this level, in [0, 1].
        is_null: True keeps only null (None/NaN) values, False only non-null ones.
        keep_null: True lets null values pass the numeric conditions (by default they fail them).

    Raises:
        ConfigError: no column, no condition, a vector (``emb_*``) column, a non-number bound, a quantile outside
            [0, 1], ``min > max`` (or ``min_quantile > max_quantile``), or ``is_null: true`` with a numeric bound
            (no row could pass).

    Example:
        >>> str(FilterRule("score_x", min_quantile=0.1, max=5))
        'score_x>=quantile(0.1) and score_x<=5'
    """

    column: str
    min: float | None = None
    max: float | None = None
    min_quantile: float | None = None
    max_quantile: float | None = None
    is_null: bool | None = None
    keep_null: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column.strip():
            raise ConfigError(f"a filter rule needs a column name, got {self.column!r}")
        if self.column.startswith("emb_"):
            raise ConfigError(f"filter on {self.column!r}: filters take scalar columns, not embedding vectors")
        for key in ("min", "max", "min_quantile", "max_quantile"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, _number(value, f"filter on {self.column!r}: {key}"))
        for key in ("min_quantile", "max_quantile"):
            q = getattr(self, key)
            if q is not None and not 0.0 <= q <= 1.0:
                raise ConfigError(f"filter on {self.column!r}: {key} must be in [0, 1], got {q!r}")
        if self.is_null is not None and not isinstance(self.is_null, (bool, np.bool_)):
            raise ConfigError(f"filter on {self.column!r}: is_null must be true or false, got {self.is_null!r}")
        if all(getattr(self, key) is None for key in _CONDITIONS):
            raise ConfigError(f"filter on {self.column!r} has no condition; give one of {', '.join(_CONDITIONS)}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"filter on {self.column!r}: min {self.min!r} is above max {self.max!r}")
        if self.min_quantile is not None and self.max_quantile is not None and self.min_quantile > self.max_quantile:
            raise ConfigError(
                f"filter on {self.column!r}: min_quantile {self.min_quantile!r} is above "
                f"max_quantile {self.max_quantile!r}"
            )
        if self.is_null and self.has_numeric_condition:
            raise ConfigError(f"filter on {self.column!r}: is_null=true with a numeric bound keeps no row")
        if self.keep_null is not None:
            if not isinstance(self.keep_null, (bool, np.bool_)):
                raise ConfigError(
                    f"filter on {self.column!r}: keep_null must be true or false, got {self.keep_null!r}"
                )
            if self.keep_null and not self.has_numeric_condition:
                raise ConfigError(f"filter on {self.column!r}: keep_null=true needs min, max or a quantile")

    @property
    def has_numeric_condition(self) -> bool:
        """True when the rule compares values (min, max or a quantile), so the column must be numeric."""
        return any(getattr(self, key) is not None for key in ("min", "max", "min_quantile", "max_quantile"))

    def __str__(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"{self.column}>={_fmt(self.min)}")
        if self.min_quantile is not None:
            parts.append(f"{self.column}>=quantile({_fmt(self.min_quantile)})")
        if self.max is not None:
            parts.append(f"{self.column}<={_fmt(self.max)}")
        if self.max_quantile is not None:
            parts.append(f"{self.column}<=quantile({_fmt(self.max_quantile)})")
        if self.is_null is not None:
            parts.append(f"{self.column} is {'null' if self.is_null else 'not null'}")
        text = " and ".join(parts)
        return f"{text} or null" if self.keep_null else text

    def to_dict(self) -> dict[str, Any]:
        """The YAML form, only the keys that are set (for manifests and resolved configs)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def to_cli(self) -> str:
        """The ``--filter`` form, which :func:`parse_filter` reads back to an equal rule."""
        conditions = self.to_dict()
        column = conditions.pop("column")
        items = (f"{k}={str(v).lower() if k in ('is_null', 'keep_null') else _fmt(v)}" for k, v in conditions.items())
        return column + ":" + ",".join(items)

    def evaluate(self, values: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, dict[str, float | None]]:
        """Which rows pass this rule.

        Args:
            values: (n,) object array of the column's values (None/NaN for missing).
            pool: (n,) bool, the rows quantiles are computed over.

        Returns:
            ``(passed, bounds)``: (n,) bool, and the resolved quantile bounds (None when the pool has no value).
        """
        null = _null_mask(values)
        passed = np.ones(values.shape[0], dtype=bool)
        bounds: dict[str, float | None] = {}
        if self.is_null is not None:
            passed &= null if self.is_null else ~null
        if not self.has_numeric_condition:
            return passed, bounds
        numbers = _numeric(values, null, self.column)
        finite = ~np.isnan(numbers)
        # NaN fails every numeric condition: comparisons run `where=finite` into a False-initialised output.
        reference = numbers[pool & finite]
        for key, op in (("min", np.greater_equal), ("max", np.less_equal)):
            bound = getattr(self, key)
            if bound is not None:
                passed &= op(numbers, bound, where=finite, out=np.zeros_like(passed))
            q = getattr(self, f"{key}_quantile")
            if q is not None:
                if reference.size == 0:
                    bounds[f"{key}_quantile"] = None
                    passed[:] = False
                    continue
                threshold = float(np.quantile(reference, q))
                bounds[f"{key}_quantile"] = threshold
                passed &= op(numbers, threshold, where=finite, out=np.zeros_like(passed))
        if self.keep_null:
            passed |= null  # null values skip the numeric conditions (is_null can't be set with them)
        return passed, bounds


@dataclass
class FilterResult:
    """What :func:`apply_filters` found, per row (input order) and per rule.

    Attributes:
        rules: the rules, in the order given.
        passed: (n,) bool, True where the row is eligible and satisfies every rule.
        eligible: (n,) bool, the rows the rules were evaluated on (usable ``error`` and the caller's mask).
        failed: (n, k) bool, ``failed[i, j]`` when eligible row ``i`` fails rule ``j``.
        first_failed: (n,) int64 index of the first rule row ``i`` fails, -1 when it fails none or is not eligible.
        reason: (n,) str, ``"filter:<rule>"`` naming the first failing rule, ``""`` otherwise.
        bounds: per rule, the resolved quantile thresholds (``{"min_quantile": 0.42}``; None for an empty pool).
    """

    rules: list[FilterRule]
    passed: np.ndarray
    eligible: np.ndarray
    failed: np.ndarray
    first_failed: np.ndarray
    reason: np.ndarray
    bounds: list[dict[str, float | None]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.passed.shape[0])

    @property
    def filtered(self) -> np.ndarray:
        """(n,) bool: eligible rows that fail at least one rule."""
        return self.eligible & ~self.passed

    def counts(self) -> dict[str, int]:
        """Rows failing each rule, keyed by ``str(rule)``; a row failing several rules counts under each."""
        per_rule = self.failed.sum(axis=0) if self.failed.size else np.zeros(len(self.rules), dtype=np.int64)
        out: dict[str, int] = {}
        for rule, count in zip(self.rules, per_rule):
            out[str(rule)] = out.get(str(rule), 0) + int(count)
        return out

    def report(self) -> dict[str, Any]:
        """JSON-able summary for the manifest and the card.

        ``n_filtered`` counts rows failing any rule (each once); ``rules[j].n_failed`` counts every row failing
        rule ``j`` (a row failing several rules appears under each); ``rules[j].n_first`` counts the rows whose
        reason names rule ``j``.
        """
        per_rule = self.failed.sum(axis=0) if self.failed.size else np.zeros(len(self.rules), dtype=np.int64)
        first = np.bincount(self.first_failed[self.first_failed >= 0], minlength=len(self.rules))
        return {
            "n_rows": len(self),
            "n_eligible": int(self.eligible.sum()),
            "n_passed": int(self.passed.sum()),
            "n_filtered": int(self.filtered.sum()),
            "rules": [
                {
                    "rule": str(rule),
                    **rule.to_dict(),
                    **({"resolved": bounds} if bounds else {}),
                    "n_failed": int(per_rule[j]),
                    "n_first": int(first[j]),
                }
                for j, (rule, bounds) in enumerate(zip(self.rules, self.bounds))
            ],
        }


def parse_filter(text: str) -> FilterRule:
    """A rule from its CLI form ``COLUMN:KEY=VALUE[,KEY=VALUE...]``.

    Values are YAML scalars: ``score_relevance:min=0.3``, ``check_exact_dup_of:is_null=true``,
    ``score_x:min_quantile=0.1,max=5``.

    Raises:
        ConfigError: one line naming the malformed text and the expected form, or the rule's own error.
    """
    if isinstance(text, FilterRule):
        return text
    if not isinstance(text, str):
        raise ConfigError(f"filter must be a string {_CLI_FORM}, got {text!r}")
    column, sep, rest = text.strip().partition(":")
    column = column.strip()
    if not sep or not column or not rest.strip():
        raise ConfigError(f"filter {text!r}: expected {_CLI_FORM}")
    conditions: dict[str, Any] = {}
    for item in rest.split(","):
        key, eq, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq or not key or not raw:
            raise ConfigError(f"filter {text!r}: {item.strip()!r} is not KEY=VALUE; expected {_CLI_FORM}")
        if key in conditions:
            raise ConfigError(f"filter {text!r}: {key!r} is given twice")
        conditions[key] = _yaml_scalar(raw)
    return _rule_from_mapping({"column": column, **conditions}, f"filter {text!r}")


def parse_filters(items: Iterable[str | Mapping[str, Any] | FilterRule] | None) -> list[FilterRule]:
    """Rules from a YAML ``filters`` list and/or repeated ``--filter`` strings (None or empty: no rules).

    Raises:
        ConfigError: an item that is neither a mapping nor a string, an unknown key (the message lists the
            accepted keys), or an invalid rule; the message names the item's position.
    """
    if items is None:
        return []
    if isinstance(items, (str, Mapping, FilterRule)):
        items = [items]
    rules = []
    for i, item in enumerate(items):
        if isinstance(item, FilterRule):
            rules.append(item)
        elif isinstance(item, str):
            rules.append(parse_filter(item))
        elif isinstance(item, Mapping):
            rules.append(_rule_from_mapping(item, f"filters[{i}]"))
        else:
            raise ConfigError(f"filters[{i}] must be a mapping {{column: ..., min: ...}} or a string, got {item!r}")
    return rules


def apply_filters(
    data: Any,
    rules: Iterable[str | Mapping[str, Any] | FilterRule] | None,
    *,
    eligible: Iterable[bool] | np.ndarray | None = None,
    error_column: str = "error",
) -> FilterResult:
    """Evaluate ``rules`` on every row of ``data`` (see the module docstring for the semantics).

    Args:
        data: a ``datasets.Dataset``, a pandas DataFrame or a mapping of column -> values.
        rules: anything :func:`parse_filters` reads.
        eligible: (n,) bool, rows to evaluate (e.g. rows not already excluded); rows with ``error`` set are
            never eligible. Quantiles are computed over the eligible rows.
        error_column: the error column, when ``data`` has one.

    Returns:
        A :class:`FilterResult`; ``result.passed`` is the mask of kept rows.

    Raises:
        DataError: a rule names a column ``data`` lacks (the message lists the available ones), a numeric rule
            on a non-numeric column, or an ``eligible`` mask of the wrong length.
        ConfigError: a rule on a vector column, or an invalid rule.
    """
    rules = parse_filters(rules)
    names = column_names(data)
    n = n_rows(data)
    pool = usable_rows(data, error_column)
    if eligible is not None:
        mask = np.asarray(eligible, dtype=bool).reshape(-1)
        if mask.shape[0] != n:
            raise DataError(f"eligible has {mask.shape[0]} entries for {n} rows")
        pool = pool & mask
    for rule in rules:
        if rule.column not in names:
            raise DataError(f"filter {str(rule)!r}: no column {rule.column!r}; available: {', '.join(names)}")
    failed = np.zeros((n, len(rules)), dtype=bool)
    bounds = []
    for j, rule in enumerate(rules):
        ok, resolved = rule.evaluate(scalar_column(data, rule.column), pool)
        failed[:, j] = pool & ~ok
        bounds.append(resolved)
    any_failed = failed.any(axis=1)
    first_failed = np.where(any_failed, failed.argmax(axis=1) if rules else 0, -1).astype(np.int64)
    labels = np.array([f"filter:{rule}" for rule in rules] + [""], dtype=object)
    return FilterResult(
        rules=rules,
        passed=pool & ~any_failed,
        eligible=pool,
        failed=failed,
        first_failed=first_failed,
        reason=labels[first_failed],
        bounds=bounds,
    )


# Column access shared with selector.quality: a Dataset, a DataFrame or a mapping of columns.


def column_names(data: Any) -> list[str]:
    """The column names of a ``datasets.Dataset``, a DataFrame or a mapping."""
    names = getattr(data, "column_names", None)
    if names is None:
        names = getattr(data, "columns", None)
    if names is None:
        if not isinstance(data, Mapping):
            raise DataError(
                f"expected a datasets.Dataset, a pandas DataFrame or a mapping of columns, not {type(data).__name__}"
            )
        names = data.keys()
    return [str(c) for c in names]


def n_rows(data: Any) -> int:
    """Row count; a mapping's columns must all have the same length."""
    if isinstance(data, Mapping):
        lengths = {len(v) for v in data.values()}
        if len(lengths) > 1:
            raise DataError(f"columns have different lengths: {sorted(lengths)}")
        return lengths.pop() if lengths else 0
    return len(data)


def usable_rows(data: Any, error_column: str = "error") -> np.ndarray:
    """(n,) bool: rows whose ``error`` is usable (all rows when there is no error column)."""
    n = n_rows(data)
    if error_column not in column_names(data):
        return np.ones(n, dtype=bool)
    return usable_mask(column_array(data, error_column, dtype=object), n)


def scalar_column(data: Any, column: str) -> np.ndarray:
    """(n,) object array of a scalar column's values (None/NaN where missing).

    Raises:
        DataError: the column does not exist (the message lists the available ones).
        ConfigError: the column holds vectors or other non-scalar values.
    """
    names = column_names(data)
    if column not in names:
        raise DataError(f"no column {column!r}; available: {', '.join(names)}")
    features = getattr(data, "features", None)
    if features is not None and column in features:
        if type(features[column]).__name__ not in _SCALAR_FEATURES:
            raise ConfigError(f"column {column!r} is not a scalar column ({type(features[column]).__name__})")
        return column_array(data, column, dtype=object)
    values = data[column]
    values = values.to_numpy() if hasattr(values, "to_numpy") else list(values)
    if any(isinstance(v, (list, tuple, dict, np.ndarray)) for v in values):
        raise ConfigError(f"column {column!r} is not a scalar column (it holds vectors)")
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def numeric_column(data: Any, column: str) -> np.ndarray:
    """(n,) float64 values of a scalar numeric column; None becomes NaN, bools 0/1.

    Raises:
        DataError: missing or non-numeric column. ConfigError: a vector column.
    """
    values = scalar_column(data, column)
    return _numeric(values, _null_mask(values), column)


def _null_mask(values: np.ndarray) -> np.ndarray:
    return np.fromiter(
        (v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)) for v in values),
        dtype=bool,
        count=values.shape[0],
    )


def _numeric(values: np.ndarray, null: np.ndarray, column: str) -> np.ndarray:
    out = np.full(values.shape[0], np.nan)
    present = values[~null]
    bad = next((v for v in present if isinstance(v, (str, bytes)) or not np.isscalar(v)), None)
    if bad is not None:
        raise DataError(f"column {column!r} is not numeric (it holds {bad!r}); min/max/quantile need numbers")
    out[~null] = np.asarray(present, dtype=np.float64)
    return out


def _rule_from_mapping(item: Mapping[str, Any], where: str) -> FilterRule:
    unknown = sorted(str(k) for k in item if k not in RULE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; accepted keys: {', '.join(RULE_KEYS)}")
    if "column" not in item:
        raise ConfigError(f"{where}: a rule needs a 'column'")
    try:
        return FilterRule(**{str(k): v for k, v in item.items()})
    except ConfigError as exc:
        # "filter on 'col': ..." would repeat what `where` already names
        message = str(exc).removeprefix(f"filter on {item['column']!r}: ")
        raise ConfigError(f"{where}: {message}") from None


def _yaml_scalar(raw: str) -> Any:
    import yaml

    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        # YAML 1.1 reads "1e-3" as a string; a plain float() reads it, and "inf".
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ConfigError(f"{where} must be a number, got NaN")
    return value


def _fmt(value: float) -> str:
    # shortest exact form: 5 not 5.0, 0.3 not 0.30000000000000004, 1e-10 as is
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))
