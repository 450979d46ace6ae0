"""``pairing``: does a row's answer belong with its image (or its question)? A matching model the pool teaches itself.

An answer pasted onto the wrong image or written for another question stays fluent, so text-only quality signals
miss it, and the model that would see it (CLIP, SigLIP) may not be available or may not know the domain. But
the pool itself shows which images go with which answers: most of its pairs are right. This metric learns that
from the pool, the way contrastive image-text models learn from web pairs (Radford et al. 2021, CLIP: genuine
pairs against re-paired ones), with a small bilinear model on the embeddings the pipeline already has, and scores
every pair with a model that never saw it (K-fold cross-fitting, as in Chernozhukov et al. 2018's double machine
learning and in confident learning's out-of-sample probabilities, Northcutt et al. 2021), so a wrong pair cannot
vouch for itself.

Model, per fold: each side's embedding is reduced to ``dim`` components (PCA fitted on the pool, each side
apart) and L2-normalised; the features of a pair ``(u, v)`` are the outer product ``u v^T`` (a bilinear
compatibility ``u^T W v``, ``dim^2`` weights); a logistic regression separates the training rows' genuine
pairs from ``negatives`` random re-pairings per row (a row's first input with another training row's answer).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np

from metrics.base import DatasetMetric, split_columns

logger = logging.getLogger(__name__)

#: Fewer usable rows than this and nothing can be learned: the column is NaN (with a warning).
MIN_ROWS = 20
_CHUNK = 8192  # pairs per feature block when scoring: (8192, dim^2) float32 stays under 40 MB at dim 32


class Pairing(DatasetMetric):
    """Cross-fitted pair consistency of two embedding columns (image and answer, or question and answer).

    Column:

    - ``score_<name>`` (float32): the probability, under a bilinear logistic model trained on the *other*
      folds of the pool, that the row's two inputs are a genuine pair rather than a random re-pairing,
      ``[0, 1]``; **higher is better**. It is a ranking signal relative to the pool: with ``negatives=2`` a
      typical genuine pair scores 0.5-0.9 and a row whose answer was written for another image or question
      scores lower. NaN where the row has ``error`` set or either embedding is missing (NaN or zero), and for
      every row when the pool has fewer than 20 usable rows.

    What it catches depends on what the embeddings encode: with EfficientNet or DINOv2 image features and
    MiniLM answer embeddings it learns colours, objects and scene types the pool pairs with words, so an
    answer about another image scores low even without an image-text model. It cannot catch a defect most of
    the pool shares (it learns what is typical), and a rare but correct kind of pair can score low: use it
    through ``score_quality`` or a learned selector rather than as a hard filter.

    Args:
        name: instance name: the column ``score_<name>``.
        columns: the two embedding columns, e.g. ``[emb_image, emb_answer]`` or ``[emb_question, emb_answer]``
            (a list or a comma-separated string); their dimensions may differ.
        dim: PCA components per side (the model has ``dim^2`` weights); lowered to what the pool supports.
        n_folds: cross-fitting folds; each row is scored by the model trained on the other folds.
        negatives: random re-pairings per training row.
        C: inverse L2 regularisation strength of the logistic regression (scikit-learn's ``C``).
        max_train_rows: at most this many rows (a seeded sample) train each fold's model; every row is scored.
        random_state: seed of the folds, the re-pairings, the training sample and the PCA.

    Example:
        >>> import numpy as np
        >>> from metrics import get_metric
        >>> rng = np.random.default_rng(0)
        >>> topic = np.repeat(np.arange(4), 25)                      # 4 kinds of image, each with its own answers
        >>> img = np.eye(8)[topic] + rng.normal(0, 0.1, (100, 8))
        >>> ans = np.eye(8)[topic + 4] + rng.normal(0, 0.1, (100, 8))
        >>> ans[:5] = np.eye(8)[(topic[:5] + 1) % 4 + 4]             # five answers about another kind of image
        >>> pair = get_metric("pairing", columns=["emb_image", "emb_answer"], dim=4)
        >>> s = pair.fit_transform({"id": np.arange(100).astype(str).astype(object),
        ...                         "error": np.full(100, None, dtype=object), "emb_image": img, "emb_answer": ans})
        >>> bool(s["score_pairing"][:5].max() < s["score_pairing"][5:].min())
        True
    """

    higher_is_better: ClassVar[bool] = True

    def __init__(
        self,
        name: str = "pairing",
        columns: str | list[str] = "emb_image,emb_answer",
        dim: int = 32,
        n_folds: int = 5,
        negatives: int = 2,
        C: float = 0.1,
        max_train_rows: int = 20000,
        random_state: int = 0,
    ):
        self.name = name
        self.columns = columns
        self.dim = dim
        self.n_folds = n_folds
        self.negatives = negatives
        self.C = C
        self.max_train_rows = max_train_rows
        self.random_state = random_state

    def pair_columns(self) -> list[str]:
        """The two embedding columns, as a list."""
        from selector.errors import ConfigError

        spec = self.columns
        names = [c for c in split_columns(spec) if isinstance(c, str)]
        if len(names) != 2 or names[0] == names[1]:
            raise ConfigError(f"pairing columns must name two different embedding columns, got {spec!r}")
        return names

    def fit_columns(self) -> list[str]:
        return ["id", "error", *self.pair_columns()]

    def output_columns(self) -> list[str]:
        return [self.column()]

    def _validate(self) -> None:
        from selector.errors import ConfigError
        from selector.rows import check_seed

        self.output_columns()
        self.pair_columns()
        for param, low in (("dim", 1), ("n_folds", 2), ("negatives", 1), ("max_train_rows", MIN_ROWS)):
            value = getattr(self, param)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"pairing {param} must be an integer >= {low}, got {value!r}")
        if isinstance(self.C, bool) or not isinstance(self.C, (int, float)) or not np.isfinite(self.C) or self.C <= 0:
            raise ConfigError(f"pairing C must be a positive number, got {self.C!r}")
        check_seed(self.random_state)

    def _sides(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(usable mask (n,), first side (m, d1), second side (m, d2)) as float32."""
        from metrics.base import usable_embeddings

        usable, sides = usable_embeddings(columns, self.pair_columns(), f"pairing metric {self.name!r}")
        return usable, sides[0][usable], sides[1][usable]

    def fit_transform(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Cross-fitted scores: each row by the model of the folds it is not in. Sets ``models_`` (one per
        fold), ``held_out_auroc_`` (genuine held-out pairs against held-out re-pairings; 0.5 = nothing learned)
        and ``n_usable_``."""
        from sklearn.linear_model import LogisticRegression

        from selector.rows import hash_order, rng

        self._validate()
        usable, a, b = self._sides(columns)
        n, m = usable.size, a.shape[0]
        out = np.full(n, np.nan, dtype=np.float32)
        self.n_usable_ = int(m)
        self.models_, self.held_out_auroc_ = [], float("nan")
        if m < MIN_ROWS:
            logger.warning(
                "pairing %r: %d usable rows (at least %d needed to learn a pairing); the column is NaN",
                self.name,
                m,
                MIN_ROWS,
            )
            return {self.column(): out}
        # Hash order of ids: a permuted pool gets the same folds, re-pairings and scores.
        ids = columns.get("id")
        order = hash_order(np.asarray(ids, dtype=object)[usable]) if ids is not None else np.arange(m)
        a, b = a[order], b[order]
        gen = rng(self.random_state)
        self.projections_ = [self._projection(x, gen) for x in (a, b)]
        u, v = (self._project(x, p) for x, p in zip((a, b), self.projections_))
        folds = gen.permutation(m) % min(int(self.n_folds), m // 2)
        k = int(folds.max()) + 1
        scores = np.empty(m, dtype=np.float32)
        genuine, shuffled = [], []
        for fold in range(k):
            train, test = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
            if train.size > self.max_train_rows:
                train = np.sort(gen.choice(train, size=int(self.max_train_rows), replace=False))
            first, second = self._repairings(train, int(self.negatives), gen)
            X = np.concatenate([_outer(u[train], v[train]), _outer(u[first], v[second])])
            y = np.concatenate([np.ones(train.size), np.zeros(first.size)])
            model = LogisticRegression(C=float(self.C), max_iter=1000).fit(X, y)
            self.models_.append(model)
            scores[test] = _probability(model, u[test], v[test])
            if test.size > 1:
                first, second = self._repairings(test, 1, gen)
                genuine.append(scores[test])
                shuffled.append(_probability(model, u[first], v[second]))
        if genuine:
            self.held_out_auroc_ = _auroc(np.concatenate(genuine), np.concatenate(shuffled))
        logger.info(
            "pairing %r: %d rows, %d folds, held-out AUROC genuine vs re-paired %.3f",
            self.name,
            m,
            k,
            self.held_out_auroc_,
        )
        result = np.empty(m, dtype=np.float32)
        result[order] = scores
        out[usable] = result
        return {self.column(): out}

    def fit(self, columns: dict[str, np.ndarray]) -> Pairing:
        """Fit the fold models on the pool (see :meth:`fit_transform`)."""
        self.fit_transform(columns)
        return self

    def transform(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score rows the fit did not see: the mean probability of the fold models (rows of the fitted pool get
        their cross-fitted score from :meth:`fit_transform` instead)."""
        from selector.errors import ConfigError

        if not hasattr(self, "models_"):
            raise ConfigError(f"pairing {self.name!r} is not fitted; call fit_transform on the pool first")
        usable, a, b = self._sides(columns)
        out = np.full(usable.size, np.nan, dtype=np.float32)
        if self.models_ and a.shape[0]:
            u, v = (self._project(x, p) for x, p in zip((a, b), self.projections_))
            out[usable] = np.mean([_probability(model, u, v) for model in self.models_], axis=0)
        return {self.column(): out}

    def report(self, columns: dict[str, np.ndarray]) -> dict[str, float | int]:
        return {
            "held_out_auroc": getattr(self, "held_out_auroc_", float("nan")),
            "rows": getattr(self, "n_usable_", 0),
        }

    def _projection(self, x: np.ndarray, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(mean (d,), components (d, k)) of a PCA of ``x`` (rows L2-normalised first), fitted on at most
        ``max_train_rows`` rows."""
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        sample = x if x.shape[0] <= self.max_train_rows else x[gen.choice(x.shape[0], self.max_train_rows, False)]
        mean = sample.mean(axis=0)
        k = max(1, min(int(self.dim), sample.shape[0] - 1, sample.shape[1]))
        # Full SVD of the (sample, d) block: d is an embedding width (<= a few thousand), so this is cheap
        # and, unlike a randomised solver, exactly reproducible.
        _, _, vt = np.linalg.svd((sample - mean).astype(np.float64), full_matrices=False)
        return mean, vt[:k].T

    @staticmethod
    def _project(x: np.ndarray, projection: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mean, components = projection
        z = (x / np.linalg.norm(x, axis=1, keepdims=True) - mean) @ components
        norms = np.linalg.norm(z, axis=1, keepdims=True)
        return (z / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    @staticmethod
    def _repairings(rows: np.ndarray, per_row: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``per_row`` random partners for each row among ``rows``, never the row itself."""
        first = np.repeat(rows, per_row)
        shift = gen.integers(1, rows.size, size=first.size)  # 1 .. size-1 positions ahead: never the row itself
        position = np.repeat(np.arange(rows.size), per_row)
        return first, rows[(position + shift) % rows.size]


def _outer(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(n, du * dv) flattened outer products: the features of a bilinear model."""
    return np.einsum("ni,nj->nij", u, v).reshape(u.shape[0], -1)


def _probability(model, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    parts = [model.predict_proba(_outer(u[s : s + _CHUNK], v[s : s + _CHUNK]))[:, 1] for s in range(0, len(u), _CHUNK)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, dtype=np.float32)


def _auroc(good: np.ndarray, bad: np.ndarray) -> float:
    """P(good > bad) + 0.5 P(tie)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([good, bad]))
    return float((ranks[: good.size].sum() - good.size * (good.size + 1) / 2) / (good.size * bad.size))
