"""Feature building for the learned selector: which columns it reads and how they become model inputs.

:class:`FeatureTable` reads columns from whatever the user passes (a ``datasets.Dataset``, a pandas DataFrame or
a mapping of columns) through the shared readers of :mod:`selector.rows`. :class:`FeatureSpec` is fitted on the
pool and saved with the model:

* every ``score_*`` column (or the ones named in ``score_columns``) is standardised with the pool's mean and
  standard deviation and winsorised at +-``clip_std`` standard deviations, so one extreme row (a 50k-token
  answer) cannot dominate the scores;
* every ``emb_*`` column (or the ones named in ``embedding_columns``) is reduced by one PCA fitted on the
  pool (``n_components=6`` as upstream InstructionGPT-4) and whitened, so each component has unit variance
  like the scores;
* NaN policy: a missing score or a NaN embedding vector is replaced by the pool mean (0 after
  standardisation); a row whose every feature is missing, and a row whose ``error`` is set (the rule of
  :func:`selector.rows.usable_mask`), is not usable: the selector scores it NaN and never selects it.

Example:
    >>> import numpy as np
    >>> table = FeatureTable({"id": ["a", "b", "c"], "score_x": [1.0, 2.0, np.nan], "error": [None, "", "bad"]})
    >>> spec = FeatureSpec.fit(table, score_columns=None, embedding_columns=None, n_components=6, clip_std=6.0,
    ...                        rows=np.array([0, 1]))
    >>> scores, embeddings, usable = spec.transform(table)
    >>> scores[:, 0].tolist(), usable.tolist()
    ([-1.0, 1.0, 0.0], [True, True, False])
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from selector.errors import DataError
from selector.rows import column_array, embedding_matrix, usable_mask

logger = logging.getLogger(__name__)

_NUMERIC_DTYPES = frozenset(
    ["bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
)


class FeatureTable:
    """Column access, with a per-column cache, over a ``datasets.Dataset``, a pandas DataFrame or a mapping.

    Args:
        data: the rows. A ``Dataset`` is read through its index mapping (``select`` / ``shuffle`` are honoured).

    Raises:
        DataError: ``data`` is none of the three kinds, or a mapping's columns differ in length.
    """

    def __init__(self, data: Any):
        self.data = data
        self._cache: dict[str, np.ndarray] = {}
        if hasattr(data, "column_names") and hasattr(data, "with_format"):
            self.kind = "dataset"
            self.columns = list(data.column_names)
            self._n = len(data)
        elif hasattr(data, "columns") and hasattr(data, "iloc"):
            self.kind = "frame"
            self.columns = [str(c) for c in data.columns]
            self._n = len(data)
        elif isinstance(data, Mapping):
            self.kind = "mapping"
            self.columns = list(data)
            lengths = {len(v) for v in data.values()}
            if len(lengths) > 1:
                raise DataError(f"columns have different lengths: {sorted(lengths)}")
            self._n = lengths.pop() if lengths else 0
        else:
            raise DataError(
                f"X must be a datasets.Dataset, a pandas DataFrame or a mapping of columns, not {type(data).__name__}"
            )

    def __len__(self) -> int:
        return self._n

    def require(self, columns: Sequence[str]) -> None:
        """Raise a ``DataError`` naming every column of ``columns`` the data lacks."""
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise DataError(
                f"the selector needs column(s) missing from the data: {', '.join(missing)}; "
                "score the data with the same metrics (vlselect score) before using this selector"
            )

    def is_numeric(self, column: str) -> bool:
        """True for a column of one number per row (a candidate ``score_*`` feature)."""
        if self.kind == "dataset":
            return getattr(self.data.features[column], "dtype", "") in _NUMERIC_DTYPES
        values = np.asarray(self.data[column])
        return values.ndim == 1 and values.dtype.kind in "fiub"

    def scores(self, column: str) -> np.ndarray:
        """(n,) float64 values of a score column; None is NaN."""
        if column not in self._cache:
            try:
                values = column_array(self.data, column, np.float64)
            except DataError as exc:
                raise DataError(f"score column {column!r} is not numeric ({exc})") from None
            if values.ndim != 1:
                raise DataError(f"score column {column!r} must hold one number per row, got shape {values.shape}")
            self._cache[column] = values
        return self._cache[column]

    def embeddings(self, column: str) -> np.ndarray:
        """(n, d) float32 vectors of an embedding column; a None (missing) vector is a NaN row."""
        if column not in self._cache:
            matrix = embedding_matrix(self.data, column)
            if len(self) and matrix.ndim == 2 and matrix.shape[1] == 0:
                raise DataError(f"embedding column {column!r} holds no vector")
            self._cache[column] = matrix
        return self._cache[column]

    def error_mask(self) -> np.ndarray:
        """(n,) bool: rows whose ``error`` is set (not usable; see :func:`selector.rows.usable_mask`)."""
        if "error" not in self.columns:
            return np.zeros(len(self), dtype=bool)
        return ~usable_mask(column_array(self.data, "error", dtype=None), len(self))

    def ids(self) -> np.ndarray:
        """(n,) str ids; zero-padded row numbers when the data has no ``id`` column."""
        if "id" not in self.columns:
            return np.array([f"{i:012d}" for i in range(len(self))])
        return np.array([str(v) for v in column_array(self.data, "id", dtype=None)])


@dataclass
class FeatureSpec:
    """How raw columns become model inputs; fitted on the pool, saved in ``config.json``.

    Attributes:
        score_columns: ``score_*`` columns, one token each, in this order.
        score_mean: pool mean of each score column (NaN ignored).
        score_std: pool standard deviation of each score column (1.0 where the column is constant).
        clip_std: standardised scores are clipped to ``[-clip_std, clip_std]``.
        embedding_columns: ``emb_*`` columns, one token each, in this order.
        embedding_dims: the raw dimension of each embedding column.
        n_components: PCA components actually kept for each embedding column (``min(asked, n - 1, dim)``).
        pca: per embedding column ``{"mean": (d,), "components": (k, d), "scale": (k,)}`` arrays; stored in
            ``model.safetensors``, not in JSON.
    """

    score_columns: list[str] = field(default_factory=list)
    score_mean: list[float] = field(default_factory=list)
    score_std: list[float] = field(default_factory=list)
    clip_std: float = 6.0
    embedding_columns: list[str] = field(default_factory=list)
    embedding_dims: list[int] = field(default_factory=list)
    n_components: list[int] = field(default_factory=list)
    pca: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def columns(self) -> list[str]:
        """Every input column the spec reads."""
        return [*self.score_columns, *self.embedding_columns]

    @property
    def metrics(self) -> list[str]:
        """Metric instance names behind the columns (``score_clip`` -> ``clip``, ``emb_dinov2`` -> ``dinov2``)."""
        return [c.split("_", 1)[1] for c in self.columns]

    def to_json(self) -> dict[str, Any]:
        """The JSON part of the spec (everything but the PCA arrays, which go to safetensors)."""
        out = asdict(self)
        out.pop("pca")
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> FeatureSpec:
        """Rebuild a spec from :meth:`to_json`'s output and the tensors of :meth:`tensors`."""
        spec = cls(**{k: v for k, v in data.items() if k != "pca"})
        for col in spec.embedding_columns:
            spec.pca[col] = {part: tensors[f"pca.{col}.{part}"] for part in ("mean", "components", "scale")}
        return spec

    def tensors(self) -> dict[str, np.ndarray]:
        """The PCA arrays, named ``pca.<column>.<mean|components|scale>``."""
        return {f"pca.{col}.{part}": arr for col, parts in self.pca.items() for part, arr in parts.items()}

    @classmethod
    def fit(
        cls,
        table: FeatureTable,
        *,
        score_columns: Sequence[str] | None,
        embedding_columns: Sequence[str] | None,
        n_components: int,
        clip_std: float,
        rows: np.ndarray,
    ) -> FeatureSpec:
        """Fit standardisation and PCA on ``rows`` (indices of usable pool rows) of ``table``.

        Columns chosen automatically (``None``) that carry no information on ``rows`` (no finite value, a
        constant, fewer than 2 finite vectors) are skipped with a warning; columns named explicitly raise.

        Raises:
            DataError: a named column is missing or empty, or no usable feature column is left.
        """
        explicit_scores = score_columns is not None
        explicit_embs = embedding_columns is not None
        if score_columns is None:
            score_columns = [c for c in table.columns if c.startswith("score_") and table.is_numeric(c)]
        if embedding_columns is None:
            embedding_columns = [c for c in table.columns if c.startswith("emb_")]
        table.require([*score_columns, *embedding_columns])
        spec = cls(clip_std=float(clip_std))
        for col in score_columns:
            values = table.scores(col)[rows]
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                if explicit_scores:
                    raise DataError(f"score column {col!r} has no finite value in the rows used for fitting")
                logger.warning("skipping %s: no finite value in the pool", col)
                continue
            std = float(finite.std())
            if not std > 0:
                if not explicit_scores:
                    logger.warning("skipping %s: constant over the pool", col)
                    continue
                std = 1.0
            spec.score_columns.append(col)
            spec.score_mean.append(float(finite.mean()))
            spec.score_std.append(std)
        for col in embedding_columns:
            matrix = table.embeddings(col)[rows]
            finite = np.isfinite(matrix).all(axis=1)
            if finite.sum() < 2:
                if explicit_embs:
                    raise DataError(f"embedding column {col!r} has fewer than 2 finite vectors in the fitting rows")
                logger.warning("skipping %s: fewer than 2 finite vectors in the pool", col)
                continue
            parts = fit_pca(matrix[finite], n_components)
            spec.embedding_columns.append(col)
            spec.embedding_dims.append(int(matrix.shape[1]))
            spec.n_components.append(int(parts["components"].shape[0]))
            spec.pca[col] = parts
        if not spec.columns:
            raise DataError(
                "no usable feature columns: the data needs score_* or emb_* columns with finite values "
                f"(columns present: {', '.join(table.columns)})"
            )
        return spec

    def transform(self, table: FeatureTable) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """Features of every row of ``table``.

        Returns:
            ``(scores (n, S) float32, [embeddings (n, k_j) float32 per column], usable (n,) bool)`` where a row
            is usable when its ``error`` is not set and at least one of its features is present; missing
            features are 0 (the pool mean).
        """
        table.require(self.columns)
        n = len(table)
        present = np.zeros(n, dtype=bool)
        scores = np.zeros((n, len(self.score_columns)), dtype=np.float64)
        for j, col in enumerate(self.score_columns):
            values = table.scores(col)
            ok = np.isfinite(values)
            present |= ok
            z = (values - self.score_mean[j]) / self.score_std[j]
            scores[:, j] = np.where(ok, np.clip(z, -self.clip_std, self.clip_std), 0.0)
        embeddings = []
        for j, col in enumerate(self.embedding_columns):
            matrix = table.embeddings(col)
            if n and matrix.shape[1] != self.embedding_dims[j]:
                raise DataError(
                    f"embedding column {col!r} has dimension {matrix.shape[1]}, the selector was trained on "
                    f"{self.embedding_dims[j]}; score the data with the same embedding model"
                )
            ok = np.isfinite(matrix).all(axis=1) if n else np.zeros(0, dtype=bool)
            present |= ok
            pca = self.pca[col]
            if not n:
                embeddings.append(np.zeros((0, pca["components"].shape[0]), dtype=np.float32))
                continue
            projected = (np.where(ok[:, None], matrix, pca["mean"]) - pca["mean"]) @ pca["components"].T
            embeddings.append((projected / pca["scale"]).astype(np.float32))
        return scores.astype(np.float32), embeddings, present & ~table.error_mask()

    def flat(self, table: FeatureTable) -> tuple[np.ndarray, np.ndarray]:
        """``(features (n, S + sum k_j) float64, usable (n,))``: the spec's features side by side."""
        scores, embeddings, usable = self.transform(table)
        return np.concatenate([scores, *embeddings], axis=1).astype(np.float64), usable


def fit_pca(matrix: np.ndarray, n_components: int) -> dict[str, np.ndarray]:
    """Whitened PCA of the rows of ``matrix`` with a deterministic sign; float64 arithmetic.

    Returns:
        ``{"mean": (d,), "components": (k, d), "scale": (k,)}`` float32 arrays with
        ``k = max(1, min(n_components, n - 1, d))``; each component's largest-magnitude loading is positive,
        and ``(x - mean) @ components.T / scale`` has unit variance per component over the rows.
    """
    n, d = matrix.shape
    mean = matrix.mean(axis=0, dtype=np.float64)
    k = max(1, min(int(n_components), n - 1, d))
    if n > 4 * d:
        # covariance route, accumulated in chunks: d x d memory, so a 1M-row pool of 768-d vectors fits.
        cov = np.zeros((d, d))
        for start in range(0, n, 65536):
            chunk = matrix[start : start + 65536].astype(np.float64) - mean
            cov += chunk.T @ chunk
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1][:k]
        components = eigvec[:, order].T
        variance = np.maximum(eigval[order], 0.0) / max(n - 1, 1)
    else:
        _, sing, vt = np.linalg.svd(matrix.astype(np.float64) - mean, full_matrices=False)
        components = vt[:k]
        variance = sing[:k] ** 2 / max(n - 1, 1)
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    # a component with (numerically) zero variance would divide by zero; leave it unscaled instead.
    scale = np.sqrt(variance)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return {
        "mean": mean.astype(np.float32),
        "components": components.astype(np.float32),
        "scale": scale.astype(np.float32),
    }
